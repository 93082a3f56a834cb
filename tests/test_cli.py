"""`python -m cxi_async` as a user runs it: real subprocesses, each with its own local Ray.

Every run writes a tiny config (the keys of `conftest.tiny_overrides`) as TOML into its tmp
directory, starts the CLI there, and checks what it leaves behind against the replay's
ground truth: exit code, summary table, CXI files, lists, status and report. A run costs
10-30 s (Ray start-up), so the default set runs the CLI three times; the other stop drills
are marked slow.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import h5py
import msgspec
import pytest

from cxi_async.config import Config, load_config
from cxi_async.replay.producer import truth_for
from tests.conftest import check_against_truth, read_cxi_files, tiny_overrides

REPO = Path(__file__).resolve().parents[1]
RUN = "r0001"
PANEL_HEIGHT = 32  # tiny_overrides: replay.panel_shape = [32, 40]
START_TIMEOUT_S = 180.0  # Ray start-up on a loaded 2-core machine
RUN_TIMEOUT_S = 240.0
_namespaces = itertools.count()

# The settings every CLI run here shares (beyond tiny_overrides): its own small local Ray,
# a named run (so the output directory is known), INFO logs (the "started" line we wait for).
CLI_OVERRIDES = [
    "ray.num_cpus=2",
    f"output.run={RUN}",
    "system.log_level=INFO",
    "system.progress_interval_s=1.0",
]


# --------------------------------------------------------------------------- helpers


def write_config(directory: Path, *overrides: str) -> tuple[Path, Config]:
    """tiny_overrides (+ CLI_OVERRIDES + overrides) as a TOML file; also the Config it means."""
    namespace = f"test-cli-{os.getpid()}-{next(_namespaces)}"
    settings = [*tiny_overrides(directory, namespace), *CLI_OVERRIDES, *overrides]
    tables: dict[str, dict[str, str]] = {}
    for setting in settings:
        key, _, text = setting.partition("=")
        section, _, name = key.partition(".")
        tables.setdefault(section, {})[name] = _toml_value(text)
    lines = []
    for section, values in tables.items():
        lines.append(f"[{section}]")
        lines += [f"{name} = {value}" for name, value in values.items()]
        lines.append("")
    path = directory / "cxi.toml"
    path.write_text("\n".join(lines))
    return path, load_config(path)


def _toml_value(text: str) -> str:
    """An override value as TOML: itself if it parses, else a quoted string (as --set does)."""
    try:
        msgspec.toml.decode(f"v = {text}\n")
        return text
    except msgspec.DecodeError:
        return json.dumps(text)


class Cli:
    """One `python -m cxi_async` subprocess in its own session, its output read by threads."""

    def __init__(self, cwd: Path, *args: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cxi_async", *args],
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # a group of its own: Ctrl+C-like signals, cleanup
        )
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self.readers = [
            threading.Thread(target=_pump, args=(self.proc.stdout, self.stdout), daemon=True),
            threading.Thread(target=_pump, args=(self.proc.stderr, self.stderr), daemon=True),
        ]
        for reader in self.readers:
            reader.start()

    def wait_for(self, what: str, condition: Callable[[], bool], timeout: float) -> None:
        """Poll until condition() holds; fail with the output if the process ends first."""
        deadline = time.monotonic() + timeout
        while not condition():
            if self.proc.poll() is not None:
                pytest.fail(f"cxi_async exited ({self.proc.returncode}) before {what}{self.tail()}")
            if time.monotonic() > deadline:
                pytest.fail(f"no {what} within {timeout:g} s{self.tail()}")
            time.sleep(0.1)

    def wait_for_log(self, text: str, timeout: float = START_TIMEOUT_S) -> None:
        self.wait_for(repr(text), lambda: any(text in line for line in self.stderr), timeout)

    def send(self, sig: signal.Signals, group: bool = False) -> None:
        """To the CLI process, or (group=True, as Ctrl+C in a terminal) to its whole group."""
        if group:
            os.killpg(self.proc.pid, sig)
        else:
            self.proc.send_signal(sig)

    def finish(self, timeout: float = RUN_TIMEOUT_S) -> SimpleNamespace:
        """Wait for the exit; returns returncode, stdout and stderr text."""
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"cxi_async did not exit within {timeout:g} s{self.tail()}")
        for reader in self.readers:
            reader.join(10)
        return SimpleNamespace(
            returncode=self.proc.returncode,
            stdout="".join(self.stdout),
            stderr="".join(self.stderr),
        )

    def kill(self) -> None:
        """Last resort (a failed test): the process and the Ray it started, by group id."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)

    def tail(self) -> str:
        return (
            "\nstdout:\n" + "".join(self.stdout[-20:]) + "\nstderr:\n" + "".join(self.stderr[-40:])
        )


def _pump(stream, sink: list[str]) -> None:
    for line in stream:
        sink.append(line)


@pytest.fixture
def cli():
    """cli(cwd, *args) -> Cli; whatever is still running at teardown is killed."""
    started: list[Cli] = []

    def start(cwd: Path, *args: str) -> Cli:
        started.append(Cli(cwd, *args))
        return started[-1]

    yield start
    for run in started:
        run.kill()


def run_cli(cwd: Path, *args: str, timeout: float = RUN_TIMEOUT_S) -> SimpleNamespace:
    process = Cli(cwd, *args)
    try:
        return process.finish(timeout)
    finally:
        process.kill()


def status(out: Path) -> dict:
    """status.json of a running pipeline ({} before its first write)."""
    try:
        return json.loads((out / "status.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def report(out: Path) -> dict:
    (path,) = out.glob("*_report.json")
    return json.loads(path.read_text())


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def sequence_number(path: Path) -> int:
    """<prefix>_<run>_<seq>.cxi[.inprogress] -> seq."""
    return int(path.name.split(".")[0].rsplit("_", 1)[1])


def sequence_numbers(out: Path) -> list[int]:
    return sorted(sequence_number(p) for p in out.glob("*.cxi"))


def taken_truth(config: Config, batches_taken: int) -> dict:
    """Truth of the batches a stopped run took: the first ones (one FIFO shard, in order)."""
    truth = truth_for(config)
    return dict(itertools.islice(truth.items(), batches_taken))


def check_written_subset(events: dict, truth: dict) -> int:
    """Every written event is a kept truth event with its exact peaks; returns how many."""
    known = {(t.batch_id, t.event_index) for b in truth.values() for t in b.truth if t.kept}
    assert set(events) <= known, f"events not kept in the truth: {sorted(set(events) - known)}"
    present = [
        t
        for b in truth.values()
        for t in b.truth
        if not t.kept or (t.batch_id, t.event_index) in events
    ]
    kept, _ = check_against_truth(events, {"written": SimpleNamespace(truth=present)}, PANEL_HEIGHT)
    return kept


def assert_accounting(stats: dict) -> None:
    """Every batch taken is done, abandoned or still in flight."""
    assert stats["batches_taken"] == (
        stats["batches_done"] + stats["batches_abandoned"] + stats["batches_in_flight"]
    ), stats


def summary_rows(stdout: str) -> dict[str, str]:
    """The summary table as {row name: value}."""
    lines = stdout[stdout.index("cxi_async summary") :].splitlines()[2:]
    rows = {}
    for line in lines:
        name, _, value = line.strip().partition("  ")
        if name:
            rows[name.strip()] = value.strip()
    return rows


# --------------------------------------------------------------------------- no Ray needed


def test_help_lists_the_commands():
    done = run_cli(REPO, "--help", timeout=60)
    assert done.returncode == 0, done.stderr
    for word in ("run", "check", "status", "health", "--set", "config"):
        assert word in done.stdout
    assert done.stderr == ""


def test_command_help_and_version():
    check_help = run_cli(REPO, "check", "--help", timeout=60)
    assert check_help.returncode == 0, check_help.stderr
    assert "--pipeline-config" in check_help.stdout
    from cxi_async import __version__

    version = run_cli(REPO, "--version", timeout=60)
    assert version.returncode == 0
    assert version.stdout.strip() == f"cxi_async {__version__}"


async def test_sighup_stops_gracefully_like_sigterm_and_a_second_signal_aborts():
    """The driver's handler, with real signals: a hang-up asks for the graceful stop (it
    does not kill the driver), and any second stop signal asks for the abort."""
    from cxi_async.__main__ import _SignalState

    state = _SignalState(asyncio.get_running_loop())
    try:
        os.kill(os.getpid(), signal.SIGHUP)
        await asyncio.wait_for(state.first.wait(), 30)  # a bound on a hang, not a timing
        assert (state.name, state.second.is_set()) == ("SIGHUP", False)
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.wait_for(state.second.wait(), 30)
        assert state.name == "SIGTERM"
    finally:
        state.restore()
    assert signal.getsignal(signal.SIGHUP) == signal.SIG_DFL


def test_an_embedded_ray_is_started_with_sighup_ignored():
    """Ray's processes inherit the disposition: the group's hang-up does not kill them."""
    from cxi_async.pipeline import _local_ray_ignores_hangup

    before = signal.getsignal(signal.SIGHUP)
    with _local_ray_ignores_hangup(local=True):
        assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
    assert signal.getsignal(signal.SIGHUP) == before
    with _local_ray_ignores_hangup(local=False):  # a cluster of its own: nothing to change
        assert signal.getsignal(signal.SIGHUP) == before


@pytest.mark.parametrize(
    ("how", "key"),
    [
        ("file", "processing.credit"),  # unknown key in the TOML file
        ("--set processing.credits=-1", "processing.credits"),
        ("--set geometry.geom_file=missing.geom", "geometry.geom_file"),
        ("--set output.events_per_fil=3", "output.events_per_fil"),
    ],
)
def test_bad_config_is_one_line_and_exit_2(tmp_path, how, key):
    path, _ = write_config(tmp_path)
    args = [str(path)]
    if how == "file":
        path.write_text(path.read_text().replace("credits =", "credit ="))
    else:
        args += how.split(" ", 1)
    done = run_cli(tmp_path, *args, timeout=60)
    assert done.returncode == 2
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("cxi_async: ")
    assert key in lines[0]
    assert "Traceback" not in done.stderr
    assert done.stdout == ""
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- a clean run


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory):
    """The tiny replay run to its end once; what it left is snapshotted for the tests."""
    directory = tmp_path_factory.mktemp("clean")
    path, config = write_config(directory)
    done = run_cli(directory, str(path))
    assert done.returncode == 0, done.stderr[-3000:]
    out = directory / "out" / RUN
    return SimpleNamespace(
        directory=directory,
        config_path=path,
        config=config,
        done=done,
        out=out,
        names=sorted(p.name for p in out.iterdir()),
        cxi=sorted(p.name for p in out.glob("*.cxi")),
        files_lst=(out / "files.lst").read_text().splitlines(),
        events_lst=(out / "events.lst").read_text().splitlines(),
    )


def test_clean_run_writes_exactly_the_truth(clean_run):
    done, out, config = clean_run.done, clean_run.out, clean_run.config
    rows = summary_rows(done.stdout)
    events = {k: e for k, e in read_cxi_files(out).items() if e["file"].name in clean_run.cxi}
    kept, filtered = check_against_truth(events, truth_for(config), PANEL_HEIGHT)
    assert len(events) == kept
    assert rows["stopped because"] == "replay finished and Q2 drained"
    assert rows["events seen"] == str(kept + filtered)
    assert rows["written (hits)"] == str(kept)
    assert rows["filtered (< min_num_peak)"] == str(filtered)
    assert rows["batches taken from Q2"] == str(config.replay.num_batches)
    assert rows["still in flight"] == rows["abandoned (stop)"] == "0"
    assert rows["files written"] == str(len(clean_run.cxi))

    expected = {
        *clean_run.cxi,
        "peaknet.geom",
        "files.lst",
        "events.lst",
        "status.json",
        f"peaknet_{RUN}_report.json",
    }
    assert set(clean_run.names) == expected
    # files.lst is in the order files finished; two writes may overlap, so compare as sets
    assert sorted(clean_run.files_lst) == [str(out.resolve() / name) for name in clean_run.cxi]
    assert len(clean_run.events_lst) == kept
    final = report(out)
    assert final["stats"]["events_written"] == kept
    assert final["stats"]["batches_in_flight"] == 0
    assert_accounting(final["stats"])
    assert {f["path"] for f in final["files"]} == set(clean_run.files_lst)


@pytest.mark.slow  # long: the default set stays under 10 minutes on 2 cores
def test_restart_in_the_same_directory_continues(clean_run, tmp_path):
    """Same output.run: new numbers after the old files and a crashed writer's leftover."""
    out = clean_run.out
    first = sequence_numbers(out)
    assert first == list(range(len(first)))
    leftover = out / f"peaknet_{RUN}_{first[-1] + 3:06d}.cxi.inprogress"
    leftover.write_bytes(b"half a file")
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.cxi")}
    path, config = write_config(clean_run.directory, "replay.seed=1", "replay.num_batches=3")
    done = run_cli(clean_run.directory, str(path))
    assert done.returncode == 0, done.stderr[-3000:]

    assert not leftover.exists(), "the .inprogress leftover was neither removed nor reported"
    assert {
        p.name: p.stat().st_mtime_ns for p in out.glob("*.cxi") if p.name in before
    } == before, "a file of the first run was rewritten"
    numbers = sequence_numbers(out)
    second = [n for n in numbers if n not in first]
    assert second and min(second) > first[-1] + 3, (first, second)
    assert len(numbers) == len(set(numbers))

    files_lst = (out / "files.lst").read_text().splitlines()
    assert len(files_lst) == len(set(files_lst))
    assert files_lst[: len(clean_run.files_lst)] == clean_run.files_lst
    assert sorted(files_lst) == sorted(str(p.resolve()) for p in out.glob("*.cxi"))
    events = read_cxi_files(out)  # also: no event twice across both runs
    truth = {**truth_for(clean_run.config), **truth_for(config)}
    kept, _ = check_against_truth(events, truth, PANEL_HEIGHT)
    assert len(events) == kept
    assert len((out / "events.lst").read_text().splitlines()) == kept


# --------------------------------------------------------------------------- graceful stops


def stop_drill(
    cli,
    tmp_path: Path,
    overrides: list[str],
    ready: Callable[[dict], bool],
    sig: signal.Signals,
    group: bool = False,
) -> None:
    """Start, wait until status.json shows `ready`, signal once; the run must finish cleanly."""
    path, config = write_config(tmp_path, *overrides)
    out = tmp_path / "out" / RUN
    run = cli(tmp_path, str(path))
    run.wait_for_log("cxi_async: started in")
    run.wait_for("progress in status.json", lambda: ready(status(out)), START_TIMEOUT_S)
    run.send(sig, group=group)
    done = run.finish()
    assert done.returncode == 0, run.tail()
    assert "finishing what is in flight" in done.stderr
    flushed = re.search(r"draining: .*; finishing (\d+) batches in flight", done.stderr)
    assert flushed and int(flushed.group(1)) >= 1, "nothing was in flight at the signal"
    rows = summary_rows(done.stdout)
    assert rows["stopped because"] == "asked to drain and stop"
    assert status(out)["state"] == "stopped"

    stats = report(out)["stats"]
    assert_accounting(stats)
    assert stats["batches_in_flight"] == 0
    assert stats["batches_abandoned"] == 0
    assert stats["batches_taken"] < config.replay.num_batches, "the run ended before the signal"
    assert rows["written (hits)"] == str(stats["events_written"])
    events = read_cxi_files(out)
    kept, _ = check_against_truth(events, taken_truth(config, stats["batches_taken"]), PANEL_HEIGHT)
    assert len(events) == kept == stats["events_written"]
    assert not list(out.glob("*.inprogress"))
    listed = (out / "files.lst").read_text().splitlines()
    assert sorted(listed) == sorted(str(p.resolve()) for p in out.glob("*.cxi"))
    assert len((out / "events.lst").read_text().splitlines()) == kept


@pytest.mark.slow  # long: the default set stays under 10 minutes on 2 cores
def test_sigterm_during_a_file_write_flushes_and_exits_0(cli, tmp_path):
    stop_drill(
        cli,
        tmp_path,
        ["debug.write_delay_s=2.0", "replay.num_batches=12"],
        ready=lambda s: s.get("events_seen", 0) > 0 and s.get("state") == "running",
        sig=signal.SIGTERM,
    )


@pytest.mark.slow  # ~45 s; the default set drills the handler itself (test_sighup_stops_...)
def test_sighup_of_a_closed_terminal_flushes_and_exits_0(cli, tmp_path):
    """SIGHUP to the whole process group, as a closed terminal or SSH session sends it."""
    stop_drill(
        cli,
        tmp_path,
        ["debug.write_delay_s=2.0", "replay.num_batches=12"],
        ready=lambda s: s.get("events_seen", 0) > 0 and s.get("state") == "running",
        sig=signal.SIGHUP,
        group=True,
    )


@pytest.mark.slow
def test_ctrl_c_during_a_finders_work_flushes_and_exits_0(cli, tmp_path):
    """SIGINT to the whole process group, as a terminal's Ctrl+C sends it (Ray's too)."""
    stop_drill(
        cli,
        tmp_path,
        ["debug.find_delay_s=3.0", "replay.num_batches=12"],
        ready=lambda s: s.get("credits_in_use", 0) > 0 and s.get("events_seen", 0) == 0,
        sig=signal.SIGINT,
        group=True,
    )


@pytest.mark.slow
def test_sigterm_while_the_coordinator_awaits_a_credit(cli, tmp_path):
    stop_drill(
        cli,
        tmp_path,
        [
            "processing.credits=1",
            "output.events_per_file=3",
            "debug.write_delay_s=2.0",
            "replay.num_batches=12",
        ],
        ready=lambda s: s.get("credits_in_use") == 1 and s.get("q2_depth", 0) > 0,
        sig=signal.SIGTERM,
    )


@pytest.mark.slow
def test_second_sigint_aborts_then_a_restart_cleans_up(cli, tmp_path):
    path, config = write_config(tmp_path, "debug.write_delay_s=3.0", "replay.num_batches=12")
    out = tmp_path / "out" / RUN
    run = cli(tmp_path, str(path))
    run.wait_for_log("cxi_async: started in")
    run.wait_for("a batch in flight", lambda: status(out).get("credits_in_use", 0) > 0, 60)
    run.send(signal.SIGINT)
    run.wait_for_log("finishing what is in flight", timeout=60)
    run.send(signal.SIGINT)
    done = run.finish()
    assert done.returncode == 130, run.tail()
    assert "aborting" in done.stderr

    stats = report(out)["stats"]
    assert_accounting(stats)
    assert stats["batches_in_flight"] == 0
    assert stats["batches_abandoned"] > 0
    events = read_cxi_files(out)  # every .cxi opens: none is half written
    check_written_subset(events, truth_for(config))
    assert len(events) >= stats["events_written"]
    # An abort may leave a file renamed after the coordinator asked for the list: not listed then.
    listed = lines(out / "files.lst")  # absent when no file was finished
    assert set(listed) <= {str(p.resolve()) for p in out.glob("*.cxi")}
    first = sequence_numbers(out)
    leftovers = sorted(out.glob("*.inprogress"))
    highest = max([*first, *(sequence_number(p) for p in leftovers)], default=-1)

    path, config2 = write_config(tmp_path, "replay.seed=1", "replay.num_batches=3")
    again = run_cli(tmp_path, str(path))
    assert again.returncode == 0, again.stderr[-3000:]
    assert not list(out.glob("*.inprogress")), "leftovers of the aborted run are still there"
    second = [n for n in sequence_numbers(out) if n not in first]
    assert second and min(second) > highest
    for p in out.glob("*.cxi"):
        with h5py.File(p, "r"):
            pass
    listed_after = (out / "files.lst").read_text().splitlines()
    assert len(listed_after) == len(set(listed_after))
    assert listed_after[: len(listed)] == listed
    assert set(listed_after) <= {str(p.resolve()) for p in out.glob("*.cxi")}
    second_files = {str(p.resolve()) for p in out.glob("*.cxi") if sequence_number(p) in second}
    assert second_files <= set(listed_after)
    check_written_subset(read_cxi_files(out), {**truth_for(config), **truth_for(config2)})
