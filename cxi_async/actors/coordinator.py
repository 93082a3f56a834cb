"""Coordinator actor: owns all routing and all recovery, and nothing else.

    Q2 ──ref──▶ coordinator ──Delivery──▶ finder ──Found | Rejected | Unread──▶ coordinator
                coordinator ──Found──▶ least-loaded writer ──FileDone──▶ coordinator

It takes from Q2 while it holds credits (`Intake`), sends each item's ref to a free finder
(`FinderSlots`), submits each `Found` to the writer holding the fewest unfiled events (the
writer's bounded inbox is the backpressure), and records every fact in its `Ledger`, the
only record of what is where. A dead finder's delivery is sent again; a dead writer's
unfiled events, per the ledger, go to its replacement (`Crew`). Files are listed and stats
published by the `Publisher`. Everything runs in one anyio task group for the actor's life.

A detached named actor: it outlives the driver that started it, stops by its own rules
(idle timeout, max batches, replay drained) and writes its report without one.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from typing import Any

import anyio
import msgspec
import ray

from cxi_async.actors.autoscaler import Autoscaler
from cxi_async.actors.common import Wakeup, is_actor_death, setup_actor_logging
from cxi_async.actors.crew import Crew
from cxi_async.actors.finder_slots import FinderSlots
from cxi_async.actors.intake import Intake
from cxi_async.actors.publishing import Publisher, written_files
from cxi_async.actors.supervision import Supervisor
from cxi_async.config import Config
from cxi_async.core.autoscale import PoolPolicy, credits_shortfall
from cxi_async.core.errors import one_line
from cxi_async.core.finding import load_slab_layout
from cxi_async.core.idle import IdleWatch
from cxi_async.core.ledger import Ledger, LedgerError
from cxi_async.core.messages import Delivery, FileDone, FinderResult, Found, Rejected

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 3  # a batch that kills this many finders is rejected
LINGER_S = 30.0  # a stopped coordinator exits this long after its stop


class Coordinator:
    """Named actor `cxi_async_coordinator:<queue>` in the pipeline's namespace."""

    def __init__(self, config: Config, output_dir: str, run_label: str) -> None:
        setup_actor_logging(config)
        self.config = config
        self.output_dir = output_dir
        self.run_label = run_label
        self.started_at = time.time()
        self.started_mono = time.monotonic()
        self.run_id = uuid.uuid4().hex  # in every file: its delivery ids are this run's
        self.ledger = Ledger(config.processing.credits, on_done=self._on_done)
        self.idle = IdleWatch(
            config.stop.idle_timeout_s,
            config.output.idle_flush_s,
            config.stop.wait_for_first_batch_s,
            self.started_mono,
            config.queue.name,
        )
        self.publisher = Publisher(config, output_dir, run_label, self.started_mono)
        self.supervisor = Supervisor(self)
        self.intake: Intake | None = None
        self.crew: Crew | None = None
        self.slots: FinderSlots | None = None
        self.autoscaler: Autoscaler | None = None  # with processing.min/max_finders
        self.life: asyncio.Task | None = None  # the one root task: its group holds the rest
        self.group: Any = None  # the task group of the actor's life (made in start)
        self.intake_scope: anyio.CancelScope | None = None
        self.credit_freed = Wakeup()
        self.finished: anyio.Event | None = None
        self.stopping = False
        self.shutting_down = False
        self.stop_reason: str | None = None
        self.final: dict | None = None
        self.producer: Any = None  # the replay producer, owned here: it outlives the driver
        self.replay_report: Any = None

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> dict:
        """Connect to Q2, start the writers and finders, and start draining."""
        cfg = self.config
        self.finished = anyio.Event()
        layout = load_slab_layout(cfg)
        await self.publisher.adopt_unlisted_files()
        self.intake = await Intake.connect(cfg)
        me = ray.get_runtime_context().current_actor
        self.crew = Crew(cfg, me, layout, self.output_dir, self.run_label, self.run_id)
        await self.crew.start()
        self.slots = FinderSlots(len(self.crew.finders), cfg.processing.finder_inbox + 1)
        policy = PoolPolicy.from_config(cfg)
        if policy is None and (shortfall := credits_shortfall(cfg)) is not None:
            log.warning("%s", shortfall)
        elif policy is not None:
            self.autoscaler = Autoscaler(cfg, policy, self.crew, self.slots, self.ledger)
            self.autoscaler.follow_credits()
        ready = anyio.Event()
        self.life = asyncio.get_running_loop().create_task(self._live(ready))  # held: not GC'd
        await ready.wait()
        crew = self.crew
        log.info(
            "draining %s (%d shards, namespace %s) with %d finders, %d writers, %d credits into %s",
            *(cfg.queue.name, len(self.intake.shards), cfg.ray.namespace, len(crew.finders)),
            *(len(crew.writers), cfg.processing.credits, self.output_dir),
        )
        return {"num_shards": len(self.intake.shards), "output_dir": self.output_dir}

    async def _live(self, ready: anyio.Event) -> None:
        """The actor's life: intake, health and every delivery in one task group; after the
        stop, linger so followers can read the final stats, then free the name."""
        async with anyio.create_task_group() as group:
            self.group = group
            group.start_soon(self.intake.take_while_credits, self)
            group.start_soon(self.supervisor.run)
            ready.set()
            assert self.finished is not None
            await self.finished.wait()
            group.cancel_scope.cancel()
        await anyio.sleep(LINGER_S)
        log.info("exiting %.0f s after the stop", LINGER_S)
        ray.kill(ray.get_runtime_context().current_actor, no_restart=True)

    async def start_replay(self, num_shards: int) -> None:
        """Start the replay producer here, not in the driver: it and the watch that stops the
        run once Q2 is drained then live as long as this (detached) coordinator."""
        from cxi_async.replay.producer import new_replay_producer

        self.producer = new_replay_producer(self.config, num_shards)
        self.group.start_soon(self._stop_after_replay, self.producer.run.remote())

    async def _stop_after_replay(self, run: Any) -> None:
        try:
            self.replay_report = await run
        except Exception as exc:
            log.error("the replay producer failed: %s", one_line(exc, "last", named=True))
        await self.stop_when_empty("replay finished and Q2 drained")

    async def stop_when_empty(self, reason: str) -> None:
        """Drain and stop as soon as Q2 is empty and nothing is in flight (replay finished)."""
        self.idle.stop_when_empty(reason, time.monotonic())

    async def drain_and_stop(self, reason: str = "asked to drain") -> dict:
        """Stop taking from Q2, finish everything in flight, flush files, stop the actors."""
        if self._begin_stop(reason):
            await self._drain()
        return await self.wait_finished()

    async def stop(self, reason: str = "asked to stop") -> dict:
        """Stop at once: what is in flight is not written (counted as abandoned)."""
        self._begin_stop(reason)
        if not self.shutting_down:
            if self.ledger.in_flight:
                log.warning(
                    "stopping with %d batches in flight: they are not written",
                    self.ledger.in_flight,
                )
            self.ledger.abandon()
            await self._shutdown()
        return await self.wait_finished()

    async def _drain(self) -> None:
        log.info(
            "draining: %s; finishing %d batches in flight", self.stop_reason, self.ledger.in_flight
        )
        while self.ledger.in_flight and not self.shutting_down:
            if self.ledger.all_at_writers:  # flushing earlier would cut files short
                writers = self.crew.writers if self.crew else []
                await asyncio.gather(*(w.flush.remote() for w in writers), return_exceptions=True)
            await anyio.sleep(0.05)
        await self._shutdown()

    def _begin_stop(self, reason: str) -> bool:
        """Stop taking from Q2; True for the first call (the one that does the stopping)."""
        if self.intake_scope is not None:
            self.intake_scope.cancel()
        if self.stopping:
            return False
        self.stopping, self.stop_reason = True, reason
        return True

    async def _shutdown(self) -> None:
        if self.shutting_down:
            return
        self.shutting_down = True
        stats = await self.stats()
        stats["files_written"] = await written_files(self.crew.writers if self.crew else [])
        report = await self.publisher.report(stats)
        if report is not None:
            stats["report"] = report
        self.final = stats
        if self.crew is not None:
            self.crew.kill()
        if self.producer is not None:
            ray.kill(self.producer)
        log.info("stopped (%s)", self.stop_reason)
        assert self.finished is not None
        self.finished.set()

    async def wait_finished(self) -> dict:
        """The final stats once the pipeline has stopped by itself or was stopped."""
        assert self.finished is not None
        await self.finished.wait()
        assert self.final is not None
        return self.final

    async def finished_stats(self) -> dict | None:
        """The final stats once stopped, else None (a second driver attaches or replaces)."""
        return self.final

    async def replay_result(self) -> Any:
        """What the replay producer's run() returned (None before it finished)."""
        return self.replay_report

    def stop_later(self, reason: str) -> None:
        """A stop rule fired inside the actor: stop taking now, drain in the group."""
        if self._begin_stop(reason):
            self.group.start_soon(self._drain)

    # ------------------------------------------------------------------ routing

    async def carry(self, delivery: Delivery) -> None:
        """One delivery from its finder to its writer; never raises (the group would stop)."""
        delivery_id = delivery.delivery_id
        try:
            result = await self._find(delivery)
            del delivery  # the item's ref: the logits may leave the object store
            self.publisher.say_once(getattr(result, "notices", []))
            if isinstance(result, Found):
                self.publisher.metrics.observe_find(result.find_seconds)
                if self.autoscaler is not None:
                    self.autoscaler.note_batch(result.num_events)
                kept = [e.event_index for e in result.kept]
                args = (result.num_events, result.filtered, result.truncated_peaks)
                if not self.ledger.found(delivery_id, result, kept, *args):
                    await self.file(delivery_id)
            elif isinstance(result, Rejected):
                self.ledger.rejected(delivery_id, result.num_events, result.reason, result.batch_id)
            else:
                self.ledger.unread(delivery_id)
        except LedgerError:
            if not self.stopping:  # after stop() the delivery was abandoned: nothing to say
                log.exception("delivery %d: the books contradict a fact", delivery_id)
        except Exception as exc:
            log.exception("delivery %d: unexpected error", delivery_id)
            reason = "coordinator error: " + one_line(exc, named=True)
            self.ledger.rejected(delivery_id, 0, reason, "")
        self.credit_maybe_freed()

    async def _find(self, delivery: Delivery) -> FinderResult:
        """Send the delivery to free finders until one answers; a dead finder is replaced."""
        assert self.slots is not None and self.crew is not None
        delivery_id = delivery.delivery_id
        while True:
            attempts = self.ledger.dispatched(delivery_id)
            index = await self.slots.acquire()
            finder = self.crew.finders[index]
            try:
                return await finder.find.remote(delivery)
            except Exception as exc:
                if not is_actor_death(exc):
                    reason = "finder error: " + one_line(exc, "last", named=True)
                    return Rejected(delivery_id, f"delivery {delivery_id}", 0, reason)
                self.supervisor.finder_died(index, finder)
                if attempts >= MAX_ATTEMPTS:
                    reason = f"the batch was being processed when {attempts} finders died"
                    return Rejected(delivery_id, f"delivery {delivery_id}", 0, reason)
                log.warning(
                    "finder %d died holding delivery %d; sending it again", index, delivery_id
                )
            finally:
                self.slots.release(index)

    async def file(self, delivery_id: int) -> None:
        """Submit the delivery's unfiled events to the least-loaded writer. If that writer
        dies, the health check hands them to its replacement (the ledger says what)."""
        assert self.crew is not None
        entry = self.ledger.entries.get(delivery_id)
        if entry is None or entry.found is None:
            return
        found: Found = entry.found
        if len(entry.unfiled) < len(found.kept):  # part of it is in a renamed file already
            kept = [e for e in found.kept if e.event_index in entry.unfiled]
            found = msgspec.structs.replace(found, kept=kept, filtered=0)
        loads = self.ledger.writer_loads(len(self.crew.writers))
        index = loads.index(min(loads))
        self.ledger.submitted(delivery_id, index)
        try:
            refusal = await self.crew.writers[index].submit.remote(found)
        except Exception as exc:
            if is_actor_death(exc):
                return
            refusal = "writer error: " + one_line(exc, "last", named=True)
            log.error("delivery %d: %s", delivery_id, refusal)
        if refusal is not None:
            self.ledger.refused(delivery_id, refusal)
            self.credit_maybe_freed()

    async def file_done(self, done: FileDone) -> None:
        """A writer renamed a file: its events are written; list the file."""
        if self.supervisor.first_report(done.path):  # else found on disk, and listed then
            await self.list_file(done)

    async def list_file(self, done: FileDone) -> None:
        """A renamed file's events are written (reported, or found on disk): list it."""
        listing = self.supervisor.listing
        listing.add(done.path)  # not listed yet in the catalog: a disk search skips it
        try:
            self.ledger.filed(done.events)
            self.credit_maybe_freed()
            await self.publisher.file_done(done)
        finally:
            listing.discard(done.path)

    def _on_done(self, latency: float, rejected: bool) -> None:
        self.publisher.metrics.observe_latency(latency)
        self.publisher.recent.add(rejected)

    def credit_maybe_freed(self) -> None:
        """Wake the intake if a credit is free."""
        if self.ledger.free_credits > 0:
            self.credit_freed.notify()

    # ------------------------------------------------------------------ introspection

    async def actors(self) -> dict:
        """Handles of the current finders, writers and shards (status, fault drills)."""
        crew, intake = self.crew, self.intake
        return {
            "finders": crew.live_finders if crew else [],
            "writers": list(crew.writers) if crew else [],
            "shards": list(intake.shards) if intake else [],
        }

    async def pid(self) -> int:
        return os.getpid()

    async def stats(self) -> dict:
        """Counts, queue depths and rates; the ledger's identities hold at every read."""
        return await self.supervisor.stats()
