"""Loud when data is lost: Q2 full, mostly rejected batches, no data, a run that wrote nothing.

The producer drops a batch when every Q2 shard is full and says nothing, a misspelt queue name
gives a pipeline that waits on empty shards of its own, and a run whose every batch is
rejected used to exit 0. This module decides when each of these is worth a sentence and
writes the sentence; the coordinator and the command line only feed it numbers. No Ray here.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

Q2_FULL_WARN_EVERY_S = 60.0
REJECTION_WINDOW = 50  # health: the last this many finished batches

_SHARD_NAME = re.compile(r"^(?P<queue>.+)_shard_(?P<index>\d+)$")


@dataclass
class FullClock:
    """Seconds Q2 was seen full, and when a warning is due (at most one per ``warn_every_s``).

    Fed one observation per health tick: a full stretch runs from the first tick that saw
    Q2 full to the first tick that saw it not full.
    """

    warn_every_s: float = Q2_FULL_WARN_EVERY_S
    full_since: float | None = None
    closed_seconds: float = 0.0
    last_warning: float | None = None
    warnings: int = 0

    def observe(self, full: bool, now: float) -> bool:
        """Record one observation; True when the caller should warn now."""
        if not full:
            if self.full_since is not None:
                self.closed_seconds += now - self.full_since
                self.full_since = None
            return False
        if self.full_since is None:
            self.full_since = now
        if self.last_warning is not None and now - self.last_warning < self.warn_every_s:
            return False
        self.last_warning = now
        self.warnings += 1
        return True

    @property
    def is_full(self) -> bool:
        return self.full_since is not None

    def seconds(self, now: float) -> float:
        """Seconds Q2 was full so far, the current stretch included."""
        current = now - self.full_since if self.full_since is not None else 0.0
        return self.closed_seconds + current


def q2_is_full(sizes: list[int | None], full_flags: list[bool | None], maxsize: int) -> bool:
    """Every shard full, so the producer drops what it puts: a shard's own ``is_full`` answer
    when it gave one, else its size against ``queue.maxsize_per_shard``. A shard that did not
    answer (None) is not known full."""
    if not sizes:
        return False
    for size, flag in zip(sizes, full_flags, strict=True):
        full = flag if flag is not None else (size is not None and size >= maxsize)
        if not full:
            return False
    return True


def q2_full_message(queue: str, depth: int, num_shards: int, seconds: float) -> str:
    return (
        f"Q2 '{queue}' is full ({depth} batches in {num_shards} shard"
        f"{'s' if num_shards != 1 else ''}, full for {seconds:.0f} s so far): the producer is "
        "dropping the batches it cannot put, because cxi_async is slower than inference; add "
        "finders (processing.num_finders) or writers (output.num_writers)."
    )


@dataclass
class NoDataClock:
    """When a pipeline has received no batch for ``warn_after_s``: once per run.

    Fed from the coordinator's empty polls with the number of batches taken so far: the clock
    restarts whenever that number changed, so it counts from the start or the last batch.
    """

    warn_after_s: float
    started: float
    taken: int = 0
    since: float | None = None
    warned: bool = False

    def __post_init__(self) -> None:
        self.since = self.started

    def observe(self, taken: int, now: float) -> bool:
        """True once, the first time no batch was taken for ``warn_after_s``."""
        if taken != self.taken:
            self.taken, self.since = taken, now
        if self.warned:
            return False
        assert self.since is not None
        if now - self.since < self.warn_after_s:
            return False
        self.warned = True
        return True


def shards_by_queue(
    named_actors: Iterable[Mapping[str, str]], namespace: str
) -> dict[str, list[int]]:
    """Shard indices of every ``<queue>_shard_<i>`` actor in ``namespace``, by queue name."""
    found: dict[str, list[int]] = {}
    for entry in named_actors:
        m = _SHARD_NAME.match(entry.get("name", ""))
        if m and entry.get("namespace") == namespace:
            found.setdefault(m["queue"], []).append(int(m["index"]))
    return {q: sorted(v) for q, v in sorted(found.items())}


def no_data_message(
    queue: str, namespace: str, seconds: float, taken: int, found: dict[str, list[int]]
) -> str:
    """The one warning of a pipeline that receives nothing, with what it can see in Ray."""
    since = "since the start" if taken == 0 else f"since the last of {taken} batches"
    mine = found.get(queue, [])
    others = {q: v for q, v in found.items() if q != queue}
    text = (
        f"no batch arrived from Q2 '{queue}' in namespace '{namespace}' for "
        f"queue.warn_no_data_s = {seconds:g} s ({since}); its shards there: {_indices(mine)}"
    )
    if others:
        listed = ", ".join(f"'{q}' (shards {_indices(v)})" for q, v in others.items())
        text += f"; other queues in that namespace: {listed}"
    return (
        text + ". A misspelt queue.name or ray.namespace creates empty shards of its own: "
        "compare them with the producer's runtime.queue_names.output_queue and ray.namespace "
        "(python -m cxi_async check --pipeline-config)."
    )


def _indices(indices: list[int]) -> str:
    return ", ".join(str(i) for i in indices) if indices else "none"


@dataclass
class RejectionWindow:
    """Whether each of the last ``size`` finished batches was rejected."""

    size: int = REJECTION_WINDOW
    outcomes: list[bool] = field(default_factory=list)

    def add(self, rejected: bool) -> None:
        self.outcomes.append(rejected)
        del self.outcomes[: -self.size]

    def counts(self) -> tuple[int, int]:
        """(rejected, finished) over the window."""
        return sum(self.outcomes), len(self.outcomes)


def commonest_rejections(rejections: Mapping[str, int], n: int = 3) -> str:
    """``"'<reason>' (x 5), '<reason>' (x 1)"``, the commonest first."""
    top = Counter(rejections).most_common(n)
    return ", ".join(f"'{reason}' (x {count})" for reason, count in top)


def rejection_problem(stats: Mapping[str, Any]) -> str | None:
    """Health: more than half of the last finished batches were rejected, or None."""
    rejected = int(stats.get("recent_rejected", 0))
    finished = int(stats.get("recent_batches", 0))
    if finished == 0 or 2 * rejected <= finished:
        return None
    text = f"{rejected} of the last {finished} batches were rejected"
    reasons = commonest_rejections(stats.get("rejections") or {})
    return text + (f" (commonest: {reasons})" if reasons else "")


def q2_full_problem(stats: Mapping[str, Any]) -> str | None:
    """Health: Q2 is full now (the producer is dropping batches), or None."""
    if not stats.get("q2_full"):
        return None
    return (
        f"Q2 is full (depth {stats.get('q2_depth', 0)}, full for "
        f"{float(stats.get('q2_full_seconds', 0.0)):.0f} s in all): the producer is dropping "
        "batches; add finders or writers"
    )


def pool_problem(stats: Mapping[str, Any]) -> str | None:
    """Health: the adaptive finder pool wants to grow and cannot (add nodes), or None."""
    message = (stats.get("pool") or {}).get("cannot_grow")
    return f"finder pool: {message}" if message else None


def nothing_written(final: Mapping[str, Any]) -> str | None:
    """Why a finished run that took batches but wrote or filtered no event failed, or None."""
    taken = int(final.get("batches_taken", 0))
    done = int(final.get("events_written", 0)) + int(final.get("events_filtered", 0))
    if taken == 0 or done > 0:
        return None
    text = f"took {taken} batch{'es' if taken != 1 else ''} from Q2 but wrote or filtered no event"
    rejected = int(final.get("batches_rejected", 0))
    reasons = commonest_rejections(final.get("rejections") or {})
    if rejected:
        return f"{text}: {rejected} rejected, commonest reasons: {reasons}."
    abandoned = int(final.get("batches_abandoned", 0))
    return f"{text}: none was rejected ({abandoned} abandoned at stop)."
