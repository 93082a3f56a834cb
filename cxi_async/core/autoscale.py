"""The adaptive finder pool's policy (issue 13): when to grow or shrink, and by how much.

Pure: no Ray, no clock of its own. The coordinator feeds :meth:`PoolPolicy.observe` one
observation per health tick (its own monotonic time, Q2's depth, the finders' recent busy
fraction, the pool's size and how many more finders the cluster can place) and acts on what
comes back: a :class:`Resize` (start or retire finders, log ``reason``), a :class:`CannotGrow`
(log ``message`` once; health reports :attr:`PoolPolicy.blocked` while it lasts) or None.

The rules, with the defaults (``DEFAULTS``) and why:

- **Grow** when, over the last ``grow_after_s`` (3 s: three 1-s health ticks, enough to tell a
  backlog from one batch caught between two polls), every observation had a backlog
  (depth >= 1) and busy finders (busy >= ``grow_busy`` = 0.85), and Q2's depth either rose or
  stayed high (every depth >= ``grow_depth`` = 2 batches). The coordinator takes from Q2
  whenever it holds a credit, so a backlog that lasts means every credit is in use; busy
  finders say that finders, not writers or the disk, are what is short. A backlog that stays
  high while it falls still grows the pool: each batch in it waits, and the latency is the
  point. One that drains below ``grow_depth`` within the window does not.
- **By how much**: to ``max(size + 1, ceil(size * grow_factor))`` (``grow_factor`` = 1.5: 4 ->
  6, 1 -> 2), capped by ``max_finders`` and by ``size + can_place``. Multiplicative steps reach a
  large pool in a few cool-downs (2 -> 3 -> 5 -> 8 -> 12) without jumping to max at once.
- **Shrink** by one finder when, for ``shrink_after_s`` (30 s: long against a file's age and
  an inference job's hiccups), Q2 was empty and the finders would still be at most
  ``shrink_busy`` (0.6) busy with one finder fewer (``busy * size / (size - 1)``). Judging the
  smaller pool rather than the current one is the hysteresis: a shrink can never make the
  pool busy enough to grow again, and since ``shrink_busy * grow_factor <= 1`` a growth can
  never leave the pool idle enough to shrink at once (growing from n gives at most
  ``grow_factor * n + 1`` finders, and n finders were fully busy).
- **Cool-down**: no two changes within ``cooldown_s`` (10 s: a new finder needs a few seconds
  to start and load the geometry before its work shows in Q2's depth), and the windows above
  count only observations made after the last change.
- **The ceiling**: growth that is wanted but impossible (``max_finders`` reached, or
  ``can_place`` = 0) returns one :class:`CannotGrow` per episode; the episode ends with the
  next change or after ``shrink_after_s`` without a reason to grow.

Credits follow the pool: :func:`credits_for` is the rule "credits >= finders x (inbox + 1) +
writers x the batches one file needs", and :func:`memory_bound` is the sentence that prints
what it costs.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from cxi_async.config import Config

__all__ = [
    "DEFAULTS",
    "BusyMeter",
    "CannotGrow",
    "PoolPolicy",
    "Resize",
    "credits_for",
    "credits_shortfall",
    "expected_batch_size",
    "memory_bound",
    "placeable",
]

DEFAULTS: dict[str, float] = {
    "grow_busy": 0.85,
    "shrink_busy": 0.6,
    "grow_depth": 2,
    "grow_after_s": 3.0,
    "shrink_after_s": 30.0,
    "cooldown_s": 10.0,
    "grow_factor": 1.5,
}
_EPS = 1e-9


@dataclass(frozen=True)
class Resize:
    """Change the pool from ``old`` to ``target`` finders; ``reason`` is the log line."""

    at: float  # the ``now`` of the observation that decided it
    old: int
    target: int
    reason: str  # e.g. "Q2 depth 120 and rising, finders 96 % busy: 4 → 6"

    @property
    def grow(self) -> bool:
        return self.target > self.old


@dataclass(frozen=True)
class CannotGrow:
    """Growth is wanted but impossible: the point where users need more nodes (said once)."""

    at: float
    size: int
    limit: Literal["max_finders", "cluster"]
    message: str


@dataclass
class _Sample:
    at: float
    depth: float
    busy: float


class PoolPolicy:
    """Decides the finder pool's size from observations; see the module docstring."""

    def __init__(
        self,
        min_finders: int,
        max_finders: int,
        *,
        grow_busy: float = DEFAULTS["grow_busy"],
        shrink_busy: float = DEFAULTS["shrink_busy"],
        grow_depth: float = DEFAULTS["grow_depth"],
        grow_after_s: float = DEFAULTS["grow_after_s"],
        shrink_after_s: float = DEFAULTS["shrink_after_s"],
        cooldown_s: float = DEFAULTS["cooldown_s"],
        grow_factor: float = DEFAULTS["grow_factor"],
    ) -> None:
        if not 1 <= min_finders <= max_finders:
            raise ValueError(
                f"need 1 <= min_finders <= max_finders, got {min_finders}, {max_finders}"
            )
        if not 0 <= shrink_busy < grow_busy <= 1:
            raise ValueError(
                f"need 0 <= shrink_busy < grow_busy <= 1, got {shrink_busy}, {grow_busy}"
            )
        if grow_factor < 1 or shrink_busy * grow_factor > 1 + _EPS:
            raise ValueError(
                f"need grow_factor >= 1 and shrink_busy * grow_factor <= 1, got {grow_factor}"
                f" and {shrink_busy}"
            )
        if grow_depth < 1 or min(grow_after_s, shrink_after_s, cooldown_s) < 0:
            raise ValueError("need grow_depth >= 1 and non-negative windows and cool-down")
        self.min_finders = min_finders
        self.max_finders = max_finders
        self.grow_busy = grow_busy
        self.shrink_busy = shrink_busy
        self.grow_depth = grow_depth
        self.grow_after_s = grow_after_s
        self.shrink_after_s = shrink_after_s
        self.cooldown_s = cooldown_s
        self.grow_factor = grow_factor
        self.history: list[Resize] = []  # every change, in order (stats, report, plot)
        self.blocked: CannotGrow | None = None  # the current cannot-grow episode (health)
        self._last_change: float | None = None
        self._pressure: deque[_Sample] = deque()  # unbroken run of backlog + busy samples
        self._idle_since: float | None = None  # unbroken run of idle samples
        self._calm_since: float | None = (
            None  # no backlog with busy finders since (ends an episode)
        )

    @classmethod
    def from_config(cls, config: Config) -> PoolPolicy | None:
        """The policy of ``processing.min_finders/max_finders`` and ``[autoscale]``; None for
        a fixed pool (neither bound set)."""
        p, a = config.processing, config.autoscale
        if p.min_finders is None or p.max_finders is None:
            return None
        return cls(
            p.min_finders,
            p.max_finders,
            grow_busy=a.grow_busy,
            shrink_busy=a.shrink_busy,
            grow_depth=a.grow_depth,
            grow_after_s=a.grow_after_s,
            shrink_after_s=a.shrink_after_s,
            cooldown_s=a.cooldown_s,
            grow_factor=a.grow_factor,
        )

    # ------------------------------------------------------------------ observing

    def observe(
        self,
        now: float,
        q2_depth: float | None,
        busy_fraction: float | None,
        pool_size: int,
        can_place: int,
    ) -> Resize | CannotGrow | None:
        """One health tick. Returns a Resize to act on, a CannotGrow to log, or None.

        ``now``: the caller's monotonic seconds, never decreasing. ``q2_depth``: batches in Q2
        (all shards). ``busy_fraction``: the finders' mean busy fraction over the last few
        seconds (0..1). None for either: not known this tick, and the windows start over.
        ``pool_size``: finders that take work (starting ones included, retiring ones not).
        ``can_place``: how many more finders the cluster could place now (>= 0).

        Invariants: a Resize's target lies in [min_finders, max_finders], is at most
        ``pool_size + can_place`` when it grows, and no two Resizes are within ``cooldown_s``.
        """
        can_place = max(0, int(can_place))
        if q2_depth is None or busy_fraction is None:
            self._forget()
            return None
        busy = min(1.0, max(0.0, float(busy_fraction)))
        sample = _Sample(now, float(q2_depth), busy)
        self._record(sample, pool_size)
        cooling = self._last_change is not None and now - self._last_change < self.cooldown_s - _EPS

        if pool_size > self.max_finders:
            why = f"above processing.max_finders = {self.max_finders}"
            return None if cooling else self._change(now, pool_size, self.max_finders, why)
        if pool_size < self.min_finders:
            if pool_size + can_place < self.min_finders:
                return self._cannot(
                    now,
                    pool_size,
                    "cluster",
                    f"pool {pool_size} is below processing.min_finders = {self.min_finders}",
                )
            why = f"below processing.min_finders = {self.min_finders}"
            return None if cooling else self._change(now, pool_size, self.min_finders, why)
        if cooling:
            return None

        pressure = self._why_grow(now)
        if pressure is not None:
            want = max(pool_size + 1, math.ceil(pool_size * self.grow_factor - _EPS))
            target = min(want, self.max_finders, pool_size + can_place)
            if target <= pool_size:
                limit = "max_finders" if pool_size >= self.max_finders else "cluster"
                return self._cannot(now, pool_size, limit, pressure)
            note = ""
            if target < min(want, self.max_finders):
                more = "finder" if can_place == 1 else "finders"
                note = f" (the cluster can place only {can_place} more {more})"
            elif target == self.max_finders and want > target:
                note = f" (processing.max_finders = {self.max_finders})"
            return self._change(now, pool_size, target, pressure, note)

        calm = self._calm_since
        if (
            self.blocked is not None
            and calm is not None
            and now - calm >= self.shrink_after_s - _EPS
        ):
            self.blocked = None  # the episode is over; a new one is said again
        if (
            pool_size > self.min_finders
            and self._idle_since is not None
            and now - self._idle_since >= self.shrink_after_s - _EPS
        ):
            why = f"Q2 empty for {now - self._idle_since:.0f} s, finders {_pct(busy)} busy"
            return self._change(now, pool_size, pool_size - 1, why)
        return None

    def snapshot(self) -> dict[str, Any]:
        """Plain values for stats / status.json / the report."""
        last = self.history[-1] if self.history else None
        return {
            "min_finders": self.min_finders,
            "max_finders": self.max_finders,
            "resizes": len(self.history),
            "last_resize": last.reason if last else None,
            "cannot_grow": self.blocked.message if self.blocked else None,
        }

    # ------------------------------------------------------------------ internals

    def _record(self, s: _Sample, pool_size: int) -> None:
        if s.depth >= 1 and s.busy >= self.grow_busy:
            self._calm_since = None
            self._pressure.append(s)
            # keep one sample at or before the window's start: it anchors "rising"
            while len(self._pressure) > 1 and self._pressure[1].at <= s.at - self.grow_after_s:
                self._pressure.popleft()
        else:
            self._pressure.clear()
            if self._calm_since is None:
                self._calm_since = s.at
        projected = s.busy * pool_size / (pool_size - 1) if pool_size > 1 else math.inf
        if s.depth <= 0 and projected <= self.shrink_busy + _EPS:
            if self._idle_since is None:
                self._idle_since = s.at
        else:
            self._idle_since = None

    def _why_grow(self, now: float) -> str | None:
        """The reason to grow ("Q2 depth 12 and rising, finders 96 % busy"), else None."""
        if not self._pressure or now - self._pressure[0].at < self.grow_after_s - _EPS:
            return None
        first, last = self._pressure[0], self._pressure[-1]
        busy = f"finders {_pct(last.busy)} busy"
        if last.depth > first.depth:
            return f"Q2 depth {_num(last.depth)} and rising, {busy}"
        if min(s.depth for s in self._pressure) >= self.grow_depth:
            span = last.at - first.at
            return f"Q2 depth {_num(last.depth)}, high for {span:.0f} s, {busy}"
        return None

    def _change(self, now: float, old: int, target: int, why: str, note: str = "") -> Resize:
        resize = Resize(now, old, target, f"{why}: {old} → {target}{note}")
        self.history.append(resize)
        self._last_change = now
        self.blocked = None
        self._forget()
        return resize

    def _cannot(self, now: float, size: int, limit: str, why: str) -> CannotGrow | None:
        if self.blocked is not None:
            return None  # said once per episode
        if limit == "max_finders":
            message = (
                f"{why}, but the pool cannot grow: it is at processing.max_finders = "
                f"{self.max_finders}; raise max_finders if the cluster has room, else add nodes."
            )
        else:
            message = (
                f"{why}, but the pool cannot grow: the Ray cluster can place no more finders "
                f"({size} of processing.max_finders = {self.max_finders}); add nodes, or lower "
                "processing.finder_num_cpus or the [placement] settings."
            )
        self.blocked = CannotGrow(now, size, limit, message)  # type: ignore[arg-type]
        return self.blocked

    def _forget(self) -> None:
        self._pressure.clear()
        self._idle_since = None


# --------------------------------------------------------------------------- busy fraction


@dataclass
class BusyMeter:
    """The finders' mean busy fraction over the last ``span_s``, from cumulative busy seconds.

    Feed it ``{finder key: busy seconds since that finder started}`` each tick. A key must
    name one actor (its actor id, not its slot): a replaced finder starts from zero under a
    new key. A finder whose counter went backwards is left out.
    """

    span_s: float = 5.0
    _readings: deque[tuple[float, dict[Hashable, float]]] = field(default_factory=deque)

    def update(self, now: float, busy_seconds: Mapping[Hashable, float]) -> float | None:
        """The mean busy fraction since the oldest reading within ``span_s``; None at first."""
        self._readings.append((now, dict(busy_seconds)))
        while len(self._readings) > 2 and self._readings[1][0] <= now - self.span_s:
            self._readings.popleft()
        then, old = self._readings[0]
        dt = now - then
        if dt <= 0:
            return None
        fractions = [
            min(1.0, (busy - old[key]) / dt)
            for key, busy in busy_seconds.items()
            if key in old and busy >= old[key]
        ]
        return sum(fractions) / len(fractions) if fractions else None


# --------------------------------------------------------------------------- placement


def placeable(
    free_per_node: Iterable[Mapping[str, float]], need: Mapping[str, float], cap: int
) -> int:
    """How many more actors needing ``need`` (e.g. ``{"CPU": 1.0, "cxi_cpu": 1}``) fit in the
    free resources of the nodes they may use (one mapping per node), at most ``cap``.

    Per node, not from the cluster's total: two half-free nodes do not hold a 1-CPU finder.
    An actor that needs nothing fits anywhere (``cap``).
    """
    need = {r: float(a) for r, a in need.items() if a > 0}
    if not need:
        return max(0, cap)
    total = 0
    for free in free_per_node:
        total += min(math.floor(free.get(r, 0.0) / a + 1e-6) for r, a in need.items())
        if total >= cap:
            return max(0, cap)
    return total


# --------------------------------------------------------------------------- credits


def credits_for(
    pool_size: int, finder_inbox: int, num_writers: int, events_per_file: int, batch_size: int
) -> int:
    """Credits that keep every finder and writer fed: ``pool_size x (finder_inbox + 1)`` (a
    batch in work plus a full inbox per finder) ``+ num_writers x ceil(events_per_file /
    batch_size)`` (the batches a writer parks until a file is full). The defaults (2 finders,
    inbox 2, 1 writer, 16 events per file, 8-event batches) give 8, the default
    ``processing.credits``. Use ``max(processing.credits, credits_for(...))``."""
    if min(pool_size, num_writers, events_per_file, batch_size) < 1 or finder_inbox < 0:
        raise ValueError("credits_for needs positive counts and a non-negative inbox")
    per_file = math.ceil(events_per_file / batch_size)
    return pool_size * (finder_inbox + 1) + num_writers * per_file


def expected_batch_size(config: Config) -> int:
    """Events per batch before any batch is seen: the replay's, else events_per_file (one
    batch per file, the least a file can need)."""
    return config.replay.batch_size if config.replay.enabled else config.output.events_per_file


def credits_shortfall(config: Config) -> str | None:
    """The sentence for a fixed pool whose credits leave some actor waiting, else None.

    A writer needs the batches of one file; before any batch is seen only the replay knows
    their size, else one batch per file is assumed (the least a file can need)."""
    p, o = config.processing, config.output
    batch = expected_batch_size(config)
    need = credits_for(p.num_finders, p.finder_inbox, o.num_writers, o.events_per_file, batch)
    if p.credits >= need:
        return None
    return (
        f"processing.credits = {p.credits} cannot keep every actor busy: {p.num_finders} "
        f"finders x (finder_inbox {p.finder_inbox} + 1) + {o.num_writers} writers x "
        f"{-(-o.events_per_file // batch)} batches per file need {need}; raise "
        "processing.credits"
    )


def memory_bound(credits: int, batch_bytes: float) -> str:
    """The one-line bound on the batches in flight: "credits × batch = 26 × 268.4 MB = 6.98 GB"."""
    mb = batch_bytes / 1e6
    gb = credits * batch_bytes / 1e9
    return f"credits × batch = {credits} × {mb:.1f} MB = {gb:.2f} GB"


def _pct(fraction: float) -> str:
    return f"{fraction * 100:.0f} %"


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:.1f}"
