"""Loud when data is lost: the rules (exact), and the coordinator and command line on Ray."""

from __future__ import annotations

import json

import pytest
import ray

from cxi_async.commands import assess_health
from cxi_async.core import alarms

# -- Q2 full ---------------------------------------------------------------------------------


def test_full_clock_counts_stretches_and_warns_once_a_minute():
    clock = alarms.FullClock()
    assert clock.observe(False, 0.0) is False
    assert clock.observe(True, 10.0) is True  # the first full tick warns
    assert clock.observe(True, 11.0) is False
    assert clock.is_full and clock.seconds(12.0) == 2.0
    assert clock.observe(False, 15.0) is False  # a stretch of 5 s ends
    assert not clock.is_full and clock.seconds(100.0) == 5.0
    assert clock.observe(True, 40.0) is False  # 30 s after the last warning: quiet
    assert clock.observe(True, 70.0) is True  # 60 s after: again
    assert clock.observe(True, 71.0) is False
    assert clock.seconds(72.0) == 5.0 + 32.0
    assert clock.warnings == 2


@pytest.mark.parametrize(
    ("sizes", "flags", "full"),
    [
        ([4, 4], [None, None], True),  # sizes at maxsize 4
        ([4, 3], [None, None], False),
        ([2, 2], [True, True], True),  # the shards' own answer wins (producer's maxsize)
        ([4, 4], [False, True], False),
        ([None, 4], [None, True], False),  # a shard that did not answer is not known full
        ([], [], False),
    ],
)
def test_q2_is_full_when_every_shard_is(sizes, flags, full):
    assert alarms.q2_is_full(sizes, flags, maxsize=4) is full


def test_q2_full_message():
    assert alarms.q2_full_message("peaknet_q2", 8, 2, 61.4) == (
        "Q2 'peaknet_q2' is full (8 batches in 2 shards, full for 61 s so far): the producer is "
        "dropping the batches it cannot put, because cxi_async is slower than inference; add "
        "finders (processing.num_finders) or writers (output.num_writers)."
    )


# -- no data ---------------------------------------------------------------------------------


def test_no_data_clock_warns_once_from_the_start_or_the_last_batch():
    clock = alarms.NoDataClock(warn_after_s=60.0, started=100.0)
    assert clock.observe(0, 159.0) is False
    assert clock.observe(3, 159.5) is False  # batches came: the clock restarts
    assert clock.observe(3, 219.0) is False
    assert clock.observe(3, 219.5) is True
    assert clock.observe(3, 500.0) is False  # once per run


def test_shards_by_queue_in_one_namespace():
    named = [
        {"name": "peaknet_q2_shard_1", "namespace": "ns"},
        {"name": "peaknet_q2_shard_0", "namespace": "ns"},
        {"name": "peaknet_q3_shard_0", "namespace": "ns"},
        {"name": "peaknet_q2_shard_0", "namespace": "other"},
        {"name": "cxi_async_coordinator:peaknet_q3", "namespace": "ns"},
    ]
    assert alarms.shards_by_queue(named, "ns") == {"peaknet_q2": [0, 1], "peaknet_q3": [0]}


def test_no_data_message_names_namespace_queue_and_shards():
    found = {"peaknet_q2": [0, 1], "peaknet_q3": [0]}
    assert alarms.no_data_message("peaknet_q3", "ns", 60.0, 0, found) == (
        "no batch arrived from Q2 'peaknet_q3' in namespace 'ns' for queue.warn_no_data_s = 60 s "
        "(since the start); its shards there: 0; other queues in that namespace: 'peaknet_q2' "
        "(shards 0, 1). A misspelt queue.name or ray.namespace creates empty shards of its own: "
        "compare them with the producer's runtime.queue_names.output_queue and ray.namespace "
        "(python -m cxi_async check --pipeline-config)."
    )
    assert alarms.no_data_message("q", "ns", 5.0, 7, {}).startswith(
        "no batch arrived from Q2 'q' in namespace 'ns' for queue.warn_no_data_s = 5 s "
        "(since the last of 7 batches); its shards there: none. A misspelt"
    )


# -- rejections ------------------------------------------------------------------------------


def test_rejection_window_keeps_the_last_50():
    window = alarms.RejectionWindow()
    for _ in range(60):
        window.add(True)
    for _ in range(25):
        window.add(False)
    assert window.counts() == (25, 50)


@pytest.mark.parametrize(
    ("rejected", "finished", "problem"),
    [(26, 50, True), (25, 50, False), (1, 1, True), (0, 0, False)],
)
def test_rejection_problem_above_half(rejected, finished, problem):
    stats = {"recent_rejected": rejected, "recent_batches": finished, "rejections": {"x": 3}}
    assert (alarms.rejection_problem(stats) is not None) is problem


def test_health_is_unhealthy_while_q2_is_full_or_most_batches_are_rejected():
    base = {"credits": 4, "credits_in_use": 1, "seconds_since_last_ack": 0.5, "elapsed_s": 10.0}
    assert assess_health(base, 60.0)[0] is True
    full = {**base, "q2_full": True, "q2_depth": 8, "q2_full_seconds": 12.2}
    assert assess_health(full, 60.0) == (
        False,
        "Q2 is full (depth 8, full for 12 s in all): the producer is dropping batches; add "
        "finders or writers.",
    )
    rejected = {
        **base,
        "recent_rejected": 30,
        "recent_batches": 50,
        "rejections": {"metadata['timestamp'] has dtype float64": 28, "no image": 2},
    }
    assert assess_health(rejected, 60.0) == (
        False,
        "30 of the last 50 batches were rejected (commonest: 'metadata['timestamp'] has dtype "
        "float64' (x 28), 'no image' (x 2)).",
    )


@pytest.mark.parametrize(
    ("final", "reason"),
    [
        ({"batches_taken": 0}, None),
        ({"batches_taken": 3, "events_written": 0, "events_filtered": 1}, None),
        (
            {"batches_taken": 3, "batches_rejected": 3, "rejections": {"a": 2, "b": 1}},
            "took 3 batches from Q2 but wrote or filtered no event: 3 rejected, commonest "
            "reasons: 'a' (x 2), 'b' (x 1).",
        ),
        (
            {"batches_taken": 1, "batches_abandoned": 1},
            "took 1 batch from Q2 but wrote or filtered no event: none was rejected "
            "(1 abandoned at stop).",
        ),
    ],
)
def test_nothing_written(final, reason):
    assert alarms.nothing_written(final) == reason


# -- with a real local Ray -------------------------------------------------------------------


@pytest.mark.usefixtures("ray_session")
async def test_q2_full_is_counted_warned_and_unhealthy(make_config):
    """One shard of maxsize 1 and a slow finder: the replay keeps Q2 full most of the run."""
    import asyncio

    from cxi_async.pipeline import Pipeline

    config = make_config(
        "queue.maxsize_per_shard=1",
        "processing.credits=1",
        "processing.num_finders=1",
        "output.events_per_file=3",
        "debug.find_delay_s=1.5",
        "replay.num_batches=4",
        "stop.idle_timeout_s=1",
    )
    pipeline = await Pipeline.start(config)
    stats = await pipeline.stats()
    while not stats["q2_full"] and not stats["stopping"]:
        await asyncio.sleep(0.2)
        stats = await pipeline.stats()
    healthy, reason = assess_health(stats, 60.0)
    final = await pipeline.wait()
    assert stats["q2_full"], "Q2 was never seen full"
    assert not healthy and reason.startswith("Q2 is full (depth 1, full for ")
    assert final["q2_full_warnings"] == 1  # the run is shorter than a minute
    assert final["q2_full_seconds"] > 0 and not final["q2_full"]
    assert final["batches_taken"] == 4 and final["batches_rejected"] == 0
    status = json.loads((pipeline.output_dir / "status.json").read_text())
    assert status["q2_full_seconds"] == final["q2_full_seconds"]
    report = json.loads(next(pipeline.output_dir.glob("*_report.json")).read_text())
    assert report["final"]["q2_full_seconds"] == final["q2_full_seconds"]


@pytest.mark.slow  # long: the default set stays under 10 minutes on 2 cores
@pytest.mark.usefixtures("ray_session")
async def test_a_misspelt_queue_warns_and_a_finite_job_stops(make_config):
    """The producer's Q2 is 'peaknet_q2', the pipeline asks for 'peaknet_q3': it says so once
    and, with stop.wait_for_first_batch_s, ends instead of waiting for ever."""
    from cxi_async.actors.q2_shard import connect_shards
    from cxi_async.pipeline import Pipeline

    config = make_config(
        "replay.enabled=false",
        "queue.name=peaknet_q3",
        "queue.warn_no_data_s=1",
        "stop.wait_for_first_batch_s=3",
    )
    ns = config.ray.namespace
    connect_shards("peaknet_q2", ns, 2, 4)  # the producer's
    pipeline = await Pipeline.start(config)
    final = await pipeline.wait()
    assert final["stop_reason"] == (
        "no batch arrived from Q2 'peaknet_q3' within stop.wait_for_first_batch_s = 3 s of the "
        "start"
    )
    assert final["no_data_warning"] == alarms.no_data_message(
        "peaknet_q3", ns, 1.0, 0, {"peaknet_q2": [0, 1], "peaknet_q3": [0]}
    )
    assert final["batches_taken"] == 0


@pytest.mark.usefixtures("ray_session")
async def test_a_run_whose_every_batch_is_rejected_exits_non_zero(make_config, capsys):
    from cxi_async.__main__ import EXIT_FAILED, run
    from cxi_async.actors.q2_shard import connect_shards
    from cxi_async.replay.synthetic import PipelineOutput

    config = make_config("replay.enabled=false", "stop.idle_timeout_s=1")
    shard = connect_shards(config.queue.name, config.ray.namespace, 1, 4)[0]
    for i in range(3):  # neither predictions nor predictions_ref: every batch is rejected
        assert ray.get(shard.put.remote(PipelineOutput(metadata={}, batch_id=f"b{i}")))
    assert await run(config) == EXIT_FAILED
    err = capsys.readouterr().err
    assert "cxi_async: took 3 batches from Q2 but wrote or filtered no event: 3 rejected, " in err
    assert "commonest reasons: 'both predictions and predictions_ref are None' (x 3)." in err
