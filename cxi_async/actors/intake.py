"""Intake: take from Q2 while the coordinator holds credits, and which shard to take from.

The coordinator owns the credits and the ledger; this unit owns the shards. It polls their
sizes all at once (one round trip per shard, together), serves the shards it knows hold
batches in turn without polling again until they are used up, backs off while Q2 is empty,
and reconnects by name to a shard that stopped answering while it drains the others. Each
take is one `get` whose ref goes unopened to a finder (`Coordinator.carry`); each empty poll
asks the idle rules (`core.idle`) whether to close the open files or stop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import anyio
import ray

from cxi_async.actors.common import awaited
from cxi_async.actors.q2_shard import (
    check_topology,
    connect_shards,
    find_shard_indices,
    wrong_namespace_hint,
)
from cxi_async.config import Config
from cxi_async.core.messages import Delivery

log = logging.getLogger(__name__)

SIZE_TIMEOUT_S = 5.0
RECONNECT_EVERY_S = 2.0
SHARD_SETTLE_S = 1.0  # with num_shards = "auto": how long the shard count must stay the same
FIRST_BACKOFF_S = 0.001


class Intake:
    """The shards of one Q2 and what is known of their sizes."""

    def __init__(self, config: Config, shards: list[Any]) -> None:
        self.config = config
        self.shards = shards
        self.sizes = [0] * len(shards)  # batches known to be there since the last poll
        self.turn = 0
        self.backoff = FIRST_BACKOFF_S
        self.depth = 0  # Q2 depth at the last poll that every shard answered
        self.dead: dict[int, float] = {}  # shard -> last reconnect attempt

    async def take_while_credits(self, c: Any) -> None:
        """Take a batch whenever the coordinator `c` has a free credit, until it stops."""
        limit = self.config.stop.max_batches
        with anyio.CancelScope() as c.intake_scope:
            while not c.stopping:
                while c.ledger.free_credits <= 0:
                    await c.credit_freed.event.wait()
                shard = await self.next_shard(lambda polled_at: self._empty_poll(c, polled_at))
                if c.ledger.free_credits <= 0:  # the pool shrank (and its credits) meanwhile
                    continue
                delivery_id = c.ledger.take(shard)  # no await from here to start_soon
                c.idle.taken()
                c.group.start_soon(c.router.carry, Delivery(delivery_id, [self.get(shard)], shard))
                if limit is not None and c.ledger.batches_taken >= limit:
                    c.stop_later(f"took stop.max_batches = {limit} batches")

    @staticmethod
    def _empty_poll(c: Any, polled_at: float) -> None:
        taken = c.ledger.batches_taken
        if c.publisher.no_data_due(taken):
            c.group.start_soon(c.publisher.warn_no_data, taken)
        ledger = c.ledger
        answer = c.idle.empty_poll(
            polled_at, time.monotonic(), ledger.in_flight, taken, ledger.all_at_writers
        )
        if answer.close_open_files and c.crew is not None:
            for writer in c.crew.writers:
                writer.close_open_file.remote()
        if answer.stop is not None:
            c.stop_later(answer.stop)

    @classmethod
    async def connect(cls, config: Config) -> Intake:
        """Find (queue.num_shards = "auto") and connect to the shards; creates missing ones."""
        q = config.queue
        num_shards = await asyncio.to_thread(_resolve_num_shards, config)
        check_topology(q.name, config.ray.namespace, num_shards)
        # Shards cxi_async creates serialise tensors zero-copy, except in a replay drill
        # that asks for the slow path (replay.zero_copy = false).
        shards = await asyncio.to_thread(
            connect_shards,
            q.name,
            config.ray.namespace,
            num_shards,
            q.maxsize_per_shard,
            config.replay.zero_copy or not config.replay.enabled,
        )
        return cls(config, shards)

    async def next_shard(self, on_empty: Callable[[float], None]) -> int:
        """A shard that holds a batch; while none does, poll with backoff and report each
        empty poll (its start time) to `on_empty`."""
        n = len(self.shards)
        while True:
            order = [(self.turn + k) % n for k in range(n)]
            shard = next((i for i in order if self.sizes[i] > 0), None)
            if shard is not None:
                self.sizes[shard] -= 1
                self.turn = shard + 1
                self.backoff = FIRST_BACKOFF_S
                return shard
            polled_at = time.monotonic()
            self.sizes = await self.poll()
            if any(self.sizes):
                continue
            if not self.dead:  # a shard that did not answer is not known empty
                on_empty(polled_at)
            await asyncio.sleep(self.backoff)
            self.backoff = min(self.backoff * 2, self.config.queue.poll_interval_s)

    def get(self, shard: int) -> Any:
        """The ref of the shard's `get`: the coordinator forwards it unopened to a finder."""
        return self.shards[shard].get.remote()

    async def poll(self) -> list[int]:
        """Every shard's size, asked together; a shard that fails counts as 0."""
        replies = await asyncio.gather(
            *(asyncio.wait_for(awaited(s.size.remote()), SIZE_TIMEOUT_S) for s in self.shards),
            return_exceptions=True,
        )
        sizes = []
        for i, reply in enumerate(replies):
            if isinstance(reply, BaseException):
                await self._failed(i, reply)
                sizes.append(0)
                continue
            if i in self.dead:
                log.info("Q2 shard %d answers again", i)
                del self.dead[i]
            sizes.append(int(reply))
        if not self.dead:
            self.depth = sum(sizes)
        return sizes

    async def _failed(self, index: int, exc: BaseException) -> None:
        """Log once, then try to reconnect by name every few seconds; others go on meanwhile."""
        now = time.monotonic()
        if index not in self.dead:
            log.warning(
                "Q2 shard %d does not answer (%s); draining the others", index, type(exc).__name__
            )
            self.dead[index] = 0.0
        if now - self.dead[index] < RECONNECT_EVERY_S:
            return
        self.dead[index] = now
        name = f"{self.config.queue.name}_shard_{index}"
        try:
            self.shards[index] = await asyncio.to_thread(
                ray.get_actor, name, self.config.ray.namespace
            )
            log.info("reconnected to Q2 shard %s", name)
        except ValueError:
            pass


def _resolve_num_shards(config: Config) -> int:
    q = config.queue
    if q.num_shards != "auto":
        return int(q.num_shards)
    deadline = time.monotonic() + q.wait_for_producer_s
    while True:
        found = find_shard_indices(q.name, config.ray.namespace)
        if found:
            # The producer creates its shards one by one: take the count once it is stable.
            time.sleep(SHARD_SETTLE_S)
            if find_shard_indices(q.name, config.ray.namespace) == found:
                return len(found)
            continue
        if time.monotonic() >= deadline:
            hint = wrong_namespace_hint(q.name, config.ray.namespace)
            if hint:
                raise RuntimeError(hint)
            waited = f" after waiting {q.wait_for_producer_s:g} s" if q.wait_for_producer_s else ""
            raise RuntimeError(
                f"queue.num_shards = \"auto\" but no shard of Q2 '{q.name}' exists in "
                f"namespace '{config.ray.namespace}'{waited}: start the producer first, "
                "set queue.wait_for_producer_s, or give queue.num_shards."
            )
        time.sleep(0.5)
