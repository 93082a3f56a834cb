"""Ray metrics: the coordinator's books as Prometheus counters, gauges and histograms.

The coordinator already keeps cumulative counts for `stats()`; `PipelineMetrics.publish(stats)`
turns them into `Counter.inc(delta)` since the previous publish and sets the gauges, so the
Ray dashboard (and Prometheus behind it) sees the pipeline without a second set of books.
Counters only go up: when a cumulative value drops (a writer died and its file count left
the sum), the drop is absorbed and counting resumes from the new value.

Every metric is named `cxi_async_*` and tagged with the Q2 name (`queue`), so several
pipelines on one cluster stay apart. Ray exports counters with a `_total` suffix and puts
`ray_` in front of every name. Metric objects are created on first use, so a process that
only observes one histogram registers only that one.

The object also keeps its own totals (`counted`, `gauges`, `observed`): they are what was
sent to Ray, for tests and for a quick look in a debugger.
"""

from __future__ import annotations

import logging
from collections import Counter as _Tally
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

__all__ = ["COUNTERS", "GAUGES", "HISTOGRAMS", "PipelineMetrics"]

Tags = tuple[tuple[str, str], ...]

#: stats key -> (metric name, description) of the cumulative counts published as deltas.
COUNTERS: dict[str, tuple[str, str]] = {
    "events_seen": ("cxi_async_events_seen", "events of batches a finder decoded"),
    "events_written": ("cxi_async_events_written", "events written to CXI files (hits)"),
    "events_filtered": ("cxi_async_events_filtered", "events with fewer than min_num_peak"),
    "events_rejected": ("cxi_async_events_rejected", "events of rejected batches"),
    "events_abandoned": ("cxi_async_events_abandoned", "kept events a stop did not write"),
    "events_doubled": ("cxi_async_events_doubled", "events written in two files"),
    "batches_done": ("cxi_async_batches_done", "batches acknowledged or rejected"),
    "batches_rejected": ("cxi_async_batches_rejected", "batches rejected"),
    "peaks_truncated": ("cxi_async_peaks_truncated", "peaks beyond max_num_peak"),
    "files": ("cxi_async_files_written", "CXI files written and renamed"),
    "bytes_written": ("cxi_async_bytes_written", "bytes of CXI files written"),
}
REJECTIONS = ("cxi_async_rejections", "rejections by reason kind (batches)")

#: stats key -> (metric name, description) of the values set as they are.
GAUGES: dict[str, tuple[str, str]] = {
    "credits_in_use": ("cxi_async_credits_in_use", "batches taken and not yet acknowledged"),
    "credits": ("cxi_async_credits", "credits (processing.credits, or more as the pool grows)"),
    "pool_size": ("cxi_async_pool_size", "finders taking work"),
    "q2_depth": ("cxi_async_q2_depth", "items waiting in Q2 (all shards, last poll)"),
    "batches_in_flight": ("cxi_async_batches_in_flight", "batches between Q2 and a file"),
    "events_pending": ("cxi_async_events_pending", "kept events not yet in a file"),
    "seconds_since_last_ack": ("cxi_async_seconds_since_last_ack", "seconds since progress"),
}
INBOX = {
    "finders": ("cxi_async_finder_inbox", "batches queued in a finder"),
    "writers": ("cxi_async_writer_inbox", "batches queued in a writer"),
}
DEAD = ("cxi_async_actor_dead", "1 while a finder or writer does not answer")

#: name -> (description, bucket boundaries in seconds).
HISTOGRAMS: dict[str, tuple[str, list[float]]] = {
    "cxi_async_latency_seconds": (
        "seconds from taking a batch from Q2 until its events are in a file",
        [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300],
    ),
    "cxi_async_find_seconds": (
        "seconds a finder spent finding the peaks of one batch",
        [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
    ),
    "cxi_async_write_seconds": (
        "seconds a writer spent writing one CXI file",
        [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60],
    ),
}


@dataclass
class _WriterMark:
    files: int = 0
    write_seconds: float = 0.0


class PipelineMetrics:
    """Ray metrics of one pipeline (one Q2); create it inside an actor, publish every second.

    `publish(stats)` takes the coordinator's `stats()` dict. The histograms take single
    observations: `observe_latency` (per acknowledged batch), `observe_find` (per batch,
    e.g. `BatchResult.find_seconds`) and `observe_write` (per file). When nobody calls
    `observe_write`, `publish` derives per-file write times from the writers' cumulative
    `files` / `write_seconds` (the interval's mean, once per new file).
    """

    def __init__(self, queue_name: str, *, derive_write_seconds: bool = True) -> None:
        self.queue_name = queue_name
        self.derive_write_seconds = derive_write_seconds
        self.default_tags = {"queue": queue_name}
        self._metrics: dict[str, Any] = {}
        self._last: dict[tuple[str, Tags], float] = {}
        self._writers: dict[int, _WriterMark] = {}
        self.counted: _Tally[tuple[str, Tags]] = _Tally()  # what went to Counter.inc
        self.gauges: dict[tuple[str, Tags], float] = {}  # what went to Gauge.set last
        self.observed: _Tally[str] = _Tally()  # histogram observations made
        self.errors = 0  # recording failures (logged once; metrics never stop the pipeline)

    # ------------------------------------------------------------------ public

    def publish(self, stats: dict) -> None:
        """Counters += what the cumulative stats gained since last time; gauges = stats."""
        for key, (name, _) in COUNTERS.items():
            if key in stats:
                self._count(name, (), stats[key])
        for kind, count in (stats.get("rejections") or {}).items():
            self._count(REJECTIONS[0], (("reason", str(kind)),), count)
        for key, (name, _) in GAUGES.items():
            if stats.get(key) is not None:
                self._set(name, (), stats[key])
        for group, (name, _) in INBOX.items():
            actor_kind = group[:-1]
            for i, actor in enumerate(stats.get(group) or []):
                tags = (("actor", str(i)),)
                dead = bool(actor.get("dead"))
                self._set(DEAD[0], (("kind", actor_kind), ("actor", str(i))), float(dead))
                if not dead and "inbox" in actor:
                    self._set(name, tags, actor["inbox"])
        if self.derive_write_seconds:
            self._derive_write_seconds(stats.get("writers") or [])

    def observe_latency(self, seconds: float) -> None:
        """End-to-end latency of one batch: taken from Q2 until acknowledged."""
        self._observe("cxi_async_latency_seconds", seconds)

    def observe_find(self, seconds: float) -> None:
        """Finder time of one batch (decode excluded)."""
        self._observe("cxi_async_find_seconds", seconds)

    def observe_write(self, seconds: float) -> None:
        """Writer time of one file. Calling it turns off the derived write times."""
        self.derive_write_seconds = False
        self._observe("cxi_async_write_seconds", seconds)

    # ------------------------------------------------------------------ bookkeeping

    def _count(self, name: str, tags: Tags, value: Any) -> None:
        key = (name, tags)
        value = float(value)
        before = self._last.get(key, 0.0)
        self._last[key] = value
        delta = value - before
        if delta > 0:
            self.counted[key] += delta
            self._record("counter", name, delta, tags)

    def _set(self, name: str, tags: Tags, value: Any) -> None:
        value = float(value)
        self.gauges[(name, tags)] = value
        self._record("gauge", name, value, tags)

    def _observe(self, name: str, seconds: float) -> None:
        self.observed[name] += 1
        self._record("histogram", name, float(seconds), ())

    def _derive_write_seconds(self, writers: Iterable[dict]) -> None:
        for i, w in enumerate(writers):
            if w.get("dead") or "files" not in w:
                continue
            files, seconds = int(w["files"]), float(w.get("write_seconds", 0.0))
            mark = self._writers.setdefault(i, _WriterMark())
            if files < mark.files:  # a new writer replaced a dead one: start over
                mark = self._writers[i] = _WriterMark()
            new = files - mark.files
            if new > 0:
                mean = max(0.0, seconds - mark.write_seconds) / new
                for _ in range(new):
                    self._observe("cxi_async_write_seconds", mean)
            mark.files, mark.write_seconds = files, seconds

    # ------------------------------------------------------------------ Ray

    def _metric(self, kind: str, name: str, tag_keys: tuple[str, ...]) -> Any:
        metric = self._metrics.get(name)
        if metric is None:
            from ray.util import metrics

            keys = ("queue", *tag_keys)
            if kind == "counter":
                metric = metrics.Counter(name, description=_description(name), tag_keys=keys)
            elif kind == "gauge":
                metric = metrics.Gauge(name, description=_description(name), tag_keys=keys)
            else:
                description, boundaries = HISTOGRAMS[name]
                metric = metrics.Histogram(
                    name, description=description, boundaries=boundaries, tag_keys=keys
                )
            metric.set_default_tags(self.default_tags)
            self._metrics[name] = metric
        return metric

    def _record(self, kind: str, name: str, value: float, tags: Tags) -> None:
        try:
            metric = self._metric(kind, name, tuple(k for k, _ in tags))
            extra = dict(tags) or None
            if kind == "counter":
                metric.inc(value, tags=extra)
            elif kind == "gauge":
                metric.set(value, tags=extra)
            else:
                metric.observe(value, tags=extra)
        except Exception as exc:  # observability must never stop the pipeline
            if not self.errors:
                log.warning("could not record Ray metric %s: %s", name, exc)
            self.errors += 1


def _description(name: str) -> str:
    for table in (COUNTERS, GAUGES, INBOX):
        for metric, text in table.values():
            if metric == name:
                return text
    for metric, text in (REJECTIONS, DEAD):
        if metric == name:
            return text
    return ""
