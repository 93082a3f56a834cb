"""The pipeline outlives its driver: kill -9 of `python -m cxi_async`, then follow or stop it.

An embedded local Ray shares its driver's fate (kill -9 takes the whole cluster), so these
drills start a private one-node cluster the way an operator would (`ray start --head`, see
tests/test_multinode.py) and point the CLI at it with `ray.address`. The CLI runs in a
subprocess; what it leaves is checked against the replay's ground truth. Each drill costs
one to two minutes on two shared cores: the module is marked slow.
"""

from __future__ import annotations

import json
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cxi_async.replay.producer import truth_for
from tests.conftest import check_against_truth, read_cxi_files
from tests.test_cli import (
    RUN,
    RUN_TIMEOUT_S,
    START_TIMEOUT_S,
    Cli,
    assert_accounting,
    report,
    run_cli,
    status,
    summary_rows,
    taken_truth,
    write_config,
)
from tests.test_multinode import ENV, _free_port, _kill, _start_node, _wait_started

pytestmark = pytest.mark.slow

DRILL = ["debug.write_delay_s=1.0", "replay.num_batches=12", "processing.num_finders=1"]


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    """A private one-node Ray cluster (its own temp dir and session); its address."""
    if not (Path(sys.executable).parent / "ray").exists():
        pytest.skip("the `ray` command is not installed beside this Python")
    temp = Path(tempfile.mkdtemp(prefix="cxdt", dir="/tmp"))
    port = _free_port()
    args = ["--head", f"--port={port}", "--node-ip-address=127.0.0.1", "--num-cpus=2",
            "--include-dashboard=false", f"--temp-dir={temp}", "--disable-usage-stats"]  # fmt: skip
    procs = [_start_node(args, temp / "head.log")]
    try:
        _wait_started(procs[0], temp / "head.log")
        yield f"127.0.0.1:{port}"
    finally:
        _kill(procs)
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture
def cli() -> Iterator:
    """cli(cwd, *args) -> Cli (tests/test_cli.py); what still runs at teardown is killed."""
    started: list[Cli] = []

    def start(cwd: Path, *args: str) -> Cli:
        started.append(Cli(cwd, *args))
        return started[-1]

    yield start
    for run in started:
        run.kill()


@pytest.fixture
def env(monkeypatch) -> None:
    """The CLI subprocesses inherit this: the private cluster has token auth off."""
    for key in ("RAY_AUTH_MODE", "RAY_USAGE_STATS_ENABLED"):
        monkeypatch.setenv(key, ENV[key])


def start_and_kill_9(
    cli, tmp_path: Path, address: str, *overrides: str
) -> tuple[Path, object, Path]:
    """Start the CLI, wait for batches in flight, kill -9 the driver (only it)."""
    path, config = write_config(tmp_path, f"ray.address={address}", *DRILL, *overrides)
    out = tmp_path / "out" / RUN
    run = cli(tmp_path, str(path))
    run.wait_for_log("cxi_async: started in")
    run.wait_for(
        "a batch in flight",
        lambda: status(out).get("credits_in_use", 0) > 0 and status(out).get("files", 0) >= 1,
        START_TIMEOUT_S,
    )
    run.proc.send_signal(signal.SIGKILL)
    run.proc.wait(30)
    assert status(out).get("state") == "running", "the run ended before the kill"
    return path, config, out


def check_exactly_once(config, out: Path) -> dict:
    """Every kept event of the replay is in exactly one file, and the lists match the disk."""
    stats = report(out)["stats"]
    assert_accounting(stats)
    assert (stats["batches_in_flight"], stats["batches_abandoned"]) == (0, 0)
    events = read_cxi_files(out)  # asserts no event is in two files
    kept, _ = check_against_truth(events, truth_for(config), panel_height=32)
    assert len(events) == kept == stats["events_written"]
    listed = (out / "files.lst").read_text().splitlines()
    assert sorted(listed) == sorted(str(p.resolve()) for p in out.glob("*.cxi"))
    assert len((out / "events.lst").read_text().splitlines()) == kept
    assert not list(out.glob("*.inprogress"))
    return stats


def test_kill_9_then_the_same_command_follows_the_run_to_its_end(cluster, env, cli, tmp_path):
    """The same command again follows the run; if the run ended before it attached (a
    second CLI takes ~15 s to start here), it shows that end. Never a second run."""
    # long enough that the replay is usually not over before the second CLI has attached
    path, config, out = start_and_kill_9(cli, tmp_path, cluster, "replay.num_batches=40")
    again = run_cli(tmp_path, str(path))
    assert again.returncode == 0, again.stderr[-3000:]
    assert (
        "attached to the running pipeline" in again.stderr
        or "had already stopped (replay finished and Q2 drained)" in again.stderr
    ), again.stderr[-3000:]
    assert "started in" not in again.stderr  # no second coordinator
    assert summary_rows(again.stdout)["stopped because"] == "replay finished and Q2 drained"
    stats = check_exactly_once(config, out)
    assert stats["batches_taken"] == config.replay.num_batches


def test_a_coordinator_without_driver_stops_by_its_rules_and_reports(cluster, env, cli, tmp_path):
    """No second driver: the coordinator still stops (replay drained) and writes its report."""
    path, config, out = start_and_kill_9(cli, tmp_path, cluster)
    probe = run_cli(tmp_path, "status", str(path))  # it still answers, driverless
    assert probe.returncode == 0, probe.stderr[-3000:]
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while not list(out.glob("*_report.json")):
        assert time.monotonic() < deadline, f"no report; status: {status(out)}"
        time.sleep(0.5)
    stats = check_exactly_once(config, out)
    assert stats["stop_reason"] == "replay finished and Q2 drained"


def test_stop_drains_a_pipeline_whose_driver_is_gone(cluster, env, cli, tmp_path):
    # long enough that the replay is not over before `stop` has connected
    path, config, out = start_and_kill_9(cli, tmp_path, cluster, "replay.num_batches=60")
    done = run_cli(tmp_path, "stop", str(path))
    assert done.returncode == 0, done.stderr[-3000:]
    assert summary_rows(done.stdout)["stopped because"] == "asked to drain and stop (stop)"
    stats = report(out)["stats"]
    assert_accounting(stats)
    assert stats["batches_taken"] < config.replay.num_batches
    assert (stats["batches_in_flight"], stats["batches_abandoned"]) == (0, 0)
    events = read_cxi_files(out)
    kept, _ = check_against_truth(events, taken_truth(config, stats["batches_taken"]), 32)
    assert len(events) == kept == stats["events_written"]
    gone = run_cli(tmp_path, "status", str(path))
    assert gone.returncode == 1 and "is running" in gone.stderr
    assert json.loads((out / "status.json").read_text())["state"] == "stopped"
