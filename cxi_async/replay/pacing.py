"""When the replay producer puts its next batch: a constant rate or a stepped load.

``replay.producer_rate_hz`` is the constant form (events/s; None: as fast as Q2 takes them);
``replay.rate_steps = [[seconds, events/s], ...]`` changes the rate at those times after the
producer's start (before the first step: producer_rate_hz). Pure: the caller's clock comes in.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence

__all__ = ["Pacer", "rate_at"]


def rate_at(
    t: float, base_rate: float | None, steps: Sequence[tuple[float, float]] = ()
) -> float | None:
    """Events/s at ``t`` seconds after the start: the last step at or before ``t``, else
    ``base_rate`` (None: unpaced). ``steps`` are (seconds, events/s) in increasing time."""
    k = bisect.bisect_right([s for s, _ in steps], t)
    return steps[k - 1][1] if k else base_rate


class Pacer:
    """The put schedule: batch ``k`` is due once ``batch_size`` events' worth of time (at the
    rate of each stretch it spans) has passed since batch ``k - 1`` was due; the first is due
    at the start. A producer that falls behind catches up (the slots do not move), as the
    constant rate always did; in an unpaced stretch every batch is due at once."""

    def __init__(
        self,
        batch_size: int,
        base_rate: float | None,
        steps: Sequence[tuple[float, float]],
        start: float,
    ) -> None:
        self.batch_size = batch_size
        self.base_rate = base_rate
        self.steps = [(float(s), float(r)) for s, r in steps]
        self.start = start
        self.next: float | None = start  # None: unpaced, the next slot is "now"

    @property
    def paced(self) -> bool:
        """False when no batch would ever wait (no rate and no steps)."""
        return self.base_rate is not None or bool(self.steps)

    def due(self, now: float) -> float:
        """When the next batch may be put (at or before ``now``: at once); call once a batch."""
        t = self.next if self.next is not None else now
        rate = rate_at(t - self.start, self.base_rate, self.steps)
        if rate is None:
            self.next = None
            return now
        self.next = self._after(t, float(self.batch_size))
        return t

    def _after(self, t: float, events: float) -> float:
        """The time at which ``events`` more events have been paced from ``t``."""
        while True:
            rate = rate_at(t - self.start, self.base_rate, self.steps)
            assert rate is not None  # only the stretch before the first step can be unpaced
            later = [self.start + s for s, _ in self.steps if self.start + s > t]
            boundary = later[0] if later else math.inf
            if t + events / rate <= boundary:
                return t + events / rate
            events -= rate * (boundary - t)
            t = boundary
