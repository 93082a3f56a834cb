"""The adaptive finder pool with a real local Ray: it follows a stepped load, loses nothing,
and says when it cannot grow."""

from __future__ import annotations

import asyncio

import pytest

from cxi_async.pipeline import Pipeline
from cxi_async.replay.producer import truth_for
from tests.conftest import check_against_truth, read_cxi_files
from tests.test_pipeline import assert_books_balance

pytestmark = pytest.mark.usefixtures("ray_session")

FAST_POLICY = (
    "autoscale.grow_after_s=1.0",
    "autoscale.cooldown_s=1.5",
    "autoscale.shrink_after_s=2.0",
)


async def _watch(pipeline: Pipeline) -> tuple[dict, list[dict]]:
    """Sample stats every 0.2 s until the pipeline stops; (final stats, samples)."""
    waiter = asyncio.ensure_future(pipeline.wait())
    samples = []
    while not waiter.done():
        samples.append(await pipeline.stats())
        await asyncio.wait({waiter}, timeout=0.2)
    return waiter.result(), samples


async def test_the_pool_grows_under_a_backlog_then_shrinks_and_loses_nothing(make_config):
    # 3 events per batch; 0.25 s of CPU per batch: one finder makes 4 batches/s. The producer
    # puts 20 batches/s for 3 s (a backlog), then one batch every 3 s for ~24 s (idle).
    config = make_config(
        *FAST_POLICY,
        "processing.num_finders=1",
        "processing.min_finders=1",
        "processing.max_finders=3",
        "debug.find_delay_s=0.25",
        "replay.producer_rate_hz=60",
        "replay.rate_steps=[[3.0, 1.0]]",
        "replay.num_batches=68",
        "queue.maxsize_per_shard=64",
    )
    pipeline = await Pipeline.start(config)
    final, samples = await _watch(pipeline)
    sizes = [size for _, size in final["pool_trace"]]
    assert all(1 <= s <= 3 for s in sizes), sizes
    peak = sizes.index(max(sizes))
    assert max(sizes) > 1, f"the pool never grew: {sizes}"
    assert sizes[-1] < max(sizes), f"the pool never shrank: {sizes}"
    assert sizes[: peak + 1] == sorted(sizes[: peak + 1]), "grew, then shrank, in that order"
    assert final["pool"]["resizes"] == len(sizes) - 1
    assert max(s["credits"] for s in samples) > 4, "the credits did not follow the pool"
    # nothing lost, nothing doubled across the resizes
    assert_books_balance(final)
    assert final["batches_taken"] == 68 and final["events_doubled"] == 0
    events = read_cxi_files(pipeline.output_dir)
    kept, _ = check_against_truth(events, truth_for(config), panel_height=32)
    assert len(events) == kept == final["events_written"]
    assert final["events_written"] + final["events_filtered"] == 68 * 3


@pytest.mark.slow  # long: the default set stays under 10 minutes on 2 cores
async def test_at_the_ceiling_the_pool_says_it_cannot_grow(make_config):
    # One finder takes a whole CPU of the test's 2-CPU Ray: there is no room for a second.
    config = make_config(
        *FAST_POLICY,
        "processing.num_finders=1",
        "processing.min_finders=1",
        "processing.max_finders=4",
        "processing.finder_num_cpus=1.0",
        "debug.find_delay_s=0.25",
        "replay.num_batches=40",
        "queue.maxsize_per_shard=64",
    )
    pipeline = await Pipeline.start(config)
    final, samples = await _watch(pipeline)
    said = [s["pool"]["cannot_grow"] for s in samples if s.get("pool", {}).get("cannot_grow")]
    assert said, "the pool never said it could not grow"
    assert "the Ray cluster can place no more finders" in said[0]
    assert {s["pool_size"] for s in samples} == {1}
    assert_books_balance(final)
    assert final["batches_taken"] == 40
