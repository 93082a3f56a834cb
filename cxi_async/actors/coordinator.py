"""Coordinator actor: the shell that owns the pipeline's state and its lifecycle.

    Q2 ──ref──▶ coordinator ──Delivery──▶ finder ──Found | Rejected | Unread──▶ coordinator
                coordinator ──Found──▶ least-loaded writer ──FileDone──▶ coordinator

Its units, one concern each: `Intake` takes from Q2 while credits are free; `Router` sends
each item's ref to a free finder (`FinderSlots`) and each `Found` to the writer with the
fewest unfiled events; `Supervisor` asks every actor for its stats once a second and replaces
the dead (`Crew`); `Publisher` lists files and publishes stats. Every fact goes into the
`Ledger`, the only record of what is where. All of it runs in one anyio task group for the
actor's life.

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
import ray

from cxi_async.actors.autoscaler import Autoscaler
from cxi_async.actors.common import Wakeup, setup_actor_logging
from cxi_async.actors.crew import Crew
from cxi_async.actors.finder_slots import FinderSlots
from cxi_async.actors.intake import Intake
from cxi_async.actors.publishing import Publisher, written_files
from cxi_async.actors.routing import Router
from cxi_async.actors.supervision import Supervisor
from cxi_async.config import Config
from cxi_async.core.autoscale import PoolPolicy, credits_shortfall
from cxi_async.core.errors import one_line
from cxi_async.core.finding import load_slab_layout
from cxi_async.core.idle import IdleWatch
from cxi_async.core.ledger import Ledger
from cxi_async.core.messages import FileDone

log = logging.getLogger(__name__)

LINGER_S = 30.0  # a stopped coordinator nobody released exits this long after its stop
REPLY_GRACE_S = 0.2  # after the last wait for the final stats returned: its reply leaves


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
        self.router = Router(self)
        self.intake: Intake | None = None
        self.crew: Crew | None = None
        self.slots: FinderSlots | None = None
        self.autoscaler: Autoscaler | None = None  # with processing.min/max_finders
        self.life: asyncio.Task | None = None  # the one root task: its group holds the rest
        self.group: Any = None  # the task group of the actor's life (made in start)
        self.intake_scope: anyio.CancelScope | None = None
        self.credit_freed = Wakeup()
        self.finished: anyio.Event | None = None
        self.released = anyio.Event()  # a caller has the final stats and wants the name free
        self.waiting = 0  # calls waiting for the final stats now (drivers, `stop`, followers)
        self.stopping = False
        self.shutting_down = False
        self.stop_reason: str | None = None
        self.final: dict | None = None
        self.stopped_mono = 0.0
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
        """The actor's life: intake, health and every delivery in one task group. After the
        stop it lingers so followers can read the final stats, and frees the name once it is
        released and no call still waits for them (or after LINGER_S)."""
        async with anyio.create_task_group() as group:
            self.group = group
            group.start_soon(self.intake.take_while_credits, self)
            group.start_soon(self.supervisor.run)
            ready.set()
            assert self.finished is not None
            await self.finished.wait()
            group.cancel_scope.cancel()
        with anyio.move_on_after(LINGER_S):
            await self.released.wait()
            while self.waiting:
                await anyio.sleep(0.05)
        await anyio.sleep(REPLY_GRACE_S)
        log.info("exiting %.0f s after the stop", time.monotonic() - self.stopped_mono)
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
        self.stopped_mono = time.monotonic()
        self.finished.set()

    async def wait_finished(self) -> dict:
        """The final stats once the pipeline has stopped by itself or was stopped."""
        assert self.finished is not None
        self.waiting += 1
        try:
            await self.finished.wait()
        finally:
            self.waiting -= 1
        assert self.final is not None
        return self.final

    async def release(self) -> None:
        """The caller has the final stats: exit (freeing the name) as soon as no other call
        still waits for them. Killing it from outside could cut another caller's reply."""
        self.released.set()

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

    async def file_done(self, done: FileDone) -> None:
        """A writer renamed a file: its events are written; list the file."""
        if self.supervisor.first_report(done.path):  # else found on disk, and listed then
            await self.router.list_file(done)

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
