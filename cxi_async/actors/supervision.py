"""Supervision: once a second, ask every actor for its stats, publish them, and replace the
actors that are gone.

The stats calls are the liveness check: an actor whose call died is gone. A dead writer's
unfiled events, per the ledger, are re-submitted once its replacement exists; a dead finder's
delivery is sent again by the routing that was waiting on it (`Coordinator._find`).
"""

from __future__ import annotations

import logging
from typing import Any

import anyio

from cxi_async.actors.publishing import actor_stats, compose_stats

log = logging.getLogger(__name__)

HEALTH_INTERVAL_S = 1.0


class Supervisor:
    """The coordinator's health tick; it reads the coordinator's units, owns none of them."""

    def __init__(self, coordinator: Any) -> None:
        self.c = coordinator

    async def run(self) -> None:
        while True:
            await anyio.sleep(HEALTH_INTERVAL_S)
            try:
                await self.check()
            except Exception:  # e.g. no node can hold a replacement now: try again later
                log.exception("health check failed; retrying in %.0f s", HEALTH_INTERVAL_S)

    async def check(self) -> None:
        c = self.c
        depth = await c.publisher.watch_q2_full(c.intake.shards)
        if depth is not None:
            c.intake.depth = depth
        finders = self.answering_finders()
        writers = list(enumerate(c.crew.writers))
        finder_stats, writer_stats = await self.actor_stats(finders, writers)
        await c.publisher.publish(compose_stats(c, finder_stats, writer_stats))
        if c.autoscaler is not None and not c.stopping:
            await c.autoscaler.tick(depth, finder_stats, c.group)
            c.credit_maybe_freed()
        for (index, handle), reply in zip(writers, writer_stats, strict=True):
            if reply.get("gone") and c.crew.writers[index] is handle:
                lost = c.ledger.writer_lost(index)  # before the new one can be given any
                c.crew.replace_writer(index)
                for delivery_id in lost:
                    c.group.start_soon(c.file, delivery_id)
        for (index, handle), reply in zip(finders, finder_stats, strict=True):
            if reply.get("gone") and not (c.stopping and not c.ledger.in_flight):
                self.finder_died(index, handle)

    def finder_died(self, index: int, handle: Any) -> None:
        """Replace a dead finder, unless the pool was letting it go anyway."""
        crew, slots = self.c.crew, self.c.slots
        if slots.is_retiring(index):
            crew.remove_finder(index)
            slots.gone(index)
        else:
            crew.replace_finder(index, handle)

    async def stats(self) -> dict:
        """The coordinator's stats with every answering actor's own."""
        writers = list(enumerate(self.c.crew.writers if self.c.crew else []))
        finder_stats, writer_stats = await self.actor_stats(self.answering_finders(), writers)
        return compose_stats(self.c, finder_stats, writer_stats)

    @staticmethod
    async def actor_stats(
        finders: list[tuple[int, Any]], writers: list[tuple[int, Any]]
    ) -> tuple[list[dict], list[dict]]:
        replies = await actor_stats([h for _, h in finders] + [h for _, h in writers])
        return replies[: len(finders)], replies[len(finders) :]

    def answering_finders(self) -> list[tuple[int, Any]]:
        """(index, handle) of the finders past their start (a starting one would hold the
        stats up for seconds)."""
        crew, slots = self.c.crew, self.c.slots
        if crew is None or slots is None:
            return []
        return [
            (i, f)
            for i, f in enumerate(crew.finders)
            if f is not None and (i >= len(slots.state) or slots.state[i] != "starting")
        ]
