"""Routing: one delivery from a free finder to the least-loaded writer, every fact in the ledger.

    coordinator ──Delivery──▶ finder ──Found | Rejected | Unread──▶ coordinator
    coordinator ──Found──▶ least-loaded writer ──FileDone──▶ coordinator

A finder that dies holding a delivery is replaced and the delivery sent again (up to
MAX_ATTEMPTS finders). A writer that dies holding events is the supervision's to notice; its
unfiled events come back here (`file`) once its replacement exists. Waiting for a finder
slot and for room in a writer's bounded inbox is how the workers' pace reaches the credits.
"""

from __future__ import annotations

import logging
from typing import Any

import msgspec

from cxi_async.actors.common import is_actor_death
from cxi_async.core.errors import one_line
from cxi_async.core.ledger import LedgerError
from cxi_async.core.messages import Delivery, FileDone, FinderResult, Found, Rejected

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 3  # a batch that kills this many finders is rejected


class Router:
    """The coordinator's routing; it reads the coordinator's units, owns none of them."""

    def __init__(self, coordinator: Any) -> None:
        self.c = coordinator

    async def carry(self, delivery: Delivery) -> None:
        """One delivery from its finder to its writer; never raises (the group would stop)."""
        c = self.c
        delivery_id = delivery.delivery_id
        try:
            result = await self._find(delivery)
            del delivery  # the item's ref: the logits may leave the object store
            c.publisher.say_once(getattr(result, "notices", []))
            if isinstance(result, Found):
                c.publisher.metrics.observe_find(result.find_seconds)
                if c.autoscaler is not None:
                    c.autoscaler.note_batch(result.num_events)
                kept = [e.event_index for e in result.kept]
                args = (result.num_events, result.filtered, result.truncated_peaks)
                if not c.ledger.found(delivery_id, result, kept, *args):
                    await self.file(delivery_id)
            elif isinstance(result, Rejected):
                c.ledger.rejected(delivery_id, result.num_events, result.reason, result.batch_id)
            else:
                c.ledger.unread(delivery_id)
        except LedgerError:
            if not c.stopping:  # after stop() the delivery was abandoned: nothing to say
                log.exception("delivery %d: the books contradict a fact", delivery_id)
        except Exception as exc:
            log.exception("delivery %d: unexpected error", delivery_id)
            reason = "coordinator error: " + one_line(exc, named=True)
            c.ledger.rejected(delivery_id, 0, reason, "")
        c.credit_maybe_freed()

    async def _find(self, delivery: Delivery) -> FinderResult:
        """Send the delivery to free finders until one answers; a dead finder is replaced."""
        c = self.c
        delivery_id = delivery.delivery_id
        while True:
            attempts = c.ledger.dispatched(delivery_id)
            index = await c.slots.acquire()
            finder = c.crew.finders[index]
            try:
                return await finder.find.remote(delivery)
            except Exception as exc:
                if not is_actor_death(exc):
                    reason = "finder error: " + one_line(exc, "last", named=True)
                    return Rejected(delivery_id, f"delivery {delivery_id}", 0, reason)
                c.supervisor.finder_died(index, finder)
                if attempts >= MAX_ATTEMPTS:
                    reason = f"the batch was being processed when {attempts} finders died"
                    return Rejected(delivery_id, f"delivery {delivery_id}", 0, reason)
                log.warning(
                    "finder %d died holding delivery %d; sending it again", index, delivery_id
                )
            finally:
                c.slots.release(index)

    async def file(self, delivery_id: int) -> None:
        """Submit the delivery's unfiled events to the least-loaded writer. If that writer
        dies, the supervision hands them to its replacement (the ledger says what)."""
        c = self.c
        entry = c.ledger.entries.get(delivery_id)
        if entry is None or entry.found is None:
            return
        found: Found = entry.found
        if len(entry.unfiled) < len(found.kept):  # part of it is in a renamed file already
            kept = [e for e in found.kept if e.event_index in entry.unfiled]
            found = msgspec.structs.replace(found, kept=kept, filtered=0)
        loads = c.ledger.writer_loads(len(c.crew.writers))
        index = loads.index(min(loads))
        c.ledger.submitted(delivery_id, index)
        try:
            refusal = await c.crew.writers[index].submit.remote(found)
        except Exception as exc:
            if is_actor_death(exc):
                return
            refusal = "writer error: " + one_line(exc, "last", named=True)
            log.error("delivery %d: %s", delivery_id, refusal)
        if refusal is not None:
            c.ledger.refused(delivery_id, refusal)
            c.credit_maybe_freed()

    async def list_file(self, done: FileDone) -> None:
        """A renamed file's events are written (reported, or found on disk): list it."""
        c = self.c
        listing = c.supervisor.listing
        listing.add(done.path)  # not listed yet in the catalog: a disk search skips it
        try:
            c.ledger.filed(done.events)
            c.credit_maybe_freed()
            await c.publisher.file_done(done)
        finally:
            listing.discard(done.path)
