"""What the coordinator tells the outside world: the file lists, status.json, the report,
the Ray metrics, and the loud warnings when data is lost outside cxi_async.

The catalog (files.lst, events.lst, status.json, the report) is written in worker threads so
the coordinator's event loop never waits on a disk. A catalog error is a warning, never a
stop: the CXI files themselves are the record.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import ray

from cxi_async.actors.common import awaited, is_actor_death
from cxi_async.config import Config, config_to_dict
from cxi_async.core import alarms, cxi
from cxi_async.core.catalog import Catalog, CatalogError
from cxi_async.core.messages import FileDone, Notice

log = logging.getLogger(__name__)

Q2_FULL_TIMEOUT_S = 2.0  # a shard busy with a large put answers later: not known full
CATALOG_MIN_INTERVAL_S = 2.0
STATS_TIMEOUT_S = 5.0


class Publisher:
    """The catalog, the metrics and the data-loss alarms of one run."""

    def __init__(self, config: Config, output_dir: str, run_label: str, started: float) -> None:
        from cxi_async.actors.metrics import PipelineMetrics

        self.config = config
        self.output_dir = output_dir
        self.catalog = Catalog(
            output_dir,
            config.output.file_prefix,
            run_label,
            fsync=config.output.fsync,
            min_interval_s=CATALOG_MIN_INTERVAL_S,
        )
        self.metrics = PipelineMetrics(config.queue.name)
        self.q2_full = alarms.FullClock()
        self.no_data = alarms.NoDataClock(config.queue.warn_no_data_s, started)
        self.recent = alarms.RejectionWindow()
        self.no_data_warning: str | None = None
        self.said: set[str] = set()  # kinds of notice already logged this run

    def say_once(self, notices: list[Notice]) -> None:
        """Log each kind of metadata notice once per run (the finders send every one)."""
        for kind, level, text in notices:
            if kind not in self.said:
                self.said.add(kind)
                log.log(logging.INFO if level == "info" else logging.WARNING, "%s", text)

    async def adopt_unlisted_files(self) -> None:
        await asyncio.to_thread(self._adopt_unlisted_files)

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

    async def file_done(self, done: FileDone) -> None:
        """List a renamed file in files.lst / events.lst."""
        if done.seconds:  # 0: found on disk after its writer died, never timed
            self.metrics.observe_write(done.seconds)
        try:
            await asyncio.to_thread(self.catalog.add_file, done.path, len(done.events))
        except CatalogError as exc:
            log.warning("could not update the file lists: %s", exc)

    async def publish(self, stats: dict) -> None:
        """Each health tick: the Ray metrics and status.json."""
        self.metrics.publish(stats)
        try:
            await asyncio.to_thread(self.catalog.update, stats)
        except CatalogError as exc:
            log.warning("could not update status.json: %s", exc)

    async def report(self, stats: dict) -> str | None:
        """The run report (its path), written once at the stop."""
        try:
            path = await asyncio.to_thread(
                self.catalog.write_report, config_to_dict(self.config), stats
            )
            return str(path)
        except CatalogError as exc:
            log.warning("could not write the run report: %s", exc)
            return None

    # ------------------------------------------------------------------ loud when data is lost

    async def watch_q2_full(self, shards: list[Any]) -> int | None:
        """Each health tick: is every shard full (the producer drops batches)? Warn at most
        once a minute and count the seconds; returns Q2's depth when every shard answered.
        Asked here, not by the intake, because the intake stops polling exactly when Q2
        fills: while the coordinator waits for credits."""
        n = len(shards)
        if n == 0:
            return None
        calls = [s.size.remote() for s in shards] + [s.is_full.remote() for s in shards]
        replies = await asyncio.gather(
            *(asyncio.wait_for(awaited(c), Q2_FULL_TIMEOUT_S) for c in calls),
            return_exceptions=True,
        )
        sizes = [r if isinstance(r, int) and not isinstance(r, bool) else None for r in replies[:n]]
        flags = [r if isinstance(r, bool) else None for r in replies[n:]]
        depth = None if None in sizes else sum(sizes)  # type: ignore[arg-type]
        now = time.monotonic()
        full = alarms.q2_is_full(sizes, flags, self.config.queue.maxsize_per_shard)
        if self.q2_full.observe(full, now):
            seconds = self.q2_full.seconds(now)
            log.warning(
                "%s", alarms.q2_full_message(self.config.queue.name, depth or 0, n, seconds)
            )
        return depth

    def no_data_due(self, taken: int) -> bool:
        """From an empty poll: True once, when no batch arrived for queue.warn_no_data_s."""
        return self.no_data.observe(taken, time.monotonic())

    async def warn_no_data(self, taken: int) -> None:
        cfg = self.config
        try:
            named = await asyncio.to_thread(ray.util.list_named_actors, all_namespaces=True)
        except Exception:  # only a hint: the warning goes out without the shards found
            named = []
        found = alarms.shards_by_queue(named, cfg.ray.namespace)
        self.no_data_warning = alarms.no_data_message(
            cfg.queue.name, cfg.ray.namespace, self.no_data.warn_after_s, taken, found
        )
        log.warning("%s", self.no_data_warning)

    def loss_stats(self) -> dict:
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


def compose_stats(coordinator: Any, finders: list[dict], writers: list[dict]) -> dict:
    """The coordinator's stats: the ledger's books plus the live parts of every unit."""
    c = coordinator
    ledger, intake, crew = c.ledger, c.intake, c.crew
    now = time.monotonic()
    elapsed = now - c.started_mono
    lat = sorted(ledger.latencies)
    done_events = ledger.events_written + ledger.events_filtered
    return {
        "elapsed_s": elapsed,
        **ledger.counters(),
        "seconds_since_last_ack": now - (ledger.last_done or c.started_mono),
        "q2_depth": intake.depth if intake else 0,
        "dead_shards": sorted(intake.dead) if intake else [],
        "files": sum(w.get("files", 0) for w in writers),
        "bytes_written": sum(w.get("bytes_written", 0) for w in writers),
        "events_without_image": sum(w.get("events_without_image", 0) for w in writers),
        "events_per_s": done_events / elapsed if elapsed else 0.0,
        "latency_p50_s": _quantile(lat, 0.5),
        "latency_p99_s": _quantile(lat, 0.99),
        "finders": finders,
        "writers": writers,
        "replacements": dict(crew.replacements) if crew else {},
        "files_recovered": c.supervisor.files_recovered,
        "stopping": c.stopping,
        "stop_reason": c.stop_reason,
        "started_at": c.started_at,
        "run_label": c.run_label,
        "output_dir": c.output_dir,
        **c.publisher.loss_stats(),
        **(c.autoscaler.stats() if c.autoscaler else {"pool_size": len(finders)}),
    }


async def actor_stats(actors: list[Any]) -> list[dict]:
    """Each actor's stats(), asked together. One that does not answer within 5 s reads
    {"dead": True}; one whose call died (the actor is gone) also has "gone": True."""
    replies = await asyncio.gather(
        *(asyncio.wait_for(awaited(a.stats.remote()), STATS_TIMEOUT_S) for a in actors),
        return_exceptions=True,
    )
    return [
        r if isinstance(r, dict) else {"dead": True, "gone": is_actor_death(r)} for r in replies
    ]


async def written_files(writers: list[Any]) -> list[dict]:
    """Every writer's list of files, for the report (a dead writer's files are on disk)."""
    files: list[dict] = []
    for w in writers:
        try:
            files.extend(await w.written_files.remote())
        except Exception as exc:
            log.warning("could not list a writer's files: %s", type(exc).__name__)
    return files


def _quantile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]
