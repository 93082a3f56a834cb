"""Drainer actor: takes batches from Q2 while it holds credits, and keeps the books.

It is the pipeline's coordinator, a detached actor: it outlives the driver that started it,
stops by its own rules (idle timeout, max batches, replay drained) and writes its report
without one. It creates the finders and writers (and the replay producer), forwards each batch's
ObjectRef (never the batch) to a finder, remembers every batch until a writer acks it,
re-dispatches what a dead actor held, and answers stats. Credits are the only throttle: a
batch holds one from the moment it leaves Q2 until all its kept events are in a renamed file.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import ray
from ray.util.placement_group import placement_group, remove_placement_group

from cxi_async.actors.common import is_actor_death, setup_actor_logging, start_failure
from cxi_async.actors.metrics import PipelineMetrics
from cxi_async.actors.placement import actor_options, alive_nodes, check_placement, finder_bundles
from cxi_async.actors.q2_shard import (
    check_topology,
    connect_shards,
    find_shard_indices,
    wrong_namespace_hint,
)
from cxi_async.config import Config, config_to_dict
from cxi_async.core import alarms, cxi
from cxi_async.core.catalog import Catalog, CatalogError
from cxi_async.core.finding import load_slab_layout
from cxi_async.core.messages import EMPTY, SHARD_GONE, Ack, BatchResult, Delivery, writer_index

log = logging.getLogger(__name__)

HEALTH_INTERVAL_S = 1.0
MAX_ATTEMPTS = 3  # a batch that kills this many finders is rejected
START_ATTEMPTS = 3  # an actor slot whose actor dies this many times while starting fails the start
SIZE_TIMEOUT_S = 5.0
Q2_FULL_TIMEOUT_S = 2.0  # a shard busy with a large put answers later: not known full
LINGER_S = 30.0  # a stopped coordinator exits this long after its stop
SHARD_SETTLE_S = 1.0  # with num_shards = "auto": how long the shard count must stay the same


@dataclass
class InFlight:
    """What the drainer remembers of one batch until it is acked."""

    delivery: Delivery | None  # holds the item ref until a finder is done with it
    shard: int
    taken_at: float
    finder: int | None = None
    result: BatchResult | None = None  # kept so a dead writer's work can be re-sent
    attempts: int = 0
    written: set[int] = field(default_factory=set)  # event indices already in renamed files


@dataclass
class Books:
    """Counters that make `taken = done + in flight` checkable at any moment."""

    batches_taken: int = 0
    batches_done: int = 0  # acked (written and/or filtered) or rejected
    batches_rejected: int = 0
    batches_abandoned: int = 0  # in flight when stop() was asked not to finish them
    events_seen_done: int = 0  # events of finished batches (in-flight ones are added in stats)
    events_written: int = 0
    events_filtered: int = 0
    events_rejected: int = 0
    events_duplicate: int = 0
    peaks_truncated: int = 0
    rejections: collections.Counter = field(default_factory=collections.Counter)
    last_rejections: collections.deque = field(default_factory=lambda: collections.deque(maxlen=20))
    latencies: collections.deque = field(default_factory=lambda: collections.deque(maxlen=20000))


class Drainer:
    """Named actor `cxi_async_drainer` in the pipeline's namespace."""

    def __init__(self, config: Config, output_dir: str, run_label: str) -> None:
        setup_actor_logging(config)
        self.config = config
        self.output_dir = output_dir
        self.run_label = run_label
        self.books = Books()
        self.inflight: dict[int, InFlight] = {}
        self.next_id = 0
        self.credits = asyncio.Semaphore(config.processing.credits)
        self.shards: list[Any] = []
        self.finders: list[Any] = []
        self.finder_group: Any = None  # placement group of the finders, if configured
        self.writers: list[Any] = []
        self.finder_slots: asyncio.Queue[int] = asyncio.Queue()
        self.tasks: set[asyncio.Task] = set()
        self.drain_task: asyncio.Task | None = None
        self.health_task: asyncio.Task | None = None
        self.stopping = False
        self.finished = asyncio.Event()
        self.final: dict | None = None
        self.started_at = time.time()
        self.started_mono = time.monotonic()
        self.idle_since: float | None = None
        self.stop_reason: str | None = None
        self.stop_when_empty_reason: str | None = None
        self.stop_when_empty_since = 0.0
        self.layout = None
        self.catalog: Catalog | None = None
        self.metrics: PipelineMetrics | None = None
        self.replacements = collections.Counter()
        self.dead_shards: dict[int, float] = {}
        self.q2_depth = 0
        self.last_progress = time.monotonic()
        self.said: set[str] = set()  # kinds of notice already logged this run
        self.paused_since: float | None = None  # Q2 empty, every batch parked in a writer
        self.pause_flushed = False
        self.q2_full = alarms.FullClock()  # loud when data is lost (see the section below)
        self.no_data = alarms.NoDataClock(config.queue.warn_no_data_s, self.started_mono)
        self.recent = alarms.RejectionWindow()
        self.no_data_warning: str | None = None
        self.producer: Any = None  # the replay producer, owned here: it outlives the driver
        self.replay_report: Any = None

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> dict:
        """Connect to Q2, create writers and finders, and start draining."""
        from cxi_async.actors.finder import Finder  # noqa: F401  (import check before spawning)

        cfg = self.config
        self.layout = load_slab_layout(cfg)
        self.catalog = Catalog(
            self.output_dir,
            cfg.output.file_prefix,
            self.run_label,
            fsync=cfg.output.fsync,
            min_interval_s=2.0,
        )
        await asyncio.to_thread(self._adopt_unlisted_files)
        self.metrics = PipelineMetrics(cfg.queue.name)
        num_shards = await asyncio.to_thread(self._resolve_num_shards)
        check_topology(cfg.queue.name, cfg.ray.namespace, num_shards)
        # Shards cxi_async creates serialise tensors zero-copy, except in a replay drill
        # that asks for the slow path (replay.zero_copy = false).
        self.shards = await asyncio.to_thread(
            connect_shards,
            cfg.queue.name,
            cfg.ray.namespace,
            num_shards,
            cfg.queue.maxsize_per_shard,
            cfg.replay.zero_copy or not cfg.replay.enabled,
        )
        _check_cpus(cfg)
        self.finder_group = await _reserve_finder_group(cfg)
        self.writers = [self._new_writer(i) for i in range(cfg.output.num_writers)]
        self.finders = [self._new_finder(i) for i in range(cfg.processing.num_finders)]
        await self._started()
        for i in range(len(self.finders)):
            for _ in range(cfg.processing.finder_inbox + 1):
                self.finder_slots.put_nowait(i)
        self.drain_task = asyncio.get_running_loop().create_task(self._drain_loop())
        self.health_task = asyncio.get_running_loop().create_task(self._health_loop())
        log.info(
            "draining %s (%d shards, namespace %s) with %d finders, %d writers, %d credits into %s",
            cfg.queue.name,
            num_shards,
            cfg.ray.namespace,
            len(self.finders),
            len(self.writers),
            cfg.processing.credits,
            self.output_dir,
        )
        return {"num_shards": num_shards, "output_dir": self.output_dir}

    async def _started(self) -> None:
        """Wait until every new finder and writer answers; one that dies while starting (in
        ``__init__``) is replaced, up to START_ATTEMPTS times, like one that dies later."""
        tries: collections.Counter[tuple[str, int]] = collections.Counter()
        while True:
            slots = [("writer", i, a) for i, a in enumerate(self.writers)]
            slots += [("finder", i, a) for i, a in enumerate(self.finders)]
            replies = await _placed([a for _, _, a in slots])
            dead = [(r, i, e) for (r, i, _), e in zip(slots, replies, strict=True) if e is not None]
            if not dead:
                break
            for role, index, exc in dead:
                if not is_actor_death(exc):
                    raise exc
                tries[role, index] += 1
                if tries[role, index] >= START_ATTEMPTS:
                    raise RuntimeError(start_failure(role, index, tries[role, index], str(exc)))
                log.warning(
                    "%s; starting another", start_failure(role, index, 1, str(exc)).rstrip(".")
                )
                self.replacements[role] += 1
                if role == "writer":
                    self.writers[index] = self._new_writer(index)
                else:
                    self.finders[index] = self._new_finder(index)
        if any(role == "writer" for role, _ in tries):  # finders were made with the old ones
            await asyncio.gather(*(f.set_writers.remote(self.writers) for f in self.finders))

    async def start_replay(self, num_shards: int) -> None:
        """Start the replay producer here, not in the driver: it and the watch that stops the
        run once Q2 is drained then live as long as this (detached) coordinator."""
        from cxi_async.replay.producer import new_replay_producer

        self.producer = new_replay_producer(self.config, num_shards)
        self._spawn(self._stop_after_replay(self.producer.run.remote()), track=False)

    async def _stop_after_replay(self, run: Any) -> None:
        try:
            self.replay_report = await run
        except Exception as exc:
            log.error("the replay producer failed: %s", _last_line(exc))
        await self.stop_when_empty("replay finished and Q2 drained")

    async def replay_result(self) -> Any:
        """What the replay producer's run() returned (None before it finished)."""
        return self.replay_report

    async def finished_stats(self) -> dict | None:
        """The final stats once stopped, else None (a second driver attaches or replaces)."""
        return self.final

    async def _exit_later(self) -> None:
        """A detached coordinator that stopped frees its name once followers had time to read
        the final stats (the driver that started it kills it at once if it is still there)."""
        await asyncio.sleep(LINGER_S)
        log.info("exiting %.0f s after the stop", LINGER_S)
        ray.kill(ray.get_runtime_context().current_actor, no_restart=True)

    def _adopt_unlisted_files(self) -> None:
        """List finished files an aborted run renamed but never listed (files.lst, events.lst)."""
        prefix = self.config.output.file_prefix
        patterns = [f"{prefix}_*.cxi"]
        if self.config.output.run_from_metadata is not None:
            patterns.append(f"*/{prefix}_*.cxi")  # <output_dir>/<run>/ of metadata runs
        found = {p for pattern in patterns for p in Path(self.output_dir).glob(pattern)}
        for path in sorted(found):
            if self.catalog.is_listed(path.resolve()):
                continue
            try:
                self.catalog.add_file(path, cxi.count_events(path))
                log.warning("listed %s, which an earlier run wrote but did not list", path)
            except (OSError, KeyError, CatalogError) as exc:
                log.warning("found %s but could not list it: %s", path, exc)

    def _resolve_num_shards(self) -> int:
        q = self.config.queue
        if q.num_shards != "auto":
            return int(q.num_shards)
        deadline = time.monotonic() + q.wait_for_producer_s
        while True:
            found = find_shard_indices(q.name, self.config.ray.namespace)
            if found:
                # The producer creates its shards one by one: take the count once it is stable.
                time.sleep(SHARD_SETTLE_S)
                again = find_shard_indices(q.name, self.config.ray.namespace)
                if again == found:
                    return len(found)
                continue
            if time.monotonic() >= deadline:
                hint = wrong_namespace_hint(q.name, self.config.ray.namespace)
                if hint:
                    raise RuntimeError(hint)
                waited = (
                    f" after waiting {q.wait_for_producer_s:g} s" if q.wait_for_producer_s else ""
                )
                raise RuntimeError(
                    f"queue.num_shards = \"auto\" but no shard of Q2 '{q.name}' exists in "
                    f"namespace '{self.config.ray.namespace}'{waited}: start the producer first, "
                    "set queue.wait_for_producer_s, or give queue.num_shards."
                )
            time.sleep(0.5)

    def _new_finder(self, index: int) -> Any:
        from cxi_async.actors.finder import Finder

        return (
            ray.remote(Finder)
            .options(
                **actor_options(
                    self.config, "finder", placement_group=self.finder_group, bundle_index=index
                ),
                max_restarts=0,
            )
            .remote(self.config, index, self.writers)
        )

    def _new_writer(self, index: int) -> Any:
        from cxi_async.actors.writer import Writer

        me = ray.get_runtime_context().current_actor
        options = actor_options(self.config, "writer", alive_nodes(ray.nodes()))
        return (
            ray.remote(Writer)
            .options(**options, max_restarts=0)
            .remote(self.config, index, me, self.layout, self.output_dir, self.run_label)
        )

    async def drain_and_stop(self, reason: str = "asked to drain") -> dict:
        """Stop taking from Q2, finish everything in flight, flush files, stop the actors."""
        if self.final is not None:
            return self.final
        if not self.stopping:
            self.stopping = True
            self.stop_reason = reason
            log.info("draining: %s; finishing %d batches in flight", reason, len(self.inflight))
        if self.drain_task is not None:
            self.drain_task.cancel()
        while True:
            busy = [t for t in self.tasks if not t.done()]
            if busy:
                await asyncio.gather(*busy, return_exceptions=True)
                continue
            await asyncio.gather(*(w.flush.remote() for w in self.writers), return_exceptions=True)
            if not self.inflight and not any(not t.done() for t in self.tasks):
                break
            await asyncio.sleep(0.05)
        return await self._shutdown()

    async def stop(self, reason: str = "asked to stop") -> dict:
        """Stop at once: what is in flight is not written (counted as abandoned)."""
        self.stopping = True
        self.stop_reason = self.stop_reason or reason
        if self.drain_task is not None:
            self.drain_task.cancel()
        for task in list(self.tasks):
            task.cancel()
        if self.final is None and self.inflight:
            log.warning(
                "stopping with %d batches in flight: they are not written", len(self.inflight)
            )
            self.books.batches_abandoned += len(self.inflight)
            self.inflight.clear()
        return await self._shutdown()

    async def stop_when_empty(self, reason: str) -> None:
        """Drain and stop as soon as Q2 is empty and nothing is in flight (replay finished).

        Only a poll that started after this call counts: one already under way may have
        seen Q2 empty just before the producer's last put."""
        self.stop_when_empty_since = time.monotonic()
        self.stop_when_empty_reason = reason

    async def _shutdown(self) -> dict:
        if self.final is not None:
            return self.final
        if self.health_task is not None:
            self.health_task.cancel()
        stats = await self.stats()
        stats["stop_reason"] = self.stop_reason
        stats["files_written"] = await self._written_files()
        if self.catalog is not None:
            try:
                stats["report"] = str(
                    await asyncio.to_thread(
                        self.catalog.write_report, config_to_dict(self.config), stats
                    )
                )
            except CatalogError as exc:
                log.warning("could not write the run report: %s", exc)
        self.final = stats
        for actor in [*self.finders, *self.writers, *([self.producer] if self.producer else [])]:
            ray.kill(actor)
        if self.finder_group is not None:
            remove_placement_group(self.finder_group)
        self.finished.set()
        log.info("stopped (%s)", self.stop_reason)
        self._spawn(self._exit_later(), track=False)
        return stats

    async def wait_finished(self) -> dict:
        """Returns the final stats once the pipeline has stopped by itself or was stopped."""
        await self.finished.wait()
        assert self.final is not None
        return self.final

    # ------------------------------------------------------------------ taking from Q2

    async def _drain_loop(self) -> None:
        cfg = self.config
        n = len(self.shards)
        sizes = [0] * n
        turn = 0
        backoff = 0.001
        while not self.stopping:
            await self.credits.acquire()
            shard = None
            while shard is None:
                order = [(turn + k) % n for k in range(n)]
                shard = next((i for i in order if sizes[i] > 0), None)
                if shard is not None:
                    break
                polled_at = time.monotonic()
                sizes = await self._poll_sizes()
                if any(sizes):
                    backoff = 0.001
                    continue
                if not self.dead_shards:  # a shard that did not answer is not known empty
                    self._note_idle(polled_at)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, cfg.queue.poll_interval_s)
            sizes[shard] -= 1
            turn = shard + 1
            self._take(shard)
            if (
                cfg.stop.max_batches is not None
                and self.books.batches_taken >= cfg.stop.max_batches
            ):
                self._begin_stop(f"took stop.max_batches = {cfg.stop.max_batches} batches")
                return

    def _take(self, shard: int) -> None:
        """Forward the shard's `get` result by reference; no await between get and bookkeeping."""
        ref = self.shards[shard].get.remote()
        delivery = Delivery(self.next_id, [ref], shard)
        self.next_id += 1
        self.inflight[delivery.delivery_id] = InFlight(delivery, shard, time.monotonic())
        self.books.batches_taken += 1
        self.idle_since = self.paused_since = None
        self._spawn(self._dispatch(delivery.delivery_id))

    async def _poll_sizes(self) -> list[int]:
        replies = await asyncio.gather(
            *(asyncio.wait_for(_await(s.size.remote()), SIZE_TIMEOUT_S) for s in self.shards),
            return_exceptions=True,
        )
        sizes = []
        for i, reply in enumerate(replies):
            if isinstance(reply, BaseException):
                await self._shard_failed(i, reply)
                sizes.append(0)
            else:
                if i in self.dead_shards:
                    log.info("Q2 shard %d answers again", i)
                    del self.dead_shards[i]
                sizes.append(int(reply))
        self.q2_depth = sum(sizes)
        return sizes

    async def _shard_failed(self, index: int, exc: BaseException) -> None:
        """Log once, then try to reconnect by name every few seconds; others go on meanwhile."""
        now = time.monotonic()
        if index not in self.dead_shards:
            log.warning(
                "Q2 shard %d does not answer (%s); draining the others", index, type(exc).__name__
            )
            self.dead_shards[index] = 0.0
        if now - self.dead_shards[index] < 2.0:
            return
        self.dead_shards[index] = now
        name = f"{self.config.queue.name}_shard_{index}"
        try:
            self.shards[index] = await asyncio.to_thread(
                ray.get_actor, name, self.config.ray.namespace
            )
            log.info("reconnected to Q2 shard %s", name)
        except ValueError:
            pass

    def _flush_when_paused(self) -> None:
        """Q2 is empty and every batch in flight waits in a writer's open file: after
        output.idle_flush_s the writers close those files, so the last hits before a pause
        reach disk within seconds, not at max_file_age_s."""
        if not self.inflight or any(s.result is None for s in self.inflight.values()):
            self.paused_since = None
            return
        now = time.monotonic()
        if self.paused_since is None:
            self.paused_since, self.pause_flushed = now, False
        elif not self.pause_flushed and now - self.paused_since >= self.config.output.idle_flush_s:
            self.pause_flushed = True
            for writer in self.writers:
                writer.close_open_file.remote()

    def _note_idle(self, polled_at: float) -> None:
        """Q2 was empty at a poll started at ``polled_at``: stop when asked to stop once
        empty, or after the idle timeout.

        The idle clock starts only once a first batch was taken, so a pipeline started before
        its producer waits for it (use queue.wait_for_producer_s to bound that wait).
        """
        timeout = self.config.stop.idle_timeout_s
        self._note_no_data()
        self._flush_when_paused()
        if self.stop_when_empty_reason is not None:  # nothing more will come: drain now
            if polled_at > self.stop_when_empty_since:  # Q2 seen empty after the last put
                self._begin_stop(self.stop_when_empty_reason)
            return
        if self.inflight:
            self.idle_since = None
            return
        if self.books.batches_taken == 0:
            self._note_no_first_batch()
            return
        now = time.monotonic()
        if self.idle_since is None:
            self.idle_since = now
        elif timeout is not None and now - self.idle_since >= timeout:
            self._begin_stop(f"Q2 empty and nothing in flight for {timeout:g} s")

    def _begin_stop(self, reason: str) -> None:
        if self.stopping:
            return
        self.stopping = True
        self.stop_reason = reason
        self._spawn(self.drain_and_stop(reason), track=False)

    def _spawn(self, coro: Any, track: bool = True) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        if track:
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    # ------------------------------------------------------------------ finder stage

    async def _dispatch(self, delivery_id: int) -> None:
        """Send a batch to a free finder until one finishes it; a dead finder is replaced."""
        state = self.inflight[delivery_id]
        while True:
            index = await self.finder_slots.get()
            finder = self.finders[index]
            state.finder = index
            state.attempts += 1
            try:
                result: BatchResult = await finder.process.remote(state.delivery)
            except Exception as exc:
                self.finder_slots.put_nowait(index)
                if is_actor_death(exc):
                    self._replace_finder(index, finder)
                    if state.attempts < MAX_ATTEMPTS:
                        log.warning(
                            "finder %d died holding delivery %d; re-dispatching", index, delivery_id
                        )
                        continue
                    reason = f"the batch was being processed when {state.attempts} finders died"
                else:
                    reason = f"finder error: {_last_line(exc)}"
                self._reject(delivery_id, f"delivery {delivery_id}", 0, reason)
                return
            self.finder_slots.put_nowait(index)
            await self._finder_done(state, result)
            return

    async def _finder_done(self, state: InFlight, result: BatchResult) -> None:
        delivery_id = result.delivery_id
        state.delivery = None  # drop the item ref: the logits can leave the object store
        self._say(result.notices)
        if result.rejected in (EMPTY, SHARD_GONE):  # nothing was taken after all
            if self.inflight.pop(delivery_id, None) is not None:
                self.books.batches_taken -= 1
                self.credits.release()
            return
        if result.rejected is not None:
            self._reject(delivery_id, result.batch_id, result.num_events, result.rejected)
            return
        self.books.peaks_truncated += result.truncated_peaks
        if self.metrics is not None:
            self.metrics.observe_find(result.find_seconds)
        if delivery_id not in self.inflight:
            return  # the writer acked first (nothing kept)
        state.result = result
        if not result.handed_to_writer:
            await self._resend(state)

    async def _resend(self, state: InFlight) -> None:
        """Send a finder's result (again) to its writer, without events already in files."""
        assert state.result is not None
        state.result.handed_to_writer = True
        result = state.result
        if state.written:
            result = msgspec.structs.replace(
                result, kept=[e for e in result.kept if e.event_index not in state.written]
            )
        writer = self.writers[writer_index(result.delivery_id, len(self.writers))]
        try:
            await writer.submit.remote(result)
        except Exception as exc:
            if not is_actor_death(exc):
                raise
            state.result.handed_to_writer = False  # the health loop re-sends after replacing

    def _say(self, notices: list[tuple[str, str, str]]) -> None:
        """Log each kind of metadata notice once per run (the finders send every one)."""
        for kind, level, text in notices:
            if kind not in self.said:
                self.said.add(kind)
                log.log(logging.INFO if level == "info" else logging.WARNING, "%s", text)

    def _reject(self, delivery_id: int, batch_id: str, num_events: int, reason: str) -> None:
        if delivery_id not in self.inflight:
            return
        self.books.events_seen_done += num_events
        self.books.batches_rejected += 1
        self.books.events_rejected += num_events
        self.books.rejections[_reason_kind(reason)] += 1
        self.books.last_rejections.append({"batch_id": batch_id, "reason": reason})
        self.recent.add(True)
        self._finish(delivery_id)

    def _finish(self, delivery_id: int) -> None:
        state = self.inflight.pop(delivery_id, None)
        if state is None:
            return
        self.books.batches_done += 1
        self.last_progress = time.monotonic()
        latency = self.last_progress - state.taken_at
        self.books.latencies.append(latency)
        if self.metrics is not None:
            self.metrics.observe_latency(latency)
        self.credits.release()

    # ------------------------------------------------------------------ acks

    async def file_written(self, path: str, events: list[tuple[int, int]]) -> None:
        """A writer renamed a file holding these (delivery_id, event_index): count them (so
        a re-sent batch skips them) and list the file in files.lst / events.lst."""
        for delivery_id, event_index in events:
            state = self.inflight.get(delivery_id)
            if state is not None and event_index not in state.written:
                state.written.add(event_index)
                self.books.events_written += 1
        if self.catalog is None:
            return
        try:
            await asyncio.to_thread(self.catalog.add_file, path, len(events))
        except CatalogError as exc:
            log.warning("could not update the file lists: %s", exc)

    async def ack(self, acks: list[Ack]) -> None:
        """A writer finished deliveries: every kept event is in a renamed file."""
        for a in acks:
            if a.delivery_id not in self.inflight:
                continue
            self.books.events_seen_done += a.num_events
            self.books.events_filtered += a.filtered
            self.books.events_duplicate += a.duplicates
            if a.rejected:
                self.books.events_rejected += a.rejected
                self.books.rejections[_reason_kind(a.reason or "rejected by the writer")] += 1
                self.books.last_rejections.append({"delivery": a.delivery_id, "reason": a.reason})
            self.recent.add(bool(a.rejected) and a.rejected >= a.num_events)
            self._finish(a.delivery_id)

    # ------------------------------------------------------------------ health

    async def _health_loop(self) -> None:
        """Every second: replace dead actors, publish metrics, refresh status.json."""
        while True:
            await asyncio.sleep(HEALTH_INTERVAL_S)
            try:
                await self._check_health()
            except Exception:  # e.g. no node can hold a replacement now: try again later
                log.exception("health check failed; retrying in %.0f s", HEALTH_INTERVAL_S)

    async def _check_health(self) -> None:
        await self._watch_q2_full()
        await self._publish()
        for i, writer in enumerate(list(self.writers)):
            if await _dead(writer):
                await self._replace_writer(i, writer)
        for i, finder in enumerate(list(self.finders)):
            if await _dead(finder):
                self._replace_finder(i, finder)

    async def _publish(self) -> None:
        stats = await self.stats()
        if self.metrics is not None:
            self.metrics.publish(stats)
        if self.catalog is not None:
            try:
                await asyncio.to_thread(self.catalog.update, stats)
            except CatalogError as exc:
                log.warning("could not update status.json: %s", exc)

    def _replace_finder(self, index: int, dead: Any) -> None:
        if self.finders[index] is not dead or (self.stopping and not self.inflight):
            return
        log.warning("finder %d is dead; starting a new one", index)
        self.replacements["finder"] += 1
        self.finders[index] = self._new_finder(index)

    async def _replace_writer(self, index: int, dead: Any) -> None:
        if self.writers[index] is not dead:
            return
        log.warning("writer %d is dead; starting a new one and re-sending its batches", index)
        self.replacements["writer"] += 1
        self.writers[index] = self._new_writer(index)
        await asyncio.gather(
            *(f.set_writers.remote(self.writers) for f in self.finders), return_exceptions=True
        )
        for state in list(self.inflight.values()):
            r = state.result
            if r is not None and writer_index(r.delivery_id, len(self.writers)) == index:
                self._spawn(self._resend(state))

    # ------------------------------------------------------------------ loud when data is lost

    async def _watch_q2_full(self) -> None:
        """Each health tick: is every shard full (the producer drops batches)? Warn at most
        once a minute and count the seconds. Asked here, not in the drain loop, because the
        drain loop stops polling exactly when Q2 fills: while it waits for credits."""
        n = len(self.shards)
        if n == 0 or self.final is not None:
            return
        calls = [s.size.remote() for s in self.shards] + [s.is_full.remote() for s in self.shards]
        replies = await asyncio.gather(
            *(asyncio.wait_for(_await(c), Q2_FULL_TIMEOUT_S) for c in calls),
            return_exceptions=True,
        )
        sizes = [r if isinstance(r, int) and not isinstance(r, bool) else None for r in replies[:n]]
        flags = [r if isinstance(r, bool) else None for r in replies[n:]]
        if None not in sizes:
            self.q2_depth = sum(sizes)  # type: ignore[arg-type]
        now = time.monotonic()
        full = alarms.q2_is_full(sizes, flags, self.config.queue.maxsize_per_shard)
        if self.q2_full.observe(full, now):
            message = alarms.q2_full_message(
                self.config.queue.name, self.q2_depth, n, self.q2_full.seconds(now)
            )
            log.warning("%s", message)

    def _note_no_data(self) -> None:
        """From an empty poll: warn once when no batch arrived for queue.warn_no_data_s."""
        now = time.monotonic()
        if self.no_data.observe(self.books.batches_taken, now):
            self._spawn(self._warn_no_data(self.no_data.warn_after_s, self.books.batches_taken))

    async def _warn_no_data(self, seconds: float, taken: int) -> None:
        cfg = self.config
        try:
            named = await asyncio.to_thread(ray.util.list_named_actors, all_namespaces=True)
        except Exception:  # only a hint: the warning goes out without the shards found
            named = []
        found = alarms.shards_by_queue(named, cfg.ray.namespace)
        self.no_data_warning = alarms.no_data_message(
            cfg.queue.name, cfg.ray.namespace, seconds, taken, found
        )
        log.warning("%s", self.no_data_warning)

    def _note_no_first_batch(self) -> None:
        """Finite jobs: Q2 is still empty stop.wait_for_first_batch_s after the start."""
        wait = self.config.stop.wait_for_first_batch_s
        if wait is not None and time.monotonic() - self.started_mono >= wait:
            self._begin_stop(
                f"no batch arrived from Q2 '{self.config.queue.name}' within "
                f"stop.wait_for_first_batch_s = {wait:g} s of the start"
            )

    def _loss_stats(self) -> dict:
        now = time.monotonic()
        rejected, finished = self.recent.counts()
        return {
            "q2_full": self.q2_full.is_full,
            "q2_full_seconds": self.q2_full.seconds(now),
            "q2_full_warnings": self.q2_full.warnings,
            "recent_batches": finished,
            "recent_rejected": rejected,
            "no_data_warning": self.no_data_warning,
        }

    # ------------------------------------------------------------------ introspection

    async def actors(self) -> dict:
        """Handles of the current finders, writers and shards (status, fault drills)."""
        return {
            "finders": list(self.finders),
            "writers": list(self.writers),
            "shards": list(self.shards),
        }

    async def pid(self) -> int:
        return os.getpid()

    # ------------------------------------------------------------------ stats

    async def stats(self) -> dict:
        """Counts, queue depths and rates; `taken = done + in_flight` holds at every read."""
        b = self.books
        elapsed = time.monotonic() - self.started_mono
        finders = await _gather_stats(self.finders)
        writers = await _gather_stats(self.writers)
        lat = sorted(b.latencies)
        with_result = [s for s in self.inflight.values() if s.result is not None]
        pending_events = sum(s.result.num_events - len(s.written) for s in with_result)
        return {
            "elapsed_s": elapsed,
            "batches_taken": b.batches_taken,
            "batches_done": b.batches_done,
            "batches_rejected": b.batches_rejected,
            "batches_abandoned": b.batches_abandoned,
            "batches_in_flight": len(self.inflight),
            "batches_at_finders": sum(1 for s in self.inflight.values() if s.result is None),
            "events_seen": b.events_seen_done + sum(s.result.num_events for s in with_result),
            "events_written": b.events_written,
            "events_filtered": b.events_filtered,
            "events_rejected": b.events_rejected,
            "events_duplicate": b.events_duplicate,
            "events_pending": pending_events,
            "peaks_truncated": b.peaks_truncated,
            "rejections": dict(b.rejections),
            "last_rejections": list(b.last_rejections),
            "credits": self.config.processing.credits,
            "credits_in_use": len(self.inflight),
            "seconds_since_last_ack": time.monotonic() - self.last_progress,
            "q2_depth": self.q2_depth,
            "dead_shards": sorted(self.dead_shards),
            "files": sum(w.get("files", 0) for w in writers),
            "bytes_written": sum(w.get("bytes_written", 0) for w in writers),
            "events_without_image": sum(w.get("events_without_image", 0) for w in writers),
            "events_per_s": (b.events_written + b.events_filtered) / elapsed if elapsed else 0.0,
            "latency_p50_s": _quantile(lat, 0.5),
            "latency_p99_s": _quantile(lat, 0.99),
            "finders": finders,
            "writers": writers,
            "replacements": dict(self.replacements),
            "stopping": self.stopping,
            "stop_reason": self.stop_reason,
            "started_at": self.started_at,
            "run_label": self.run_label,
            "output_dir": self.output_dir,
            **self._loss_stats(),
        }

    async def _written_files(self) -> list[dict]:
        files: list[dict] = []
        for w in self.writers:
            try:
                files.extend(await w.written_files.remote())
            except Exception as exc:  # a dead writer's list is gone; its files are on disk
                log.warning("could not list a writer's files: %s", type(exc).__name__)
        return files


def _check_cpus(cfg: Config) -> None:
    """Refuse actors that could never be scheduled, rather than wait for them forever."""
    p = cfg.processing
    wanted = p.num_finders * p.finder_num_cpus + cfg.output.num_writers * p.writer_num_cpus
    have = ray.cluster_resources().get("CPU", 0.0)
    if wanted > have:
        raise RuntimeError(
            f"{p.num_finders} finders x processing.finder_num_cpus = {p.finder_num_cpus:g} and "
            f"{cfg.output.num_writers} writers x processing.writer_num_cpus = "
            f"{p.writer_num_cpus:g} need {wanted:g} CPUs but the Ray cluster has {have:g}: "
            "lower them (fractions are fine) or add nodes."
        )
    check_placement(cfg, alive_nodes(ray.nodes()))  # custom resources, labels, writer node


async def _reserve_finder_group(cfg: Config, timeout: float = 120.0) -> Any:
    """The finders' placement group (one bundle each), ready; None without one."""
    strategy = cfg.placement.finder_placement_group
    if strategy == "none":
        return None
    bundles = finder_bundles(cfg)
    group = placement_group(bundles, strategy=strategy)
    try:
        await asyncio.wait_for(_await(group.ready()), timeout)
    except asyncio.TimeoutError:
        remove_placement_group(group)
        raise RuntimeError(
            f'Ray could not reserve placement.finder_placement_group = "{strategy}" '
            f"({len(bundles)} bundles of {bundles[0]}) within {timeout:g} s: other jobs hold "
            "the resources, or the nodes cannot hold that strategy."
        ) from None
    log.info("reserved a %s placement group of %d finder bundles", strategy, len(bundles))
    return group


async def _placed(actors: list[Any], timeout: float = 120.0) -> list[BaseException | None]:
    """Wait until every new actor answers or fails (its error, else None); a clear sentence
    if Ray cannot place them."""
    try:
        replies = await asyncio.wait_for(
            asyncio.gather(*(_await(a.ping.remote()) for a in actors), return_exceptions=True),
            timeout,
        )
        return [r if isinstance(r, BaseException) else None for r in replies]
    except asyncio.TimeoutError:
        raise RuntimeError(
            f"Ray did not start the finders and writers within {timeout:g} s: the cluster has "
            f"{ray.available_resources().get('CPU', 0.0):g} CPUs free; check "
            "processing.finder_num_cpus / writer_num_cpus and the scheduling options."
        ) from None


async def _await(ref: Any) -> Any:
    return await ref


async def _dead(actor: Any) -> bool:
    try:
        await asyncio.wait_for(_await(actor.ping.remote()), 30.0)
        return False
    except Exception as exc:
        return is_actor_death(exc)


async def _gather_stats(actors: list[Any]) -> list[dict]:
    replies = await asyncio.gather(
        *(asyncio.wait_for(_await(a.stats.remote()), 5.0) for a in actors),
        return_exceptions=True,
    )
    return [r if isinstance(r, dict) else {"dead": True} for r in replies]


def _quantile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def _last_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[-1] if lines else ''}"


def _reason_kind(reason: str) -> str:
    """A short key for counting rejections: the reason without the batch id prefix."""
    text = reason.split(": ", 1)[1] if reason.startswith("batch ") and ": " in reason else reason
    return text.split(":")[0][:80]
