"""check / status / health: real files, a real local Ray and a real running pipeline."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path

import pytest
import ray

from cxi_async import commands
from cxi_async.__main__ import main as cli_main
from cxi_async.actors.metrics import PipelineMetrics
from cxi_async.config import dump_toml, load_config
from cxi_async.pipeline import Pipeline, PipelineError, coordinator_name

ROOT = Path(__file__).parents[1]
DATA = Path(__file__).parent / "data"


def write_config(tmp_path: Path, *overrides: str, name: str = "cxi.toml") -> Path:
    """A TOML file of the defaults plus overrides, with output under tmp_path."""
    config = load_config(None, [f"output.output_dir={tmp_path / 'out'}", *overrides])
    path = tmp_path / name
    path.write_text(dump_toml(config))
    return path


# --------------------------------------------------------------------------- check


def test_check_shipped_config(capsys):
    assert cli_main(["check", str(ROOT / "config.toml")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"{ROOT / 'config.toml'}: valid"
    assert out[1] == (
        "geometry: none, panels stacked along the slow scan: 16 panels of 352 x 384 -> "
        "slab 5632 x 384"
    )
    assert out[2].startswith("output: ")
    assert out[3] == (
        "queue: Q2 'peaknet_q2', 1 shard, namespace 'peaknet-pipeline', on a local Ray "
        "(ray.address not set)"
    )


def test_check_prints_the_geometry_layout_and_output_dir(tmp_path, capsys):
    geom = DATA / "epix10k2m-asic.geom"
    path = write_config(tmp_path, f"geometry.geom_file={geom}", "output.run=r0007")
    assert commands.main("check", [str(path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert f"geometry: {geom}: 16 panels of 352 x 384 -> slab 5632 x 384" in out
    assert f"output: {tmp_path / 'out' / 'r0007'} (will be created)" in out
    (tmp_path / "out" / "r0007").mkdir(parents=True)
    assert commands.main("check", [str(path)]) == 0
    assert f"output: {tmp_path / 'out' / 'r0007'} (exists)" in capsys.readouterr().out


def test_check_geometry_that_does_not_fit_the_replay(tmp_path, capsys):
    geom = DATA / "epix10k2m-module.geom"
    path = write_config(tmp_path, f"geometry.geom_file={geom}", "replay.enabled=true")
    assert commands.main("check", [str(path), "--set", "replay.num_panels=4"]) == 1
    out = capsys.readouterr().out
    assert f"✗ replay: geometry {geom} has 16 panels of 352 x 384 but the data has 4 panels" in out


def test_check_geometry_file_that_is_not_a_geometry(tmp_path, capsys):
    bad = tmp_path / "bad.geom"
    bad.write_text("this is not a CrystFEL geometry\n")
    path = write_config(tmp_path, f"geometry.geom_file={bad}")
    assert commands.main("check", [str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"cxi_async: geometry.geom_file: geometry file {bad}")
    assert len(err.strip().splitlines()) == 1


def test_check_config_error_is_one_sentence(tmp_path, capsys):
    path = write_config(tmp_path)
    assert commands.main("check", [str(path), "--set", "queue.num_shards=0"]) == 2
    err = capsys.readouterr().err
    assert err == (
        'cxi_async: queue.num_shards = 0 is invalid: expected an integer >= 1 or "auto" '
        "(from --set queue.num_shards=0).\n"
    )


def test_check_against_matching_producer_yaml(tmp_path, capsys):
    path = write_config(tmp_path, "queue.num_shards=4")
    yaml = DATA / "producer-q2.yaml"
    assert commands.main("check", [str(path), "--pipeline-config", str(yaml)]) == 0
    out = capsys.readouterr().out
    assert f"producer configuration {yaml}:" in out
    lines = [line for line in out.splitlines() if line.startswith("  ")]
    assert len(lines) == 5
    assert all(line.startswith("  ✓ ") for line in lines)


def test_check_against_mismatching_producer_yaml(tmp_path, capsys):
    path = write_config(tmp_path, "queue.num_shards=4", "queue.maxsize_per_shard=1600")
    yaml = DATA / "producer-q2.yaml"
    argv = [str(path), "--set", "queue.num_shards=1", "--pipeline-config", str(yaml)]
    assert commands.main("check", argv) == 1
    out = capsys.readouterr().out
    assert f"  ✗ queue.num_shards = 1 but runtime.queue_num_shards = 4 in {yaml}\n" in out
    assert "  ⚠ queue.maxsize_per_shard = 1600 but runtime.queue_maxsize_per_shard = 100" in out
    assert out.endswith("1 setting must change before cxi_async can drain this producer's Q2\n")


def test_check_warnings_alone_pass(tmp_path, capsys):
    path = write_config(tmp_path, "queue.num_shards=4", "queue.maxsize_per_shard=1600")
    yaml = DATA / "producer-q2.yaml"
    assert commands.main("check", [str(path), "--pipeline-config", str(yaml)]) == 0
    assert "⚠" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("yaml", "sentence"),
    [
        ("producer-malformed.yaml", "is not valid YAML at line 6, column 1"),
        ("missing.yaml", "does not exist."),
    ],
)
def test_check_unusable_producer_yaml_is_a_config_error(tmp_path, capsys, yaml, sentence):
    path = write_config(tmp_path)
    assert commands.main("check", [str(path), "--pipeline-config", str(DATA / yaml)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cxi_async: ") and sentence in err
    assert len(err.strip().splitlines()) == 1


# --------------------------------------------------------------------------- assess_health


def running(**values) -> dict:
    base = {
        "elapsed_s": 10.0,
        "events_written": 40,
        "events_filtered": 10,
        "events_rejected": 0,
        "credits": 8,
        "credits_in_use": 3,
        "q2_depth": 2,
        "dead_shards": [],
        "stopping": False,
        "stop_reason": None,
        "finders": [{"index": 0, "inbox": 1}, {"index": 1, "inbox": 0}],
        "writers": [{"index": 0, "inbox": 0, "failing": False}],
        "seconds_since_last_ack": 0.4,
    }
    base.update(values)
    return base


def test_healthy_pipeline():
    assert commands.assess_health(running(), 60) == (
        True,
        "40 events written, 5.0 events/s, credits 3/8, Q2 depth 2, last batch finished 0 s ago.",
    )


def test_dead_actors_are_unhealthy():
    finders = [{"dead": True}, {"index": 1, "inbox": 0}]
    writers = [{"dead": True}, {"dead": True}]
    assert commands.assess_health(running(finders=finders, writers=writers), 60) == (
        False,
        "finder 0 of 2 does not answer; writers 0, 1 of 2 do not answer.",
    )


def test_failing_writer_and_dead_shard_are_unhealthy():
    writers = [{"index": 0, "inbox": 3, "failing": True}]
    ok, reason = commands.assess_health(running(writers=writers, dead_shards=[2]), 60)
    assert not ok
    assert reason == "writer 0 cannot write files (retrying); Q2 shard 2 does not answer."


def test_stall_needs_every_credit_in_use_and_no_progress_for_stall_s():
    stalled = running(credits_in_use=8, seconds_since_last_ack=75.0)
    assert commands.assess_health(stalled, 60) == (
        False,
        "stalled: all 8 credits are in use and no batch was finished for 75 s (--stall-s 60).",
    )
    assert commands.assess_health(stalled, 90)[0]  # not long enough
    idle = running(credits_in_use=2, seconds_since_last_ack=600.0)  # Q2 empty: idle, not stuck
    assert commands.assess_health(idle, 60)[0]


def test_stall_not_assessed_without_the_coordinators_clock():
    stats = running(credits_in_use=8)
    del stats["seconds_since_last_ack"]
    ok, reason = commands.assess_health(stats, 60)
    assert ok
    assert reason.endswith(
        "(stall not assessed: the coordinator does not report seconds_since_last_ack)."
    )


def test_stopping_pipeline_is_healthy_and_says_so():
    ok, reason = commands.assess_health(running(stopping=True, stop_reason="asked to drain"), 60)
    assert ok
    assert "stopping (asked to drain)" in reason


# --------------------------------------------------------------------------- status / health


@pytest.mark.usefixtures("ray_session")
def test_status_and_health_without_a_pipeline(tmp_path, capsys):
    path = write_config(tmp_path, "ray.namespace=cxi-async-nobody-here", "queue.name=nothing")
    assert commands.main("status", [str(path)]) == 1
    assert capsys.readouterr().err == (
        "cxi_async: no cxi_async pipeline for Q2 'nothing' is running in namespace "
        "'cxi-async-nobody-here'\n"
    )
    assert commands.main("health", [str(path)]) == 1
    assert capsys.readouterr().out == (
        "unhealthy: no cxi_async pipeline for Q2 'nothing' is running in namespace "
        "'cxi-async-nobody-here'\n"
    )


async def wait_for_files(pipeline: Pipeline, deadline_s: float = 180.0) -> dict:
    """Stats once a first file is written (not a timing assertion: a bound on waiting)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline_s
    while True:
        stats = await pipeline.stats()
        if stats["files"] > 0 and stats["events_written"] > 0:
            return stats
        assert loop.time() < end, f"no file written after {deadline_s:g} s: {stats}"
        await asyncio.sleep(0.1)


def endless(make_config) -> tuple:
    """A tiny pipeline whose replay producer runs until the test stops it, slower than the
    pipeline: a full Q2 would (rightly) make health unhealthy."""
    return make_config(
        "processing.num_finders=1",
        "replay.num_batches=100000",
        "replay.producer_rate_hz=15",
        "replay.unique_batches=4",
    )


async def run_command(command: str, *argv: str) -> int:
    """commands.main off the event loop, which keeps serving the pipeline meanwhile."""
    return await asyncio.to_thread(commands.main, command, list(argv))


@pytest.mark.usefixtures("ray_session")
async def test_status_and_health_of_a_running_pipeline(make_config, tmp_path, capsys):
    config = endless(make_config)
    path = tmp_path / "running.toml"
    path.write_text(dump_toml(config))
    pipeline = await Pipeline.start(config)
    try:
        assert await run_command("status", str(path)) == 0
        lines = capsys.readouterr().out.splitlines()
        assert lines[0].startswith(
            f"cxi_async pipeline for Q2 '{config.queue.name}' in namespace "
            f"'{config.ray.namespace}': running, "
        )
        assert " events/s | kept " in lines[1]
        assert "cxi_async summary" in lines

        assert await run_command("status", str(path), "--json") == 0
        stats = json.loads(capsys.readouterr().out)
        assert stats["credits"] == config.processing.credits
        assert len(stats["finders"]) == config.processing.num_finders
        assert stats["stopping"] is False

        assert await run_command("health", str(path), "--stall-s", "600") == 0
        assert capsys.readouterr().out.startswith("healthy: ")

        metrics = PipelineMetrics(config.queue.name)
        metrics.publish(stats)  # the coordinator's real stats dict publishes cleanly
        assert metrics.errors == 0
    finally:
        await pipeline.stop()

    assert await run_command("status", str(path)) == 1
    assert "no cxi_async pipeline for Q2" in capsys.readouterr().err


@pytest.mark.usefixtures("ray_session")
async def test_a_second_start_follows_the_pipeline_and_stop_drains_it(
    make_config, tmp_path, capsys
):
    """One coordinator per queue and namespace: a second start attaches to it (or is refused
    without attach), follows it, and sees the end that `stop` from elsewhere brings."""
    config = endless(make_config)
    path = tmp_path / "running.toml"
    path.write_text(dump_toml(config))
    first = await Pipeline.start(config)
    try:
        with pytest.raises(PipelineError, match="is already running in namespace"):
            await Pipeline.start(config)
        second = await Pipeline.start(config, attach=True)
        assert (first.attached, second.attached) == (False, True)
        assert second.output_dir == first.output_dir
        pids = [await p.coordinator.pid.remote() for p in (first, second)]
        assert pids[0] == pids[1], "a second coordinator was started"
        follower = asyncio.ensure_future(second.wait())
        await wait_for_files(first)
        assert await run_command("stop", str(path)) == 0
    except BaseException:
        await first.stop()
        raise
    assert "cxi_async summary" in capsys.readouterr().out
    final = await follower  # the follower is not hurt by the stop's end of the coordinator
    assert final["stop_reason"] == "asked to drain and stop (stop)"
    assert (final["batches_in_flight"], final["batches_abandoned"]) == (0, 0)
    assert final["events_written"] > 0
    assert await run_command("status", str(path)) == 1  # stop freed the name
    assert "no cxi_async pipeline for Q2" in capsys.readouterr().err


@pytest.mark.usefixtures("ray_session")
async def test_a_start_after_an_end_no_driver_saw_shows_that_end(make_config):
    """The driver was gone when the run ended (its coordinator lingers with the final stats):
    the same command shows that end instead of starting a second run, then frees the name."""
    config = make_config("processing.num_finders=1")
    first = await Pipeline.start(config)  # never waited for: as if its driver was killed
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 180.0  # a bound on waiting, not a timing assertion
    while (stopped := await first.coordinator.finished_stats.remote()) is None:
        assert loop.time() < deadline, "the run did not stop by itself"
        await asyncio.sleep(0.2)
    files = sorted(first.output_dir.glob("*.cxi"))
    again = await Pipeline.start(config, attach=True)
    assert again.attached and again.final is not None
    assert await again.wait() == again.final
    assert again.final["stop_reason"] == stopped["stop_reason"] == "replay finished and Q2 drained"
    assert again.final["batches_taken"] == config.replay.num_batches
    assert sorted(again.output_dir.glob("*.cxi")) == files  # no second run
    with pytest.raises(ValueError):  # its name is free
        ray.get_actor(coordinator_name(config), namespace=config.ray.namespace)
    third = await Pipeline.start(config, attach=True)  # now a new run
    assert not third.attached
    await third.stop()


@pytest.mark.slow
@pytest.mark.usefixtures("ray_session")
async def test_status_counts_and_metrics_once_files_are_written(make_config, tmp_path, capsys):
    config = endless(make_config)
    path = tmp_path / "running.toml"
    path.write_text(dump_toml(config))
    pipeline = await Pipeline.start(config)
    try:
        await wait_for_files(pipeline)
        assert await run_command("status", str(path), "--json") == 0
        stats = json.loads(capsys.readouterr().out)
        assert stats["events_written"] > 0
        assert stats["files"] > 0
        assert await run_command("health", str(path), "--stall-s", "600") == 0
        assert capsys.readouterr().out.startswith("healthy: ")

        metrics = PipelineMetrics(config.queue.name)
        metrics.publish(stats)
        assert metrics.errors == 0
        assert metrics.counted[("cxi_async_events_written", ())] == stats["events_written"]
        assert metrics.counted[("cxi_async_files_written", ())] == stats["files"]
        assert metrics.observed["cxi_async_write_seconds"] == stats["files"]
    finally:
        final = await pipeline.stop()
    assert final["events_written"] >= stats["events_written"]


def test_probe_fails_fast_when_nothing_listens():
    """ray.init retries an unreachable address for minutes; the probe answers at once."""
    config = load_config(None, ["queue.name=q2x"], check_paths=False)
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        port = listening.getsockname()[1]
        commands._probe(config, f"127.0.0.1:{port}")  # something answers: no error
        commands._probe(config, f"ray://127.0.0.1:{port}")
    with pytest.raises(commands.PipelineNotReachable) as err:
        commands._probe(config, f"127.0.0.1:{port}")
    assert str(err.value) == (
        f"no cxi_async pipeline for Q2 'q2x' is running: nothing answers at "
        f"ray.address = 127.0.0.1:{port} (Connection refused)"
    )
    commands._probe(config, "auto")  # left to ray.init
