"""The adaptive finder pool: acts on `core.autoscale.PoolPolicy` at each health tick.

Growing starts new finders in the background and gives them slots once they answer, then
raises the credits so they are never idle for want of one. Shrinking retires the least busy
finder: it gets no new delivery, and leaves only once its last call has returned, so nothing
is sent again because a finder was retired. The policy decides; this unit only acts.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import ray

from cxi_async.actors.crew import Crew
from cxi_async.actors.finder_slots import FinderSlots
from cxi_async.config import Config
from cxi_async.core.autoscale import (
    BusyMeter,
    CannotGrow,
    PoolPolicy,
    Resize,
    credits_for,
    expected_batch_size,
)
from cxi_async.core.autoscale import placeable as fits
from cxi_async.core.ledger import Ledger

log = logging.getLogger(__name__)


class Autoscaler:
    def __init__(
        self, config: Config, policy: PoolPolicy, crew: Crew, slots: FinderSlots, ledger: Ledger
    ) -> None:
        self.config = config
        self.policy = policy
        self.crew = crew
        self.slots = slots
        self.ledger = ledger
        self.meter = BusyMeter()
        self.started = time.monotonic()
        self.trace: list[tuple[float, int]] = [(0.0, slots.active)]  # (seconds, pool size)
        self.batch_events = 0  # events per batch, once one was seen (credits per file)

    @property
    def size(self) -> int:
        """Finders that take work or soon will: active and starting, not retiring."""
        return self.slots.active + self.slots.starting

    async def tick(self, depth: int | None, finders: list[dict], group: Any) -> None:
        """One health tick: observe, then act on what the policy says."""
        now = time.monotonic()
        self._remove_idle_retired()
        busy = self.meter.update(
            now,
            {
                f["actor_id"]: f["busy_seconds"]
                for f in finders
                if "actor_id" in f and self.slots.is_active(f["index"])
            },
        )
        decision = self.policy.observe(now, depth, busy, self.size, self._can_place())
        if isinstance(decision, CannotGrow):
            log.warning("%s", decision.message)
        elif isinstance(decision, Resize):
            log.info("finder pool: %s", decision.reason)
            if decision.grow:
                for _ in range(decision.target - self.size):
                    index = self.slots.add_starting()
                    self.crew.start_finder(index)
                    group.start_soon(self._bring_up, index)
            else:
                for _ in range(self.size - decision.target):
                    self.slots.retire(self.slots.least_busy_active())
            self.follow_credits()
            self.trace.append((now - self.started, self.size))

    def note_batch(self, num_events: int) -> None:
        """The first batch tells how many batches a file needs: the credits follow."""
        if num_events > 0 and not self.batch_events:
            self.batch_events = num_events
            self.follow_credits()

    def stats(self) -> dict:
        return {
            "pool_size": self.slots.active,
            "pool": {**self.policy.snapshot(), "starting": self.slots.starting},
            "pool_trace": list(self.trace),
        }

    async def _bring_up(self, index: int) -> None:
        """A new finder gets its slots once it answers; one that cannot start is given up."""
        try:
            await self.crew.placed(index)
        except Exception as exc:
            log.warning("finder %d could not start (%s); the pool stays smaller", index, exc)
            self.crew.remove_finder(index)
            self.slots.gone(index)
            self.follow_credits()
            return
        self.slots.activate(index)

    def _remove_idle_retired(self) -> None:
        for index in self.slots.idle_retired():
            self.crew.remove_finder(index)
            self.slots.gone(index)

    def follow_credits(self) -> None:
        """credits = max(processing.credits, what the pool needs to stay busy)."""
        p, o = self.config.processing, self.config.output
        batch = self.batch_events or expected_batch_size(self.config)
        need = credits_for(self.size, p.finder_inbox, o.num_writers, o.events_per_file, batch)
        self.ledger.credits = max(p.credits, need)

    def _can_place(self) -> int:
        """More finders the cluster can place now, per node (minus those still starting)."""
        p = self.config.processing
        need = {"CPU": p.finder_num_cpus, **self.config.placement.finder_resources}
        cap = self.policy.max_finders - self.size
        return max(0, fits(_free_per_node(), need, cap) - self.slots.starting)


def _free_per_node() -> list[dict[str, float]]:
    """Free resources of each alive node; the cluster's total as one node if Ray's per-node
    view is not available (it over-counts fragmented nodes)."""
    try:
        from ray._private.state import available_resources_per_node

        return list(available_resources_per_node().values())
    except Exception:
        return [ray.available_resources()]
