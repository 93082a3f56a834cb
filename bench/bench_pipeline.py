"""Bench: the whole pipeline on synthetic Q2 load: events/s, latency, memory, copies, CPU.

    python bench/bench_pipeline.py [--events N | --batches N] [--repeats 3] [--finders 2]
        [--credits 8] [--batch-size 8] [--dtype float32|float16|bfloat16]
        [--transport inline|ref] [--zero-copy/--no-zero-copy] [--fsync on|off|both]
        [--writers 1] [--baseline/--no-baseline] [--disk-rate/--no-disk-rate]
        [--json out.json] [--out-dir DIR]

One local Ray (``num_cpus=2``) for the whole invocation; every repeat uses a fresh namespace
and a fresh output directory (deleted afterwards unless --out-dir). The base configuration is
the repository's config.toml (what ``python -m cxi_async config.toml`` runs) plus the flags.

A repeat, in the default ``--order producer-first``:
  1. the replay producer (replay.producer; ``replay.unique_batches`` batches generated once
     and replayed under new ids) puts every batch into a Q2 large enough to hold them all, so
     it never has to retry; the bench waits until Q2 holds ``--prefill`` batches (default all);
  2. ``Pipeline.start(config)`` creates the coordinator, finders and writers and starts draining;
  3. THE TIMED WINDOW runs from ``Pipeline.start()`` returning (the coordinator is taking) to
     ``Pipeline.wait()`` returning (every event is in a renamed file or was filtered, every
     batch acked, the actors stopped). events = written + filtered.
``--order pipeline-first`` is the stock path instead (``Pipeline.start`` with replay enabled,
coordinator first): the producer generates and puts inside the window.

Memory is sampled every ``--sample-interval`` s over the process tree of this Ray instance
(this driver, gcs_server, raylet and every worker it forks; psutil):
  - RSS: the sum of RSS (a shared object-store page counts once per process that touched it,
    so this over-counts; it is what "sum of RSS of the Ray processes" means);
  - footprint: private (anonymous) memory of the tree + the resident pages of the raylet's
    plasma file (the object store's high-water mark; Q2's prefilled items are in it);
  - +store: growth of the object store in use over the window, as the GCS sees it (total -
    available ``object_store_memory``, ~1 s granularity): the pipeline's in-flight objects;
  - PSS (``--pss``, opt-in: reading smaps costs real CPU with a large store mapped).
CPU seconds and minor page faults per process over the window are grouped by role
(``ray::Finder`` ... from process titles); the baseline runs first, on the same Ray.

Durability (``--disk-rate``, on by default): before each repeat's window (after the prefill)
bench_disk.measure_disk_rate writes a few files of one CXI file's size (events_per_file x
bytes per event), fsync per file, into the directory the pipeline then writes to, buffered
and O_DIRECT; the faster median is "the disk's rate" and the report gives the pipeline's
written MB/s (window and steady) as a % of it. ``--fsync both`` runs every repeat with fsync
on and then off, interleaved, in the same Ray.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")  # numpy/torch/filters single-threaded per actor

import msgspec
import psutil
import ray

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from baseline_sync import baseline_overrides, run_baseline
from bench_disk import MODES as DISK_MODES
from bench_disk import measure_disk_rate

from cxi_async.actors.q2_shard import connect_shards
from cxi_async.config import Config, load_config
from cxi_async.core.q2 import shard_names
from cxi_async.pipeline import Pipeline
from cxi_async.replay.producer import new_replay_producer

REPO = Path(__file__).resolve().parents[1]
GB = 1e9
MB = 1e6
NUM_CPUS = 2
ITEMSIZE = {"float32": 4, "float16": 2, "bfloat16": 2}


# --------------------------------------------------------------------------- sizes and copies


def sizes(config: Config) -> dict[str, float]:
    """Bytes per event of what moves: logits, padded image, slab frame, peak arrays."""
    r = config.replay
    (h, w), (hp, wp), c = r.panel_shape, r.padded_shape, r.num_panels
    m = config.peak_finding.max_num_peak
    return {
        "logits": c * 2 * hp * wp * ITEMSIZE[r.dtype],
        "image": c * hp * wp * 4,
        "slab": c * h * w * 4,
        "peaks": m * (4 + 4 + 4 + 4 + 4 + 2),  # peakXPosRaw .. peakSegPosRaw, padded to max
    }


def copies_per_event(config: Config, hit_rate: float) -> list[dict]:
    """The analytical count of bytes copied per event, stage by stage, from the design."""
    s = sizes(config)
    r = config.replay
    lg, img, slab, pk = s["logits"], s["image"], s["slab"], s["peaks"]
    rows: list[dict] = []

    def add(stage: str, side: str, nbytes: float, how: str) -> None:
        rows.append({"stage": stage, "side": side, "bytes": nbytes, "how": how})

    if r.transport == "inline":
        if r.zero_copy:
            add("logits: producer -> Q2 put", "producer", lg, "serialised into the put's argument")
            add("logits: Q2 shard holds item", "producer", 0, "zero-copy view of that argument")
            add("logits: shard get return", "pipeline", lg, "shard serialises a new object")
            add("logits: finder reads item", "pipeline", 0, "zero-copy view (read twice)")
        else:
            add(
                "logits: producer -> Q2 put",
                "producer",
                2 * lg,
                "torch pickling: storage -> bytes -> object store (>= 2 copies)",
            )
            add("logits: Q2 shard unpickles", "producer", lg, "torch rebuilds the storage")
            add("logits: shard get return", "pipeline", 2 * lg, "pickled again (>= 2 copies)")
            add("logits: finder unpickles", "pipeline", lg, "torch rebuilds the storage")
    else:
        add("logits: producer ray.put", "producer", lg, "predictions_ref, once per batch")
        add("logits: finder reads ref", "pipeline", 0, "zero-copy numpy view (read twice)")
    add("image: producer ray.put", "producer", img, "once per batch (padded float32)")
    add("image: writer reads ref", "pipeline", 0, "zero-copy view")
    add("slab copy (kept events)", "pipeline", hit_rate * slab, "assemble(): real pixels only")
    add(
        "HDF5 write (kept events)",
        "pipeline",
        hit_rate * (slab + pk),
        "write() into the page cache; fsync is DMA",
    )
    return rows


# --------------------------------------------------------------------------- sampling


def _role(proc: psutil.Process, me: int) -> str:
    if proc.pid == me:
        return "bench driver"
    try:
        cmd = proc.cmdline()
        name = proc.name()
    except psutil.Error:
        return "gone"
    title = cmd[0] if cmd else name
    if title.startswith("ray::"):
        # "ray::Finder.process", "ray::<actor name>:FifoShard.get" -> "Finder", "FifoShard"
        role = title[5:].split(" ", 1)[0].split(".", 1)[0].rsplit(":", 1)[-1]
        if role in ("IDLE", ""):
            return "idle worker"
        if role in ("DashboardAgent", "RuntimeEnvAgent"):
            return "ray services"
        return role
    if name in ("raylet", "gcs_server"):
        return name
    return "ray services"


def _minor_faults(pid: int) -> int:
    """Minor page faults of a process so far (/proc/<pid>/stat field 10).

    A zero-copy read of a fresh object-store page costs one: the page is mapped into the
    reader on first touch, so faults per event show what "zero-copy" still costs.
    """
    with open(f"/proc/{pid}/stat", "rb") as fh:
        stat = fh.read()
    return int(stat[stat.rindex(b")") + 2 :].split()[7])


class Sampler(threading.Thread):
    """Samples CPU, I/O and memory of the Ray tree and the object store every `interval` s.

    Cheap per tick (/proc/<pid>/stat, statm, io; one GCS call; one fstat): 2-5 % of one
    core at 0.2 s (reported as sampler_cpu_s, inside the "bench driver" row). PSS
    (`pss=True`) walks every process's page tables (smaps_rollup) and costs far more with a
    large object store mapped: opt-in.
    """

    def __init__(self, interval: float, gcs_address: str, pss: bool = False) -> None:
        super().__init__(daemon=True, name="bench-sampler")
        self.interval = interval
        self.pss = pss
        self.me = os.getpid()
        self.stop_event = threading.Event()
        self.lock = threading.Lock()
        self.procs: dict[int, psutil.Process] = {}
        self.roles: dict[int, str] = {}
        self.cpu: dict[int, float] = {}  # last seen user+system seconds
        self.io: dict[int, tuple[int, int]] = {}  # last seen (read_chars, write_chars)
        self.faults: dict[int, int] = {}  # last seen minor page faults
        self.series: list[dict] = []
        self.marks: dict[str, dict] = {}
        self.thread_cpu = 0.0
        self.plasma_fd: str | None = None
        self.gcs = None
        try:
            from ray._raylet import GcsClient

            self.gcs = GcsClient(address=gcs_address)
        except Exception:  # internal API; the rest of the sampling still works
            self.gcs = None

    def object_store_used(self) -> float | None:
        """Bytes in the object store per the raylet's report to the GCS (internal API)."""
        if self.gcs is None:
            return None
        try:
            from ray.autoscaler.v2.sdk import get_cluster_resource_state

            state = get_cluster_resource_state(self.gcs)
            used = 0.0
            for node in state.node_states:
                total = node.total_resources.get("object_store_memory", 0.0)
                used += total - node.available_resources.get("object_store_memory", total)
            return used
        except Exception:
            self.gcs = None
            return None

    def plasma_resident(self) -> int | None:
        """Pages of the raylet's (deleted) /dev/shm plasma file: store memory ever touched.

        Plasma reuses its pages but never returns them, so this is a high-water mark over
        the Ray instance's life, and it includes what shards hold that the GCS no longer
        counts (zero-copy views of their put arguments).
        """
        if self.plasma_fd is None:
            raylet = next((p for p, r in self.roles.items() if r == "raylet"), None)
            if raylet is None:
                return None
            with contextlib.suppress(OSError):
                for fd in os.listdir(f"/proc/{raylet}/fd"):
                    path = f"/proc/{raylet}/fd/{fd}"
                    with contextlib.suppress(OSError):
                        if "plasma" in os.readlink(path):
                            self.plasma_fd = path
                            break
        if self.plasma_fd is None:
            return None
        try:
            return os.stat(self.plasma_fd).st_blocks * 512
        except OSError:
            return None

    def _tree(self) -> list[psutil.Process]:
        root = self.procs.get(self.me) or psutil.Process(self.me)
        self.procs[self.me] = root
        found = [root]
        try:
            children = root.children(recursive=True)
        except psutil.Error:
            children = []
        for child in children:
            proc = self.procs.setdefault(child.pid, child)
            found.append(proc)
        return found

    def sample(self) -> dict:
        row: dict[str, Any] = {"t": time.monotonic(), "rss": 0, "private": 0}
        private_by_role: dict[str, int] = defaultdict(int)
        pss = 0
        for proc in self._tree():
            pid = proc.pid
            try:
                with proc.oneshot():
                    role = _role(proc, self.me)
                    known = self.roles.get(pid)
                    if role != "gone" and (known in (None, "idle worker") or role != "idle worker"):
                        self.roles[pid] = role
                    times = proc.cpu_times()
                    self.cpu[pid] = times.user + times.system
                    mem = proc.memory_info()
                    row["rss"] += mem.rss
                    row["private"] += mem.rss - mem.shared  # RssAnon: heap, temporaries
                    private_by_role[self.roles.get(pid, "?")] += mem.rss - mem.shared
                    with contextlib.suppress(psutil.Error, AttributeError):
                        io = proc.io_counters()
                        self.io[pid] = (io.read_chars, io.write_chars)
                    with contextlib.suppress(OSError, IndexError, ValueError):
                        self.faults[pid] = _minor_faults(pid)
                if self.pss:
                    pss += proc.memory_full_info().pss
            except psutil.Error:
                continue
        row["private_by_role"] = dict(private_by_role)
        row["pss"] = pss if self.pss else None
        row["store"] = self.object_store_used()
        row["plasma"] = self.plasma_resident()
        return row

    def mark(self, name: str) -> None:
        """Snapshot CPU and I/O counters now (for the window's per-role CPU seconds)."""
        with self.lock:
            self.series.append(self.sample())
            self.marks[name] = {
                "t": time.monotonic(),
                "cpu": dict(self.cpu),
                "io": dict(self.io),
                "faults": dict(self.faults),
                "machine": psutil.cpu_times(),
                "sampler_cpu": self.thread_cpu,
            }

    def run(self) -> None:
        while not self.stop_event.is_set():
            t = time.thread_time()
            with self.lock:
                self.series.append(self.sample())
            self.thread_cpu += time.thread_time() - t
            self.stop_event.wait(self.interval)

    def finish(self) -> None:
        self.stop_event.set()
        self.join(timeout=10)

    # -- results over [t0, t1] -----------------------------------------------------------

    def window(self, t0: str, t1: str) -> dict:
        a, b = self.marks[t0], self.marks[t1]
        cpu_by_role: dict[str, float] = defaultdict(float)
        wchar_by_role: dict[str, float] = defaultdict(float)
        for pid, end in b["cpu"].items():
            cpu_by_role[self.roles.get(pid, "?")] += end - a["cpu"].get(pid, 0.0)
        faults_by_role: dict[str, int] = defaultdict(int)
        for pid, end_f in b["faults"].items():
            faults_by_role[self.roles.get(pid, "?")] += end_f - a["faults"].get(pid, 0)
        for pid, (_, end_w) in b["io"].items():
            start_w = a["io"].get(pid, (0, 0))[1]
            wchar_by_role[self.roles.get(pid, "?")] += end_w - start_w
        ma, mb = a["machine"], b["machine"]
        fields = ("user", "system", "nice", "irq", "softirq", "steal")
        busy = sum(getattr(mb, f, 0) - getattr(ma, f, 0) for f in fields)
        tree = sum(cpu_by_role.values())
        rows = [r for r in self.series if a["t"] <= r["t"] <= b["t"]]
        return {
            "t0": a["t"],
            "t1": b["t"],
            "cpu_s_by_role": dict(sorted(cpu_by_role.items(), key=lambda kv: -kv[1])),
            "cpu_s_tree": tree,
            "cpu_s_outside_tree": max(0.0, busy - tree),
            "sampler_cpu_s": b["sampler_cpu"] - a["sampler_cpu"],
            "write_chars_by_role": dict(wchar_by_role),
            "minor_faults_by_role": dict(faults_by_role),
            "rows": rows,
        }


def memory_summary(rows: list[dict], before: dict | None) -> dict:
    """Peaks over `rows` (the window), and the values of `before` (just before it)."""

    def peak(key: str) -> float | None:
        values = [r[key] for r in rows if r.get(key) is not None]
        return max(values) if values else None

    by_role: dict[str, float] = defaultdict(float)
    for r in rows:
        for k, v in (r.get("private_by_role") or {}).items():
            by_role[k] = max(by_role[k], v)
    before = before or {}
    private, plasma = peak("private"), peak("plasma")
    store, store0 = peak("store"), before.get("store")
    return {
        "peak_rss_sum_gb": _gb(peak("rss")),
        "peak_private_sum_gb": _gb(private),
        "plasma_resident_gb": _gb(plasma),
        "peak_footprint_gb": _gb(private + plasma) if None not in (private, plasma) else None,
        "peak_pss_sum_gb": _gb(peak("pss")),
        "peak_store_gb": _gb(store),
        "store_at_start_gb": _gb(store0),
        "store_growth_gb": _gb(store - store0) if None not in (store, store0) else None,
        "private_at_start_gb": _gb(before.get("private")),
        "peak_private_by_role_gb": {k: _gb(v) for k, v in sorted(by_role.items())},
    }


def _gb(v: float | None) -> float | None:
    return None if v is None else v / GB


# --------------------------------------------------------------------------- one repeat


def make_config(
    args: argparse.Namespace, namespace: str, out_dir: Path, run: str, fsync: bool | None = None
) -> Config:
    overrides = baseline_overrides(
        dtype=args.dtype,
        batch_size=args.batch_size,
        transport=args.transport,
        zero_copy=args.zero_copy,
        fsync=args.fsync_settings[0] if fsync is None else fsync,
        unique_batches=args.unique_batches,
        num_batches=args.batches,
        namespace=namespace,
    )
    overrides = [o for o in overrides if not o.startswith("queue.name=")]
    overrides += [
        'queue.name="bench_q2"',
        f"processing.num_finders={args.finders}",
        f"processing.credits={args.credits}",
        f"output.num_writers={args.writers}",
        *_events_per_file(args),
        f'output.output_dir="{out_dir}"',
        f'output.run="{run}"',
        "stop.idle_timeout_s=30",  # a stuck run ends; normally stop_when_empty ends it
        f"system.log_level={args.log_level}",
    ]
    if args.geom:
        overrides.append(f'geometry.geom_file="{args.geom}"')
    overrides += args.set
    return load_config(args.config, overrides)


def _events_per_file(args: argparse.Namespace) -> list[str]:
    """The --set override for --events-per-file, none when left to config.toml."""
    n = args.events_per_file
    return [] if n is None else [f"output.events_per_file={n}"]


def measure_disk(args: argparse.Namespace, config: Config, directory: Path) -> dict:
    """The disk's rate in `directory`: files of one CXI file's size, fsync per file."""
    s = sizes(config)
    event_bytes = s["slab"] + s["peaks"]
    file_bytes = int(config.output.events_per_file * event_bytes)
    modes = DISK_MODES if args.disk_mode == "both" else (args.disk_mode,)
    rates = {
        m: measure_disk_rate(directory, file_bytes, files=args.disk_files, mode=m) for m in modes
    }
    best = max((r.mb_per_s for r in rates.values() if r.mb_per_s), default=None)
    return {
        "modes": {m: asdict(r) for m, r in rates.items()},
        "mb_per_s": best,
        "event_mb": event_bytes / MB,
        "file_mb": file_bytes / MB,
    }


async def _wait_prefilled(shard: Any, want: int, run_ref: Any, timeout: float = 600.0) -> int:
    deadline = time.monotonic() + timeout
    depth = 0
    while time.monotonic() < deadline:
        depth = await shard.size.remote()
        if depth >= want:
            return depth
        done, _ = ray.wait([run_ref], timeout=0)
        if done:
            return await shard.size.remote()
        await asyncio.sleep(0.1)
    raise RuntimeError(f"Q2 held only {depth} of {want} batches after {timeout:g} s")


async def wait_for_quiet(max_wait: float, threshold: float = 0.15) -> float:
    """Wait (up to max_wait s) until the machine is mostly idle; returns its busy fraction.

    The machine may be shared (other processes, other Ray instances): a repeat that starts
    under load measures the load. The report shows the CPU used outside the tree anyway.
    """
    deadline = time.monotonic() + max_wait
    while True:
        busy = await asyncio.to_thread(psutil.cpu_percent, 1.0) / 100.0
        if busy <= threshold or time.monotonic() >= deadline:
            return busy


async def run_repeat(args: argparse.Namespace, repeat: int, sampler: Sampler, fsync: bool) -> dict:
    namespace = f"cxi-bench-{uuid.uuid4().hex[:8]}"
    root = Path(args.out_dir) if args.out_dir else Path(tempfile.mkdtemp(prefix="cxi_bench_"))
    run = f"{args.order}-fsync-{'on' if fsync else 'off'}-r{repeat}"
    config = make_config(args, namespace, root, run, fsync)
    no_replay = msgspec.structs.replace(
        config, replay=msgspec.structs.replace(config.replay, enabled=False)
    )
    producer = run_ref = None
    result: dict[str, Any] = {"repeat": repeat, "namespace": namespace, "order": args.order}
    if args.quiet_wait:
        result["machine_busy_before"] = await wait_for_quiet(args.quiet_wait)
    try:
        if args.order == "producer-first":
            t = time.monotonic()
            producer = new_replay_producer(config, 1)
            run_ref = producer.run.remote()
            (shard,) = await asyncio.to_thread(
                connect_shards,
                config.queue.name,
                namespace,
                1,
                config.queue.maxsize_per_shard,
                config.replay.zero_copy,
            )
            want = min(args.prefill or args.batches, args.batches)
            result["prefilled_batches"] = await _wait_prefilled(shard, want, run_ref)
            result["prefill_s"] = time.monotonic() - t
            if args.disk_rate:
                result["disk"] = await asyncio.to_thread(measure_disk, args, config, root)
            sampler.mark(f"pre{repeat}")
            t = time.monotonic()
            pipeline = await Pipeline.start(no_replay)
            result["startup_s"] = time.monotonic() - t
            sampler.mark(f"t0_{repeat}")

            async def stop_after_replay() -> None:
                await run_ref
                await pipeline.coordinator.stop_when_empty.remote("replay finished and Q2 drained")

            watcher = asyncio.ensure_future(stop_after_replay())
            final = await pipeline.wait()
            sampler.mark(f"t1_{repeat}")
            watcher.cancel()
            result["producer"] = await run_ref
        else:
            if args.disk_rate:
                result["disk"] = await asyncio.to_thread(measure_disk, args, config, root)
            sampler.mark(f"pre{repeat}")
            t = time.monotonic()
            pipeline = await Pipeline.start(config)
            result["startup_s"] = time.monotonic() - t
            result["prefilled_batches"] = 0
            sampler.mark(f"t0_{repeat}")
            final = await pipeline.wait()
            sampler.mark(f"t1_{repeat}")
            result["producer"] = pipeline.replay_result
        result["file_times"] = _file_times(Path(final["output_dir"]))
    finally:
        if producer is not None:
            ray.kill(producer)
        for name in shard_names(config.queue.name, 1):
            with contextlib.suppress(ValueError):
                ray.kill(ray.get_actor(name, namespace=namespace))
        if not args.out_dir:
            shutil.rmtree(root, ignore_errors=True)
    window = sampler.window(f"t0_{repeat}", f"t1_{repeat}")
    before = [r for r in sampler.series if r["t"] < window["t0"]]
    result["window_rows"] = len(window["rows"])
    return summarize_repeat(config, result, final, window, before[-1] if before else None)


def _file_times(output_dir: Path) -> list[tuple[float, int]]:
    """(mtime, events) of each written file, in order: the writer's output timeline, from the
    run's catalog (files.lst, and events.lst for the events of each)."""
    events = collections.Counter(
        line.rsplit(" //", 1)[0]
        for line in (output_dir / "events.lst").read_text().splitlines()
        if line.strip()
    )
    out = []
    for path in (output_dir / "files.lst").read_text().splitlines():
        with contextlib.suppress(OSError):
            out.append((os.stat(path).st_mtime, events[path]))
    return sorted(out)


def steady_rate(file_times: list[tuple[float, int]], hit_rate: float) -> float | None:
    """Events/s between the first and the last file (kept events / hit rate).

    Leaves out the start (first batches, imports on first use, the first file filling) and
    so approximates the rate a long run settles at; needs three files or more.
    """
    if len(file_times) < 3 or hit_rate <= 0:
        return None
    span = file_times[-1][0] - file_times[0][0]
    kept = sum(n for _, n in file_times[1:])
    return kept / span / hit_rate if span > 0 else None


PIPELINE_ROLES = ("Coordinator", "Finder", "Writer", "FifoShard", "raylet", "gcs_server")


def summarize_repeat(
    config: Config, result: dict, final: dict, window: dict, before: dict | None
) -> dict:
    """One repeat's numbers: rates from the final stats, CPU and memory from the sampler."""
    wall = window["t1"] - window["t0"]
    events = final["events_written"] + final["events_filtered"]
    written = final["events_written"]
    hit = written / events if events else 0.0
    cpu = window["cpu_s_by_role"]
    pipeline_cpu = sum(cpu.get(role, 0.0) for role in PIPELINE_ROLES)
    batch_bytes = sizes(config)["logits"] * config.replay.batch_size
    steady = steady_rate(result.get("file_times", []), hit)
    mb_s = final["bytes_written"] / wall / MB if wall else None
    per_written = final["bytes_written"] / written if written else None
    steady_mb_s = steady * hit * per_written / MB if steady and per_written else None
    disk = (result.get("disk") or {}).get("mb_per_s")
    return {
        **result,
        "fsync": config.output.fsync,
        "events_per_file": config.output.events_per_file,
        "written_mb_per_s": mb_s,
        "steady_written_mb_per_s": steady_mb_s,
        "disk_mb_per_s": disk,
        "pct_of_disk": 100 * mb_s / disk if disk and mb_s else None,
        "steady_pct_of_disk": 100 * steady_mb_s / disk if disk and steady_mb_s else None,
        "window_s": wall,
        "events": events,
        "events_written": written,
        "events_filtered": final["events_filtered"],
        "events_rejected": final["events_rejected"],
        "batches_done": final["batches_done"],
        "batches_rejected": final["batches_rejected"],
        "events_per_s": events / wall if wall else 0.0,
        "steady_events_per_s": steady,
        "latency_p50_s": final["latency_p50_s"],
        "latency_p99_s": final["latency_p99_s"],
        "files": final["files"],
        "bytes_written": final["bytes_written"],
        "disk_bytes_per_written_event": final["bytes_written"] / written if written else None,
        "write_chars_per_written_event": (
            window["write_chars_by_role"].get("Writer", 0.0) / written if written else None
        ),
        "hit_rate": hit,
        "finders": final["finders"],
        "writers": final["writers"],
        "cpu_s_by_role": cpu,
        "minor_faults_by_role": window["minor_faults_by_role"],
        "cpu_s_tree": window["cpu_s_tree"],
        "cpu_s_outside_tree": window["cpu_s_outside_tree"],
        "sampler_cpu_s": window["sampler_cpu_s"],
        "cpu_utilisation": window["cpu_s_tree"] / (wall * NUM_CPUS) if wall else None,
        "pipeline_cpu_ms_per_event": 1e3 * pipeline_cpu / events if events else None,
        "cpu_bound_ceiling_events_per_s": NUM_CPUS * events / pipeline_cpu
        if pipeline_cpu
        else None,
        "memory": memory_summary(window["rows"], before),
        "bound_credits_x_batch_gb": config.processing.credits * batch_bytes / GB,
        "stop_reason": final.get("stop_reason"),
    }


# --------------------------------------------------------------------------- reporting


def _fmt(v: Any, spec: str = ".2f") -> str:
    if v is None:
        return "-"
    if isinstance(v, float) and math.isnan(v):
        return "-"
    return format(v, spec)


def _onoff(flag: bool) -> str:
    return "on" if flag else "off"


def print_report(report: dict) -> None:
    a = report["settings"]
    reps = report["repeats"]
    print()
    print(
        f"cxi_async pipeline bench: {a['batches']} batches x {a['batch_size']} events, "
        f"{a['dtype']} logits, transport {a['transport']}, zero-copy {_onoff(a['zero_copy'])}, "
        f"fsync {a['fsync']}, {a['finders']} finders, {a['writers']} writer(s), "
        f"{a['credits']} credits, {reps[0]['events_per_file']} events per file, Ray "
        f"num_cpus={NUM_CPUS}, object store {a['object_store_gb']:.1f} GB, order {a['order']}, "
        f"Q2 prefilled with {reps[0].get('prefilled_batches', 0)} batches"
    )
    print(
        "timed window: Pipeline.start() returned (the coordinator is taking) -> Pipeline.wait() "
        "returned (every event in a renamed file or filtered, every batch done); "
        "events = written + filtered"
    )
    _print_table(reps)
    b = report.get("baseline")
    for group in report["groups"]:
        s = group["summary"]
        print(
            f"fsync {_onoff(group['fsync'])}: events/s min / median / max: "
            f"{s['events_per_s_min']:.1f} / {s['events_per_s_median']:.1f} / "
            f"{s['events_per_s_max']:.1f}   steady (first -> last file) median: "
            f"{_fmt(s['steady_events_per_s_median'], '.1f')}   latency p50 / p99 (median): "
            f"{_fmt(s['latency_p50_s'])} / {_fmt(s['latency_p99_s'])} s   written MB/s "
            f"(median): {_fmt(s['written_mb_per_s_median'], '.0f')}"
        )
    print(
        "columns: steady = events/s between the first and the last file; MB/s = file bytes "
        "written / window; disk = the disk's own rate measured just before the window "
        "(bench_disk.py: the faster of buffered and O_DIRECT, fsync per file); %disk = MB/s / "
        "disk; RSS = sum of RSS over the Ray tree (a shared store page counts once per process "
        "that touched it); foot = peak private memory of the tree + object-store pages "
        "resident (plasma high-water, includes Q2's prefilled items); +store = growth of the "
        "object store in use during the window (GCS view: the pipeline's in-flight objects; "
        f"bound credits x batch = {reps[0]['bound_credits_x_batch_gb']:.2f} GB); ms/ev = CPU "
        f"of the pipeline's processes ({', '.join(PIPELINE_ROLES)}) per event; ceil = "
        f"{NUM_CPUS} cores / ms/ev, the rate if nothing but that CPU limited it; CPU% = tree "
        f"CPU / (window x {NUM_CPUS}); other s = CPU used on this machine outside the tree "
        "(shared machine)"
    )
    if b:
        s = report["groups"][0]["summary"]
        print(
            f"baseline (bench/baseline_sync.py: one synchronous loop in the driver, source "
            f"{b['source']}, {b['batches']} batches, fsync "
            f"{_onoff(report['groups'][0]['fsync'])}): {b['events']} events in "
            f"{b['seconds']:.2f} s = {b['events_per_s']:.2f} events/s, latency p50 "
            f"{_fmt(b['latency_p50_s'])} s, peak footprint {_fmt(b.get('peak_footprint_gb'))}"
            " GB; stages " + ", ".join(f"{k} {v:.2f} s" for k, v in b["stage_seconds"].items())
        )
        print(
            f"ratio pipeline / baseline (median events/s, same fsync): "
            f"{s['ratio_vs_baseline']:.1f}x   (steady: "
            f"{_fmt(s.get('steady_ratio_vs_baseline'), '.1f')}x)"
        )
    for group in report["groups"]:
        greps = [r for r in reps if r["fsync"] == group["fsync"]]
        _print_where(greps[group["summary"]["median_index"]], a)
    r = reps[report["summary"]["median_index"]]
    _print_copies(report, r)
    _print_durability(report)


def _print_table(reps: list[dict]) -> None:
    head = (
        f"{'rep':>3} {'fsync':>5} {'events':>6} {'window s':>8} {'ev/s':>6} {'steady':>6} "
        f"{'p50 s':>6} {'p99 s':>6} {'files':>5} {'MB/s':>5} {'disk':>5} {'%disk':>5} "
        f"{'RSS GB':>6} {'foot GB':>7} {'+store':>6} {'ms/ev':>5} {'ceil':>5} {'CPU%':>4} "
        f"{'other s':>7}"
    )
    print(head)
    print("-" * len(head))
    for r in reps:
        m = r["memory"]
        print(
            f"{r['repeat']:>3} {_onoff(r['fsync']):>5} {r['events']:>6} {r['window_s']:>8.2f} "
            f"{r['events_per_s']:>6.1f} {_fmt(r['steady_events_per_s'], '.1f'):>6} "
            f"{_fmt(r['latency_p50_s']):>6} {_fmt(r['latency_p99_s']):>6} {r['files']:>5} "
            f"{_fmt(r['written_mb_per_s'], '.0f'):>5} {_fmt(r['disk_mb_per_s'], '.0f'):>5} "
            f"{_fmt(r['pct_of_disk'], '.0f'):>5} {_fmt(m['peak_rss_sum_gb']):>6} "
            f"{_fmt(m['peak_footprint_gb']):>7} {_fmt(m['store_growth_gb']):>6} "
            f"{_fmt(r['pipeline_cpu_ms_per_event'], '.0f'):>5} "
            f"{_fmt(r['cpu_bound_ceiling_events_per_s'], '.0f'):>5} "
            f"{_fmt(100 * r['cpu_utilisation'], '.0f'):>4} {r['cpu_s_outside_tree']:>7.1f}"
        )


def _print_where(r: dict, a: dict) -> None:
    wall = r["window_s"]
    print()
    print(
        f"where the time goes (fsync {_onoff(r['fsync'])}, repeat {r['repeat']}, the median; "
        "CPU seconds in the window):"
    )
    for role, sec in r["cpu_s_by_role"].items():
        if sec >= 0.05:
            note = " (incl. this bench's sampler: " if role == "bench driver" else ""
            note = f"{note}{r['sampler_cpu_s']:.2f} s)" if note else ""
            faults = r["minor_faults_by_role"].get(role, 0) / r["events"]
            print(
                f"  {role:<16} {sec:7.2f} s  {100 * sec / wall:5.1f} % of one core  "
                f"{1e3 * sec / r['events']:6.1f} ms/event  {faults:7.0f} minor faults/event{note}"
            )
    for f in r["finders"]:
        if "processed" in f:
            print(
                f"  finder {f['index']}: {f['processed']} batches, busy_fraction "
                f"{f['busy_fraction']:.2f} (decode + find, over its lifetime since creation)"
            )
    for w in r["writers"]:
        if "write_seconds" in w:
            print(
                f"  writer {w['index']}: {w['files']} files, write_seconds {w['write_seconds']:.2f}"
                f" = {100 * w['write_seconds'] / wall:.0f} % of the window"
            )
    p = r.get("producer") or {}
    print(
        f"  producer (not in the pipeline's numbers): put_seconds {p.get('put_seconds', 0):.2f}"
        f" for {p.get('batches_put', 0)} batches, generate_seconds "
        f"{p.get('generate_seconds', 0):.2f} ({a['unique_batches']} unique batches); its CPU "
        "inside the window is the ReplayProducer row"
    )


def _print_copies(report: dict, r: dict) -> None:
    print()
    print(f"bytes copied per event (analytical, from the design; hit rate {r['hit_rate']:.2f}):")
    total = {"producer": 0.0, "pipeline": 0.0}
    for row in report["copies"]:
        total[row["side"]] += row["bytes"]
        print(f"  {row['stage']:<30} {row['bytes'] / MB:7.1f} MB  [{row['side']}] {row['how']}")
    print(
        f"  total: pipeline {total['pipeline'] / MB:.1f} MB, producer side "
        f"{total['producer'] / MB:.1f} MB per event"
    )
    print(
        f"measured: file bytes per written event {_fmt(r['disk_bytes_per_written_event'] / MB)}"
        f" MB; bytes passed to the writer process's write() calls per written event "
        f"{_fmt((r['write_chars_per_written_event'] or 0) / MB)} MB"
    )


def _print_durability(report: dict) -> None:
    """The disk's own rate in this run against what the pipeline wrote, per fsync setting."""
    reps = [r for r in report["repeats"] if r.get("disk")]
    if not reps:
        return
    d0 = reps[0]["disk"]
    print()
    print(
        f"durability: the disk's own rate, measured before each window in the pipeline's "
        f"output directory ({report['settings']['disk_files']} files of {d0['file_mb']:.0f} MB "
        f"= one file of {reps[0]['events_per_file']} events x {d0['event_mb']:.2f} MB, fsync "
        "per file; MB/s over the files, median per repeat):"
    )
    for mode in d0["modes"]:
        rates = [r["disk"]["modes"][mode]["mb_per_s"] for r in reps]
        rates = [x for x in rates if x]
        if not rates:
            print(f"  {mode:<8} not measured: {d0['modes'][mode].get('error')}")
            continue
        med = statistics.median(rates)
        print(
            f"  {mode:<8} median {med:5.0f} MB/s (repeats {min(rates):.0f}..{max(rates):.0f})"
            f" = {med / d0['event_mb']:5.1f} written events/s ceiling"
        )
    for group in report["groups"]:
        s = group["summary"]
        if s.get("disk_mb_per_s_median") is None:
            continue
        hit = statistics.median(r["hit_rate"] for r in reps if r["fsync"] == group["fsync"])
        print(
            f"  fsync {_onoff(group['fsync'])}: the pipeline wrote "
            f"{_fmt(s['written_mb_per_s_median'], '.0f')} MB/s over the window, "
            f"{_fmt(s['steady_written_mb_per_s_median'], '.0f')} MB/s steady = "
            f"{_fmt(s['pct_of_disk_median'], '.0f')} % / "
            f"{_fmt(s['steady_pct_of_disk_median'], '.0f')} % of the disk's rate "
            f"({s['disk_mb_per_s_median']:.0f} MB/s = "
            f"{s['disk_mb_per_s_median'] / d0['event_mb'] / hit:.1f} events/s at hit rate "
            f"{hit:.2f}; median of per-repeat ratios)"
        )


def summarize(repeats: list[dict], baseline: dict | None) -> dict:
    rates = [r["events_per_s"] for r in repeats]
    order = sorted(range(len(rates)), key=lambda i: rates[i])
    med = statistics.median(rates)
    steady = _median([r["steady_events_per_s"] for r in repeats])
    out = {
        "events_per_s_min": min(rates),
        "events_per_s_median": med,
        "events_per_s_max": max(rates),
        "steady_events_per_s_median": steady,
        "latency_p50_s": _median([r["latency_p50_s"] for r in repeats]),
        "latency_p99_s": _median([r["latency_p99_s"] for r in repeats]),
        "peak_footprint_gb": max((r["memory"]["peak_footprint_gb"] or 0) for r in repeats),
        "peak_rss_sum_gb": max((r["memory"]["peak_rss_sum_gb"] or 0) for r in repeats),
        "pipeline_cpu_ms_per_event_median": _median(
            [r["pipeline_cpu_ms_per_event"] for r in repeats]
        ),
        "median_index": order[len(order) // 2],
        "written_mb_per_s_median": _median([r.get("written_mb_per_s") for r in repeats]),
        "steady_written_mb_per_s_median": _median(
            [r.get("steady_written_mb_per_s") for r in repeats]
        ),
        "disk_mb_per_s_median": _median([r.get("disk_mb_per_s") for r in repeats]),
        "pct_of_disk_median": _median([r.get("pct_of_disk") for r in repeats]),
        "steady_pct_of_disk_median": _median([r.get("steady_pct_of_disk") for r in repeats]),
    }
    if baseline and baseline["events_per_s"]:
        out["ratio_vs_baseline"] = med / baseline["events_per_s"]
        out["steady_ratio_vs_baseline"] = steady / baseline["events_per_s"] if steady else None
    return out


def _median(values: list[float | None]) -> float | None:
    v = [x for x in values if x is not None]
    return statistics.median(v) if v else None


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Bench the cxi_async pipeline on synthetic Q2 load (see module docstring)."
    )
    n = p.add_mutually_exclusive_group()
    n.add_argument("--events", type=int, help="events per repeat (rounded up to whole batches)")
    n.add_argument("--batches", type=int, help="batches per repeat (default: 192 events)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--finders", type=int, default=2)
    p.add_argument("--credits", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default="float32")
    p.add_argument("--transport", choices=("inline", "ref"), default="inline")
    p.add_argument("--zero-copy", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument(
        "--fsync",
        choices=("on", "off", "both"),
        default="on",
        help="fsync every file (on), never (off), or every repeat with both, interleaved",
    )
    p.add_argument("--no-fsync", dest="fsync", action="store_const", const="off")
    p.add_argument(
        "--disk-rate",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="measure the output disk's own rate before each repeat (bench_disk.py)",
    )
    p.add_argument("--disk-files", type=int, default=3, help="files per disk-rate mode")
    p.add_argument("--disk-mode", choices=(*DISK_MODES, "both"), default="both")
    p.add_argument("--writers", type=int, default=1)
    p.add_argument("--events-per-file", type=int, default=None, help="default: config.toml's value")
    p.add_argument("--baseline", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--baseline-batches", type=int, default=4)
    p.add_argument("--baseline-source", choices=("q2", "list"), default="q2")
    p.add_argument(
        "--order",
        choices=("producer-first", "pipeline-first"),
        default="producer-first",
        help="producer-first: Q2 filled before the clock; pipeline-first: the stock path",
    )
    p.add_argument("--prefill", type=int, default=None, help="batches in Q2 before the clock")
    p.add_argument("--unique-batches", type=int, default=4)
    p.add_argument("--object-store-gb", type=float, default=None, help="default: sized to fit")
    p.add_argument("--sample-interval", type=float, default=0.2)
    p.add_argument("--pss", action="store_true", help="also sample PSS (costs CPU, see Sampler)")
    p.add_argument(
        "--quiet-wait",
        type=float,
        default=120.0,
        help="before each run wait up to this many s for the machine to be idle (0: don't)",
    )
    p.add_argument("--geom", default=None, help="CrystFEL geometry (default: stacked panels)")
    p.add_argument("--config", default=str(REPO / "config.toml"))
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    p.add_argument("--log-level", default="WARNING", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    p.add_argument("--verbose", action="store_true", help="show the actors' logs")
    p.add_argument("--json", metavar="OUT.json", help="write the full report as JSON")
    p.add_argument("--out-dir", help="keep the CXI files here (default: a temp dir, deleted)")
    args = p.parse_args(argv)
    args.fsync_settings = {"on": [True], "off": [False], "both": [True, False]}[args.fsync]
    if args.batches is None:
        events = args.events if args.events is not None else 192
        args.batches = max(1, math.ceil(events / args.batch_size))
    return args


def store_size(args: argparse.Namespace) -> int:
    """An object store that holds Q2 prefilled, the credits in flight and the images."""
    config = load_config(
        args.config,
        [f"replay.dtype={args.dtype}", f"replay.batch_size={args.batch_size}"],
        check_paths=False,
    )
    s = sizes(config)
    per_batch = s["logits"] * args.batch_size
    need = (args.batches + args.credits + 2) * per_batch
    need += (args.unique_batches + 1) * s["image"] * args.batch_size
    need = max(need, (args.baseline_batches + 2) * per_batch)
    return int(need * 1.2 + 1e9)


async def amain(args: argparse.Namespace) -> dict:
    gcs = ray.get_runtime_context().gcs_address
    sampler = Sampler(args.sample_interval, gcs, pss=args.pss)
    sampler.start()
    repeats = []
    baseline = None
    try:
        if args.baseline:  # first: the plasma high-water mark is then its own
            if args.quiet_wait:
                await wait_for_quiet(args.quiet_wait)
            baseline = await asyncio.to_thread(run_baseline_measured, args, sampler)
            print(
                f"baseline: {baseline['events']} events in {baseline['seconds']:.2f} s = "
                f"{baseline['events_per_s']:.2f} events/s",
                flush=True,
            )
        for i in range(args.repeats):
            for fsync in args.fsync_settings:
                res = await run_repeat(args, i, sampler, fsync)
                repeats.append(res)
                disk = res.get("disk_mb_per_s")
                print(
                    f"repeat {i} fsync {'on' if fsync else 'off'}: {res['events']} events in "
                    f"{res['window_s']:.2f} s = {res['events_per_s']:.1f} events/s, "
                    f"{_fmt(res['written_mb_per_s'], '.0f')} MB/s written"
                    + (f" (disk {disk:.0f} MB/s)" if disk else "")
                    + f" (startup {res['startup_s']:.1f} s, prefill "
                    f"{res.get('prefill_s', 0):.1f} s, other load "
                    f"{res['cpu_s_outside_tree']:.1f} CPU s)",
                    flush=True,
                )
    finally:
        sampler.finish()
    config = make_config(args, "copies", Path(tempfile.gettempdir()), "copies")
    hit = statistics.median(r["hit_rate"] for r in repeats)
    groups = []
    for fsync in args.fsync_settings:
        reps = [r for r in repeats if r["fsync"] == fsync]
        groups.append({"fsync": fsync, "summary": summarize(reps, baseline)})
    return {
        "settings": vars(args),
        "machine": {
            "cpus": os.cpu_count(),
            "ram_gb": psutil.virtual_memory().total / GB,
            "python": platform.python_version(),
            "ray": ray.__version__,
        },
        "repeats": repeats,
        "baseline": baseline,
        "summary": groups[0]["summary"],
        "groups": groups,
        "copies": copies_per_event(config, hit),
        "series": sampler.series if args.json else None,
    }


def run_baseline_measured(args: argparse.Namespace, sampler: Sampler) -> dict:
    namespace = f"cxi-baseline-{uuid.uuid4().hex[:8]}"
    config = load_config(
        args.config,
        [
            *baseline_overrides(
                dtype=args.dtype,
                batch_size=args.batch_size,
                transport=args.transport,
                zero_copy=args.zero_copy,
                fsync=args.fsync_settings[0],
                unique_batches=args.unique_batches,
                num_batches=args.baseline_batches,
                namespace=namespace,
            ),
            *_events_per_file(args),
            *([f'geometry.geom_file="{args.geom}"'] if args.geom else []),
        ],
    )
    root = Path(args.out_dir) / "baseline" if args.out_dir else Path(tempfile.mkdtemp())
    sampler.mark("baseline_start")
    start = time.monotonic()
    try:
        result = asdict(
            run_baseline(config, args.baseline_batches, root, source=args.baseline_source)
        )
    finally:
        if not args.out_dir:
            shutil.rmtree(root, ignore_errors=True)
    sampler.mark("baseline_end")
    rows = [r for r in sampler.series if r["t"] >= start]
    before = [r for r in sampler.series if r["t"] < start]
    mem = memory_summary(rows, before[-1] if before else None)
    result["memory"] = mem
    result["peak_footprint_gb"] = mem["peak_footprint_gb"]
    result["peak_rss_sum_gb"] = mem["peak_rss_sum_gb"]
    return result


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    store = int(args.object_store_gb * GB) if args.object_store_gb else store_size(args)
    args.object_store_gb = store / GB
    ray.init(
        address="local",
        num_cpus=NUM_CPUS,
        include_dashboard=False,
        object_store_memory=store,
        log_to_driver=args.verbose,
    )
    try:
        report = asyncio.run(amain(args))
    finally:
        ray.shutdown()
    print_report(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1, default=str))
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
