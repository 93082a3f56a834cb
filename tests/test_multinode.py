"""Two Ray nodes on this machine: the [placement] settings decide where finders and writers run.

A private cluster is started the way an operator would (`ray start --head`, then a second
`ray start --address`), each node with its own custom resource (`node_a`, `node_b`) and label
(`cxi-node=a` / `b`); node b also has its own IP, 127.0.0.2. The pipeline runs as
`python -m cxi_async cfg.toml` in a subprocess attached to it, never in this process (the
session's local Ray must not be touched). The run report records the node of every finder
and writer; the CXI files are checked against the replay's ground truth. Each run costs
20-40 s, so the module is marked slow.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from cxi_async.config import Config, dump_toml, load_config
from cxi_async.replay.producer import truth_for
from tests.conftest import check_against_truth, read_cxi_files, tiny_overrides

pytestmark = pytest.mark.slow

RUN = "r0001"
START_TIMEOUT_S = 90.0
RUN_TIMEOUT_S = 300.0
KILL_GRACE_S = 5.0  # `ray start --block` does not exit promptly on SIGTERM
# Token authentication is on by default for `ray start`; this private cluster turns it off.
ENV = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
_namespaces = itertools.count()

_NODES = """
import json, sys, time, ray
ray.init(address=sys.argv[1], log_to_driver=False)
deadline = time.monotonic() + 60
while True:
    ids = {r: [n["NodeID"], n["NodeManagerAddress"]] for n in ray.nodes() if n["Alive"]
           for r in n["Resources"] if r in ("node_a", "node_b")}
    if len(ids) == 2 or time.monotonic() > deadline:
        break
    time.sleep(0.5)
print(json.dumps(ids))
"""


@dataclass
class Cluster:
    address: str
    node_ids: dict[str, str]  # "node_a" / "node_b" -> Ray node id
    node_ips: dict[str, str]  # "node_a" / "node_b" -> the IP Ray reports for it


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_node(args: list[str], log: Path) -> subprocess.Popen:
    """`ray start ... --block` in its own process group, so that teardown can kill it all."""
    with open(log, "wb") as out:
        return subprocess.Popen(
            [str(Path(sys.executable).parent / "ray"), "start", *args, "--block"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=ENV,
            start_new_session=True,
        )


def _wait_started(proc: subprocess.Popen, log: Path) -> None:
    """Until the node reports it is up; skip (with the log's tail) if `ray start` cannot run."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        if "block forever" in text:
            return
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    tail = " | ".join(log.read_text(errors="replace").strip().splitlines()[-3:])
    pytest.skip(f"`ray start` could not start a node here: {tail}")


def _in_session(sid: int) -> list[psutil.Process]:
    """The processes of one `ray start`'s session: GCS and raylet share its process group, but
    each Ray worker makes its own group, so only the session id finds them all."""
    found = []
    for p in psutil.process_iter():
        with contextlib.suppress(OSError):
            if os.getsid(p.pid) == sid:
                found.append(p)
    return found


def _kill(procs: list[subprocess.Popen]) -> None:
    """SIGTERM each node's process group, then SIGKILL all of its session after a grace period."""
    for proc in procs:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + KILL_GRACE_S
    for proc in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(max(0.1, deadline - time.monotonic()))
    for proc in procs:
        left = _in_session(proc.pid)
        for p in left:
            with contextlib.suppress(psutil.Error):
                p.kill()
        psutil.wait_procs(left, timeout=10)
        proc.wait()


@pytest.fixture(scope="module")
def two_nodes() -> Iterator[Cluster]:
    if not (Path(sys.executable).parent / "ray").exists():
        pytest.skip("the `ray` command is not installed beside this Python")
    # A private temp dir keeps this cluster out of /tmp/ray, so `ray.init("auto")` elsewhere on
    # the machine never finds it; short, because Ray's unix sockets live under it.
    temp = Path(tempfile.mkdtemp(prefix="cxmn", dir="/tmp"))
    port = _free_port()
    address = f"127.0.0.1:{port}"
    common = ["--num-cpus=1", f"--temp-dir={temp}", "--disable-usage-stats"]
    procs: list[subprocess.Popen] = []
    try:
        procs.append(
            _start_node(
                ["--head", f"--port={port}", "--node-ip-address=127.0.0.1",
                 "--include-dashboard=false", *common,
                 '--resources={"node_a": 1}', "--labels=cxi-node=a"],
                temp / "head.log",
            )
        )  # fmt: skip
        _wait_started(procs[0], temp / "head.log")
        procs.append(
            _start_node(
                [f"--address={address}", "--node-ip-address=127.0.0.2", *common,
                 '--resources={"node_b": 1}', "--labels=cxi-node=b"],
                temp / "worker.log",
            )
        )  # fmt: skip
        _wait_started(procs[1], temp / "worker.log")
        found = subprocess.run(
            [sys.executable, "-c", _NODES, address],
            env=ENV,
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT_S,
        )
        nodes = json.loads(found.stdout.strip().splitlines()[-1]) if found.stdout else {}
        if set(nodes) != {"node_a", "node_b"}:
            pytest.skip(f"the two-node cluster did not come up: {found.stderr[-300:]}")
        yield Cluster(
            address, {k: v[0] for k, v in nodes.items()}, {k: v[1] for k, v in nodes.items()}
        )
    finally:
        _kill(procs)
        shutil.rmtree(temp, ignore_errors=True)


def run_pipeline(cluster: Cluster, tmp_path: Path, *overrides: str) -> tuple[Config, dict, str]:
    """`python -m cxi_async cfg.toml` against the cluster; (config, run report, output)."""
    namespace = f"test-multinode-{os.getpid()}-{next(_namespaces)}"
    settings = [
        *tiny_overrides(tmp_path, namespace),
        f"ray.address={cluster.address}",
        f"output.run={RUN}",
        "processing.finder_num_cpus=0.5",
        "processing.writer_num_cpus=0.25",
        *overrides,
    ]
    config = load_config(None, settings, check_paths=False)
    path = tmp_path / "cfg.toml"
    path.write_text(dump_toml(config))
    proc = subprocess.run(
        [sys.executable, "-m", "cxi_async", str(path)],
        cwd=tmp_path,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )
    output = proc.stdout + proc.stderr
    if proc.returncode != 0:
        return config, {"returncode": proc.returncode}, output
    out = Path(config.output.output_dir) / RUN
    report = json.loads((out / f"{config.output.file_prefix}_{RUN}_report.json").read_text())
    report["returncode"] = proc.returncode
    return config, report, output


def check_output(config: Config) -> None:
    out = Path(config.output.output_dir) / RUN
    events = read_cxi_files(out)
    kept, _ = check_against_truth(events, truth_for(config), panel_height=32)
    assert len(events) == kept > 0


def test_spread_finders_land_on_both_nodes(two_nodes, tmp_path):
    # Four small finders: Ray's default policy put three on one node here, SPREAD two on each.
    config, report, output = run_pipeline(
        two_nodes,
        tmp_path,
        "placement.finder_strategy=SPREAD",
        "processing.num_finders=4",
        "processing.finder_num_cpus=0.1",
    )
    assert report["returncode"] == 0, output
    finders = report["stats"]["finders"]
    per_node = collections.Counter(f["node_id"] for f in finders)
    assert per_node == {node: 2 for node in two_nodes.node_ids.values()}, output
    assert sum(f["processed"] for f in finders) == config.replay.num_batches
    assert report["stats"]["events_rejected"] == 0
    check_output(config)


def test_strict_spread_placement_group_puts_a_finder_on_each_node(two_nodes, tmp_path):
    config, report, output = run_pipeline(
        two_nodes,
        tmp_path,
        "placement.finder_placement_group=STRICT_SPREAD",
        "processing.num_finders=2",
        "processing.finder_num_cpus=0.1",
    )
    assert report["returncode"] == 0, output
    nodes = sorted(f["node_id"] for f in report["stats"]["finders"])
    assert nodes == sorted(two_nodes.node_ids.values()), output
    check_output(config)


def test_writer_resource_and_finder_labels_pin_the_actors(two_nodes, tmp_path):
    config, report, output = run_pipeline(
        two_nodes,
        tmp_path,
        "placement.writer_resources={node_b = 1}",
        'placement.finder_label_selector={cxi-node = "a"}',
    )
    assert report["returncode"] == 0, output
    assert [w["node_id"] for w in report["stats"]["writers"]] == [two_nodes.node_ids["node_b"]]
    nodes = {f["node_id"] for f in report["stats"]["finders"]}
    assert nodes == {two_nodes.node_ids["node_a"]}
    check_output(config)


def test_writer_node_ip_pins_the_writer(two_nodes, tmp_path):
    # Node b runs at 127.0.0.2 (the head reported the host's IP here despite its
    # --node-ip-address=127.0.0.1), so the IPs differ and name one node each.
    assert two_nodes.node_ips["node_a"] != two_nodes.node_ips["node_b"]
    config, report, output = run_pipeline(
        two_nodes, tmp_path, f"placement.writer_node_ip={two_nodes.node_ips['node_b']}"
    )
    assert report["returncode"] == 0, output
    assert [w["node_id"] for w in report["stats"]["writers"]] == [two_nodes.node_ids["node_b"]]
    check_output(config)


def test_a_resource_no_node_has_is_refused_at_start(two_nodes, tmp_path):
    _, report, output = run_pipeline(
        two_nodes, tmp_path, "placement.finder_resources={cxi_cpu = 1}"
    )
    assert report["returncode"] != 0
    assert "placement.finder_resources asks each finder for 1 'cxi_cpu'" in output, output
    assert list((tmp_path / "out" / RUN).glob("*.cxi")) == []
