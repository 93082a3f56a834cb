"""Which finder takes the next delivery: the least busy active one with a free slot.

Each finder has `slots` calls in flight at most (`processing.finder_inbox + 1`: one computing,
the others resolving their items meanwhile). Waiting here for a slot is how the finders'
pace reaches the coordinator, within the credits.

A finder's index goes through ``starting`` (made, not answering yet) → ``active`` (takes
work) → ``retiring`` (the pool shrank: no new work; it may go once idle) → ``gone``. A gone
index is reused by the next finder the pool starts.
"""

from __future__ import annotations

from typing import Literal

from cxi_async.actors.common import Wakeup

State = Literal["starting", "active", "retiring", "gone"]


class FinderSlots:
    def __init__(self, num_finders: int, slots: int) -> None:
        self.slots = slots
        self.busy = [0] * num_finders
        self.state: list[State] = ["active"] * num_finders
        self.freed = Wakeup()

    async def acquire(self) -> int:
        """The index of the least busy active finder with a free slot, once there is one."""
        while True:
            freed = self.freed.event  # taken before the check: a release after it sets this one
            free = [
                i for i, n in enumerate(self.busy) if n < self.slots and self.state[i] == "active"
            ]
            if free:
                index = min(free, key=lambda i: self.busy[i])
                self.busy[index] += 1
                return index
            await freed.wait()

    def release(self, index: int) -> None:
        self.busy[index] -= 1
        self.freed.notify()

    def add_starting(self) -> int:
        """An index for a new finder (a gone one first), not given work until `activate`."""
        if "gone" in self.state:
            index = self.state.index("gone")
        else:
            index = len(self.state)
            self.state.append("gone")
            self.busy.append(0)
        self.state[index] = "starting"
        return index

    def activate(self, index: int) -> None:
        self.state[index] = "active"
        self.freed.notify()

    def retire(self, index: int) -> None:
        self.state[index] = "retiring"

    def gone(self, index: int) -> None:
        self.state[index] = "gone"

    def is_active(self, index: int) -> bool:
        return 0 <= index < len(self.state) and self.state[index] == "active"

    def is_retiring(self, index: int) -> bool:
        return self.state[index] == "retiring"

    def least_busy_active(self) -> int:
        active = [i for i, s in enumerate(self.state) if s == "active"]
        return min(active, key=lambda i: (self.busy[i], -i))

    def idle_retired(self) -> list[int]:
        """Retiring finders with nothing in flight: they may go."""
        return [i for i, s in enumerate(self.state) if s == "retiring" and self.busy[i] == 0]

    @property
    def active(self) -> int:
        return self.state.count("active")

    @property
    def starting(self) -> int:
        return self.state.count("starting")
