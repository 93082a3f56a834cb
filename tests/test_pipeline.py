"""End to end with a real local Ray: synthetic Q2 in, CXI files out, checked against truth."""

from __future__ import annotations

import asyncio

import h5py
import numpy as np
import psutil
import pytest
import ray

from cxi_async.actors.q2_shard import connect_shards
from cxi_async.pipeline import Pipeline, PipelineError
from cxi_async.replay.producer import new_replay_producer, truth_for
from tests.conftest import check_against_truth, read_cxi_files

pytestmark = pytest.mark.usefixtures("ray_session")


def assert_books_balance(stats: dict) -> None:
    """Nothing lost, nothing doubled: every batch taken is done, abandoned or in flight."""
    assert stats["batches_taken"] == (
        stats["batches_done"] + stats["batches_abandoned"] + stats["batches_in_flight"]
    )
    assert stats["events_seen"] == (
        stats["events_written"]
        + stats["events_filtered"]
        + stats["events_rejected"]
        + stats["events_abandoned"]
        + stats["events_pending"]
    )


async def test_runs_from_metadata_get_directories_of_their_own(make_config):
    """metadata["run"] changes mid-batch: every file holds one run, in <output_dir>/r<run>/."""
    config = make_config("replay.events_per_run=5", "output.run_from_metadata='run'")
    pipeline = await Pipeline.start(config)
    final = await pipeline.wait()
    out = pipeline.output_dir
    assert not list(out.glob("*.cxi"))
    events = read_cxi_files(out, "*/*.cxi")
    truth = truth_for(config)
    kept, _ = check_against_truth(events, truth, panel_height=32)
    assert len(events) == kept == final["events_written"]
    assert_books_balance(final)
    runs = set()
    for t in (t for b in truth.values() for t in b.truth if t.kept):
        path = events[(t.batch_id, t.event_index)]["file"]
        label = f"r{t.run:04d}"
        assert path.parent == out / label
        assert path.name.startswith(f"{config.output.file_prefix}_{label}_")
        runs.add(label)
    assert len(runs) > 1
    assert {p.name for p in out.iterdir() if p.is_dir()} == runs
    files = sorted(out.glob("*/*.cxi"))
    for path in files:
        with h5py.File(path, "r") as f:
            assert f.attrs["run"] == path.parent.name
    assert all((out / run / "peaknet.geom").is_file() for run in runs)
    assert sorted((out / "files.lst").read_text().split()) == [str(p.resolve()) for p in files]
    for run in runs:  # each run's own lists, for indexamajig -i <run>/events.lst
        mine = [str(p.resolve()) for p in files if p.parent.name == run]
        assert sorted((out / run / "files.lst").read_text().split()) == mine
        lines = (out / run / "events.lst").read_text().splitlines()
        assert len(lines) == sum(1 for e in events.values() if e["file"].parent.name == run)


@pytest.mark.slow  # two pipeline runs, ~40 s; restarts are in the default set via test_cli
async def test_a_restart_continues_every_run_directory(make_config):
    """Same output_dir, runs from metadata: new sequence numbers and lists in every run."""
    runs = ("output.run_from_metadata='run'", "replay.events_per_run=5")
    first_config = make_config(*runs)
    pipeline = await Pipeline.start(first_config)
    await pipeline.wait()
    out = pipeline.output_dir
    before = {p: p.stat().st_mtime_ns for p in out.glob("*/*.cxi")}
    leftover = out / "r0001" / "peaknet_r0001_000050.cxi.inprogress"
    leftover.write_bytes(b"half a file")

    second_config = make_config(*runs, "replay.seed=1", "replay.num_batches=4")
    pipeline = await Pipeline.start(second_config)
    await pipeline.wait()
    assert not leftover.exists()
    assert {p: p.stat().st_mtime_ns for p in before} == before
    for run in ("r0001", "r0002"):
        first = sorted(int(p.stem[-6:]) for p in before if p.parent.name == run)
        numbers = sorted(int(p.stem[-6:]) for p in (out / run).glob("*.cxi"))
        second = [n for n in numbers if n not in first]
        assert second and min(second) > max(first), (run, first, second)
        listed = (out / run / "files.lst").read_text().split()
        assert sorted(listed) == sorted(str(p.resolve()) for p in (out / run).glob("*.cxi"))
    events = read_cxi_files(out, "*/*.cxi")  # also: no event twice across both runs
    truth = {**truth_for(first_config), **truth_for(second_config)}
    kept, _ = check_against_truth(events, truth, panel_height=32)
    assert len(events) == kept


@pytest.mark.slow  # ~25 s; runs from metadata are in the default set above
async def test_events_without_a_run_stay_in_the_output_directory(make_config):
    config = make_config("output.run_from_metadata='run'", "replay.num_batches=2")
    pipeline = await Pipeline.start(config)
    final = await pipeline.wait()
    out = pipeline.output_dir
    assert not [p for p in out.iterdir() if p.is_dir()]
    events = read_cxi_files(out)
    kept, _ = check_against_truth(events, truth_for(config), panel_height=32)
    assert len(events) == kept == final["events_written"]
    for path in out.glob("*.cxi"):
        with h5py.File(path, "r") as f:
            assert f.attrs["run"] == final["run_label"]


@pytest.mark.slow  # ~18 s; placement groups are also drilled on two nodes (slow)
async def test_finders_in_a_placement_group(make_config):
    config = make_config("placement.finder_placement_group=PACK", "processing.finder_num_cpus=0.25")
    before = set(ray.util.placement_group_table())
    pipeline = await Pipeline.start(config)
    groups = {k: g for k, g in ray.util.placement_group_table().items() if k not in before}
    assert [(g["strategy"], g["state"], len(g["bundles"])) for g in groups.values()] == [
        ("PACK", "CREATED", config.processing.num_finders)
    ]
    final = await pipeline.wait()
    kept, _ = check_against_truth(
        read_cxi_files(pipeline.output_dir), truth_for(config), panel_height=32
    )
    assert final["events_written"] == kept
    (group_id,) = groups
    assert ray.util.placement_group_table()[group_id]["state"] == "REMOVED"


@pytest.mark.slow  # ~18 s
async def test_files_hold_events_per_file_until_the_final_flush(make_config):
    """One file at most is short (the final flush) when files close on size alone."""
    config = make_config(  # neither age nor a pause in the stream closes a file here
        "output.max_file_age_s=60", "output.idle_flush_s=60", "replay.num_batches=16"
    )
    pipeline = await Pipeline.start(config)
    final = await pipeline.wait()
    listed = (pipeline.output_dir / "files.lst").read_text().split()  # in the order renamed
    sizes = []
    for path in listed:
        with h5py.File(path, "r") as f:
            sizes.append(len(f["/entry_1/result_1/nPeaks"]))
    assert sum(sizes) == final["events_written"]
    assert len([n for n in sizes if n != config.output.events_per_file]) <= 1, sizes
    assert len(sizes) == -(-sum(sizes) // config.output.events_per_file), sizes


async def q2_sizes(config) -> list[int]:
    shards = connect_shards(config.queue.name, config.ray.namespace, 1, 4)
    return [await s.size.remote() for s in shards]


async def test_every_event_written_once_with_its_truth(make_config):
    config = make_config()
    pipeline = await Pipeline.start(config)
    final = await pipeline.wait()
    out = pipeline.output_dir
    events = read_cxi_files(out)
    kept, filtered = check_against_truth(events, truth_for(config), panel_height=32)
    assert len(events) == kept
    assert final["events_written"] == kept
    assert final["events_filtered"] == filtered
    assert final["batches_taken"] == config.replay.num_batches
    assert final["events_rejected"] == 0
    assert_books_balance(final)
    cxi_files = sorted(str(p.resolve()) for p in out.glob("*.cxi"))
    others = {p.name for p in out.iterdir()} - {p.rsplit("/", 1)[1] for p in cxi_files}
    report = f"{config.output.file_prefix}_{final['run_label']}_report.json"
    assert others == {"peaknet.geom", "files.lst", "events.lst", "status.json", report}
    assert sorted((out / "files.lst").read_text().split()) == cxi_files
    event_lines = (out / "events.lst").read_text().splitlines()
    assert len(event_lines) == kept
    assert final["report"] == str(out.resolve() / report)


@pytest.mark.slow  # ~18 s; images are checked in test_upstream
async def test_images_are_the_panels_in_slab_order(make_config):
    config = make_config("replay.num_batches=2", "replay.hit_fraction=1.0")
    pipeline = await Pipeline.start(config)
    await pipeline.wait()
    events = read_cxi_files(pipeline.output_dir)
    truth = truth_for(config)
    for (batch_id, b), event in events.items():
        image = truth[batch_id].image  # (B*C, 1, 48, 48) padded
        expected = np.concatenate([image[b * 2 + c, 0, :32, :40] for c in range(2)])
        np.testing.assert_array_equal(event["image"], expected)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.slow  # ~17 s each; the unit tests check every dtype against the reference
async def test_half_precision_logits_give_the_same_peaks(make_config, dtype):
    config = make_config(f"replay.dtype={dtype}", "replay.num_batches=3")
    pipeline = await Pipeline.start(config)
    final = await pipeline.wait()
    assert final["batches_taken"] == 3, final
    assert final["batches_rejected"] == 0, final["last_rejections"]
    check_against_truth(read_cxi_files(pipeline.output_dir), truth_for(config), panel_height=32)


@pytest.mark.slow  # long: the default set stays under 10 minutes on 2 cores
async def test_predictions_ref_transport(make_config):
    config = make_config("replay.transport=ref", "replay.num_batches=3")
    pipeline = await Pipeline.start(config)
    final = await pipeline.wait()
    check_against_truth(read_cxi_files(pipeline.output_dir), truth_for(config), panel_height=32)
    assert final["batches_rejected"] == 0


@pytest.mark.slow  # ~13 s; either order is also in test_upstream
async def test_producer_first_then_pipeline(make_config):
    config = make_config("replay.enabled=false", "replay.num_batches=4", "stop.idle_timeout_s=1.0")
    producer = new_replay_producer(config, num_shards=1)
    run = producer.run.remote()
    while sum(await q2_sizes(config)) < 2:
        await asyncio.sleep(0.1)
    pipeline = await Pipeline.start(config)
    await run
    final = await pipeline.wait()
    kept, _ = check_against_truth(
        read_cxi_files(pipeline.output_dir), truth_for(config), panel_height=32
    )
    assert final["events_written"] == kept
    assert final["batches_taken"] == 4
    ray.kill(producer)


async def test_shard_count_mismatch_is_one_sentence(make_config):
    config = make_config("replay.enabled=false")
    connect_shards(config.queue.name, config.ray.namespace, 2, 4)
    with pytest.raises(PipelineError, match=r"has shards \[0, 1\] but queue.num_shards = 1"):
        await Pipeline.start(config)


async def test_wrong_namespace_with_auto_shards_is_one_sentence(make_config):
    producer_side = make_config("replay.enabled=false")
    connect_shards(producer_side.queue.name, producer_side.ray.namespace, 1, 4)
    config = make_config("replay.enabled=false", "queue.num_shards=auto")
    with pytest.raises(PipelineError, match=r"set ray\.namespace to the producer.s namespace"):
        await Pipeline.start(config)


async def test_auto_shards_without_producer_is_one_sentence(make_config):
    config = make_config("replay.enabled=false", "queue.num_shards=auto", "queue.name=nobody")
    with pytest.raises(PipelineError, match="no shard of Q2 'nobody' exists"):
        await Pipeline.start(config)


async def test_slow_writer_holds_credits_not_memory(make_config):
    """Backpressure: unacked batches never exceed the credits; the coordinator never holds data."""
    config = make_config(
        "debug.write_delay_s=0.4",
        "processing.credits=2",
        "output.events_per_file=3",
        "replay.num_batches=8",
        "replay.num_panels=4",
        "replay.panel_shape=[250, 250]",  # a batch (6.3 MB) well above allocator noise
        "replay.padded_shape=[256, 256]",
    )
    pipeline = await Pipeline.start(config)
    coordinator_pid = await pipeline.coordinator.pid.remote()
    coordinator = psutil.Process(coordinator_pid)
    rss = [coordinator.memory_info().rss]
    seen_q2_backlog = False
    waiter = asyncio.ensure_future(pipeline.wait())
    while not waiter.done():
        stats = await pipeline.stats()
        assert stats["credits_in_use"] <= 2
        assert stats["batches_in_flight"] <= 2
        seen_q2_backlog |= stats["q2_depth"] > 0
        rss.append(coordinator.memory_info().rss)
        assert_books_balance(stats)
        await asyncio.sleep(0.1)
    final = waiter.result()
    assert final["batches_taken"] == 8
    assert seen_q2_backlog, "the producer was never held back by Q2"
    batch_bytes = 3 * 4 * 2 * 256 * 256 * 4  # one batch of float32 logits
    assert max(rss) - rss[0] < batch_bytes, "the coordinator's memory grew by a batch or more"


async def test_drain_and_stop_mid_stream_loses_nothing(make_config):
    config = make_config("debug.write_delay_s=0.3", "replay.num_batches=12")
    pipeline = await Pipeline.start(config)
    while (await pipeline.stats())["batches_taken"] < 3:
        await asyncio.sleep(0.05)
    final = await pipeline.drain_and_stop()
    assert_books_balance(final)
    assert final["batches_in_flight"] == 0
    taken = final["batches_taken"]
    assert 3 <= taken < 12
    events = read_cxi_files(pipeline.output_dir)
    assert len(events) == final["events_written"]
    truth = truth_for(config)
    taken_ids = {bid for bid, _ in events}
    assert taken_ids <= set(truth)
    left_in_q2 = sum(await q2_sizes(config))
    # what was not taken stays in Q2 (the producer may still be putting)
    assert taken + left_in_q2 <= 12


@pytest.mark.slow  # ~18 s
async def test_auto_shards_wait_for_a_late_producer(make_config):
    """num_shards = "auto" with wait_for_producer_s: the pipeline finds shards made later."""
    config = make_config(
        "replay.enabled=false",
        "replay.num_batches=2",
        "queue.num_shards=auto",
        "queue.wait_for_producer_s=30",
        "stop.idle_timeout_s=1.0",
    )
    starting = asyncio.ensure_future(Pipeline.start(config))
    await asyncio.sleep(1.0)
    assert not starting.done()
    producer = new_replay_producer(config, num_shards=2)
    await producer.run.remote()
    pipeline = await starting
    final = await pipeline.wait()
    assert final["batches_taken"] == 2
    assert final["events_written"] == sum(
        t.kept for b in truth_for(config).values() for t in b.truth
    )
    ray.kill(producer)
