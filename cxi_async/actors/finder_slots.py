"""Which finder takes the next delivery: the least busy one with a free slot.

Each finder has `slots` calls in flight at most (`processing.finder_inbox + 1`: one computing,
the others resolving their items meanwhile). Waiting here for a slot is how the finders'
pace reaches the coordinator, within the credits. A finder can be retired: it gets no new
delivery and is reported idle once its last call has returned.
"""

from __future__ import annotations

import anyio


class FinderSlots:
    def __init__(self, num_finders: int, slots: int) -> None:
        self.slots = slots
        self.busy = [0] * num_finders
        self.retired: set[int] = set()
        self.freed = anyio.Event()

    async def acquire(self) -> int:
        """The index of the least busy finder with a free slot, once there is one."""
        while True:
            free = [i for i, n in enumerate(self.busy) if n < self.slots and i not in self.retired]
            if free:
                index = min(free, key=lambda i: self.busy[i])
                self.busy[index] += 1
                return index
            await self.freed.wait()
            self.freed = anyio.Event()

    def release(self, index: int) -> None:
        self.busy[index] -= 1
        self.freed.set()

    def add(self) -> int:
        """One more finder (or a retired one back): its index."""
        if self.retired:
            index = min(self.retired)
            self.retired.discard(index)
        else:
            index = len(self.busy)
            self.busy.append(0)
        self.freed.set()
        return index

    def retire(self, index: int) -> None:
        self.retired.add(index)

    def idle_retired(self) -> list[int]:
        """Retired finders with nothing in flight: they may go."""
        return [i for i in sorted(self.retired) if self.busy[i] == 0]

    @property
    def active(self) -> int:
        return len(self.busy) - len(self.retired)

    @property
    def in_flight(self) -> int:
        return sum(self.busy)
