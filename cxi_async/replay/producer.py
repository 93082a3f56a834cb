"""The built-in synthetic Q2 producer (demo, tests, bench).

A Ray actor that behaves like peaknet-pipeline-ray's output side: it creates-or-connects the
shards `<queue>_shard_<i>` in the namespace, `ray.put`s each batch's image (so it owns the
image refs, as the producer's actors do), and puts `PipelineOutput`-shaped items round-robin,
retrying while every shard is full. Batches come from `cxi_async.replay.synthetic`, deterministic
in (seed, index), so a test can recompute the ground truth of every batch it sees.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace
from typing import Any

import ray

from cxi_async.actors.common import setup_actor_logging
from cxi_async.actors.q2_shard import ZERO_COPY_ENV, connect_shards
from cxi_async.config import Config
from cxi_async.replay.pacing import Pacer
from cxi_async.replay.synthetic import SyntheticBatch, SyntheticSpec, make_batch

log = logging.getLogger(__name__)

FULL_RETRY_S = 0.005


def replay_spec(config: Config) -> SyntheticSpec:
    spec = SyntheticSpec.from_replay(config.replay, config.peak_finding.min_num_peak)
    # pad as the consumer expects; the lattice projects through the geometry
    return replace(spec, pad_style=config.queue.pad_style, geom_file=config.geometry.geom_file)


def replay_batch(config: Config, index: int) -> SyntheticBatch:
    """Batch `index` exactly as the replay producer sends it (ground truth for tests)."""
    spec = replay_spec(config)
    unique = config.replay.unique_batches
    source = make_batch(spec, index % unique if unique else index)
    bid = _batch_id_for(config, index)
    if source.batch_id == bid:
        return source
    return replace(source, batch_id=bid, truth=[replace(t, batch_id=bid) for t in source.truth])


def _batch_id_for(config: Config, index: int) -> str:
    """The id of batch ``index``: restarting like a new producer job's, if asked; in the
    producer's own form (``producer_0_batch_<n>``) for the real sources' styles."""
    rp = config.replay
    n = index % rp.restart_batch_ids_every if rp.restart_batch_ids_every else index
    if rp.metadata_style == "packed":
        return f"synthetic-{rp.seed}-{n:06d}"
    return f"producer_0_batch_{n}"


class ReplayProducer:
    """Puts `replay.num_batches` synthetic batches into Q2, then reports what it put."""

    def __init__(self, config: Config, num_shards: int) -> None:
        setup_actor_logging(config)
        self.config = config
        self.num_shards = num_shards
        self.put_count = 0
        self.put_seconds = 0.0
        self.generate_seconds = 0.0
        self.done = False
        self.cache: dict[int, tuple[SyntheticBatch, Any, Any]] = {}

    async def run(self) -> dict:
        cfg = self.config
        rp = cfg.replay
        shards = await asyncio.to_thread(
            connect_shards,
            cfg.queue.name,
            cfg.ray.namespace,
            self.num_shards,
            cfg.queue.maxsize_per_shard,
            zero_copy=rp.zero_copy,
        )
        turn = 0
        pacer = Pacer(rp.batch_size, rp.producer_rate_hz, rp.rate_steps, time.monotonic())
        for index in range(rp.num_batches):
            item = await self._item(index)
            if pacer.paced:
                await asyncio.sleep(max(0.0, pacer.due(time.monotonic()) - time.monotonic()))
            t0 = time.perf_counter()
            turn = await self._put(shards, item, turn)
            del item
            self.put_seconds += time.perf_counter() - t0
            self.put_count += 1
        self.done = True
        log.info("replay put %d batches into %s", self.put_count, cfg.queue.name)
        return await self.summary()

    async def summary(self) -> dict:
        return {
            "batches_put": self.put_count,
            "done": self.done,
            "put_seconds": self.put_seconds,
            "generate_seconds": self.generate_seconds,
        }

    async def _item(self, index: int) -> Any:
        """The item for batch `index`; a reused source keeps its image and logits (made once)."""
        unique = self.config.replay.unique_batches
        key = index % unique if unique else index
        parts = self.cache.get(key)
        if parts is None:
            t0 = time.perf_counter()
            batch = await asyncio.to_thread(make_batch, replay_spec(self.config), key)
            image_ref = None if batch.image is None else ray.put(batch.image)
            parts = (batch, image_ref, self._predictions(batch))
            self.generate_seconds += time.perf_counter() - t0
            if unique:
                self.cache[key] = parts
        batch, image_ref, predictions = parts
        item = batch.to_item(image_ref=image_ref, inline=False)
        item.batch_id = _batch_id_for(self.config, index)
        if "batch_id" in item.metadata:  # the socket producer's copy of it
            item.metadata["batch_id"] = item.batch_id
        if self.config.replay.transport == "ref":
            item.predictions_ref = predictions
        else:
            item.predictions = predictions
        return item

    def _predictions(self, batch: SyntheticBatch) -> Any:
        """The inline tensor in the replay dtype, or a ref to the logits array."""
        logits = batch.predictions_tensor()
        if self.config.replay.transport == "inline":
            return logits
        return ray.put(logits.numpy() if str(logits.dtype) != "torch.bfloat16" else logits)

    async def _put(self, shards: list[Any], item: Any, turn: int) -> int:
        """Round-robin like the producer's ShardedQueueManager; wait while all are full."""
        n = len(shards)
        delay = FULL_RETRY_S
        while True:
            for k in range(n):
                i = (turn + k) % n
                # Ask first: a refused put would have serialised the whole item for nothing.
                if not await shards[i].is_full.remote() and await shards[i].put.remote(item):
                    return i + 1
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.1)


def new_replay_producer(config: Config, num_shards: int) -> Any:
    """The producer actor, with zero-copy tensor serialisation when replay.zero_copy is set."""
    env = {"env_vars": ZERO_COPY_ENV} if config.replay.zero_copy else {}
    return (
        ray.remote(ReplayProducer).options(num_cpus=0, runtime_env=env).remote(config, num_shards)
    )


def truth_for(config: Config, batch_ids: set[str] | None = None) -> dict[str, SyntheticBatch]:
    """Ground truth of every replayed batch by batch_id (tests, bench); with restarting ids
    (replay.restart_batch_ids_every) use truth_by_index."""
    out = {}
    for index in range(config.replay.num_batches):
        batch = replay_batch(config, index)
        if batch_ids is None or batch.batch_id in batch_ids:
            out[batch.batch_id] = batch
    return out


def truth_by_index(config: Config) -> list[SyntheticBatch]:
    """Ground truth of every replayed batch in put order, whatever their batch ids."""
    return [replay_batch(config, index) for index in range(config.replay.num_batches)]
