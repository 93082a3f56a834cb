"""Soak bench: tens of thousands of replayed events; memory, latency and the lists stay true.

    python bench/bench_soak.py [--events 40000] [--batch-size 8] [--panels 4]
        [--panel-shape 64 64] [--padded-shape 64 64] [--interval 5] [--fsync]
        [--out-dir DIR] [--plot bench/soak.png] [--json bench/soak.json]

Runs the real pipeline (``Pipeline.start``) on the replay producer in a local Ray
(``num_cpus=2``), with a reduced detector shape and ``replay.unique_batches = 4`` (four
batches generated, replayed under new ids) so that the run fits on the disk. Every
``--interval`` seconds it samples the RSS of every Ray actor process (by process title:
Coordinator, Finder, Writer, the Q2 shard, ReplayProducer), the latency p50/p99 (over its
last 20,000 batches), events written, and the ledger (batches in flight, bounded by the
credits). At the end it checks that ``files.lst`` names exactly the ``.cxi`` files on disk
and ``events.lst`` exactly their frames (``//0`` .. ``//n-1`` of each, from nPeaks), writes
the samples as JSON and draws them (``--plot``). Not a CI test: it takes minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import h5py
import psutil
import ray

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_pipeline import _role  # noqa: E402  (the bench's process-title roles)

from cxi_async.config import load_config  # noqa: E402
from cxi_async.pipeline import Pipeline  # noqa: E402

ACTOR_ROLES = {"Coordinator", "Finder", "Writer", "FifoShard", "RemoteQ2Shard", "ReplayProducer"}


def actor_rss() -> dict[str, float]:
    """RSS (MB) of every Ray actor process of this bench's local Ray (its process tree: the
    machine may run other Ray clusters)."""
    me = os.getpid()
    out: dict[str, float] = {}
    for proc in psutil.Process(me).children(recursive=True):
        try:
            role = _role(proc, me)
            if role not in ACTOR_ROLES and "Shard" not in role:
                continue
            out[f"{role} {proc.pid}"] = proc.memory_info().rss / 2**20
        except psutil.Error:
            continue
    return out


def check_lists(out: Path) -> dict:
    """files.lst vs the .cxi files on disk, events.lst vs their frames: exact."""
    on_disk = sorted(str(p.resolve()) for p in out.rglob("*.cxi"))
    listed = (out / "files.lst").read_text().splitlines()
    expected_events = []
    for path in listed:
        with h5py.File(path, "r") as f:
            n = f["/entry_1/result_1/nPeaks"].shape[0]
        expected_events.extend(f"{path} //{i}" for i in range(n))
    events = (out / "events.lst").read_text().splitlines()
    return {
        "files_on_disk": len(on_disk),
        "files_listed": len(listed),
        "files_match": sorted(listed) == on_disk and len(set(listed)) == len(listed),
        "events_listed": len(events),
        "events_in_files": len(expected_events),
        "events_match": events == expected_events,
        "inprogress_left": len(list(out.rglob("*.inprogress"))),
    }


async def soak(args: argparse.Namespace, out: Path) -> dict:
    batches = max(1, args.events // args.batch_size)
    overrides = [
        f"ray.namespace=soak-{os.getpid()}",
        f"output.output_dir={out}",
        f"output.fsync={'true' if args.fsync else 'false'}",
        "output.run=soak",
        "replay.enabled=true",
        f"replay.num_batches={batches}",
        f"replay.batch_size={args.batch_size}",
        "replay.unique_batches=4",
        f"replay.num_panels={args.panels}",
        f"replay.panel_shape=[{args.panel_shape[0]}, {args.panel_shape[1]}]",
        f"replay.padded_shape=[{args.padded_shape[0]}, {args.padded_shape[1]}]",
        "replay.peaks_per_event=15",
        "peak_finding.min_num_peak=5",
        "processing.num_finders=2",
        "processing.finder_num_cpus=0.25",
        "processing.writer_num_cpus=0.25",
        "system.log_level=WARNING",
    ]
    config = load_config(None, overrides)
    samples: list[dict] = []
    t0 = time.monotonic()
    pipeline = await Pipeline.start(config)
    waiter = asyncio.ensure_future(pipeline.wait())
    while not waiter.done():
        try:
            stats = await asyncio.wait_for(pipeline.stats(), 10)
        except Exception:  # stopping
            stats = None
        if stats is not None:
            samples.append(
                {
                    "t": time.monotonic() - t0,
                    "events_written": stats["events_written"],
                    "events_seen": stats["events_seen"],
                    "latency_p50_s": stats["latency_p50_s"],
                    "latency_p99_s": stats["latency_p99_s"],
                    "batches_in_flight": stats["batches_in_flight"],
                    "rss_mb": actor_rss(),
                }
            )
        await asyncio.wait({waiter}, timeout=args.interval)
    final = waiter.result()
    elapsed = time.monotonic() - t0
    lists = check_lists(out / "soak")
    return {
        "events_requested": batches * args.batch_size,
        "batches": batches,
        "shape": {"panels": args.panels, "panel": args.panel_shape, "padded": args.padded_shape},
        "fsync": args.fsync,
        "elapsed_s": elapsed,
        "final": {
            k: final.get(k)
            for k in (
                "batches_taken",
                "batches_done",
                "events_seen",
                "events_written",
                "events_filtered",
                "events_rejected",
                "events_doubled",
                "files",
                "latency_p50_s",
                "latency_p99_s",
                "stop_reason",
            )
        },
        "lists": lists,
        "samples": samples,
    }


def summarize(report: dict) -> dict:
    """Over the second half of the run (after the actors' warm-up): RSS of each actor and the
    latency in its first vs last quarter of samples; and the largest ledger (batches in flight)."""
    samples = [s for s in report["samples"] if s["rss_mb"]]
    samples = samples[len(samples) // 2 :]
    n = len(samples)
    if n < 4:
        return {}
    first, last = samples[: n // 4], samples[-(n // 4) :]

    def mean_rss(rows: list[dict]) -> dict[str, float]:
        acc: dict[str, list[float]] = collections.defaultdict(list)
        for r in rows:
            for k, v in r["rss_mb"].items():
                acc[k].append(v)
        return {k: sum(v) / len(v) for k, v in acc.items()}

    def mean(rows: list[dict], key: str) -> float | None:
        vals = [r[key] for r in rows if r[key] is not None]
        return sum(vals) / len(vals) if vals else None

    a, b = mean_rss(first), mean_rss(last)
    return {
        "rss_second_half_start_mb": a,
        "rss_end_mb": {k: b[k] for k in b},
        "rss_growth_mb": {k: b[k] - a[k] for k in a if k in b},
        "latency_p50_first_last_s": [mean(first, "latency_p50_s"), mean(last, "latency_p50_s")],
        "latency_p99_first_last_s": [mean(first, "latency_p99_s"), mean(last, "latency_p99_s")],
        "batches_in_flight_max": max(
            (s["batches_in_flight"] for s in report["samples"]), default=None
        ),
    }


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = report["samples"]
    t = [s["t"] for s in samples]
    fig, axes = plt.subplots(4, 1, figsize=(9, 11), sharex=True)
    keys = sorted({k for s in samples for k in s["rss_mb"]})
    for k in keys:
        axes[0].plot(t, [s["rss_mb"].get(k) for s in samples], label=k)
    axes[0].set_ylabel("RSS (MB)")
    axes[0].legend(fontsize=7, ncol=2)
    axes[0].set_title(
        f"soak: {report['final']['events_seen']} events, {report['final']['files']} files, "
        f"lists match: {report['lists']['files_match'] and report['lists']['events_match']}"
    )
    axes[1].plot(t, [s["latency_p50_s"] for s in samples], label="p50")
    axes[1].plot(t, [s["latency_p99_s"] for s in samples], label="p99")
    axes[1].set_ylabel("latency (s)")
    axes[1].legend(fontsize=8)
    axes[2].plot(t, [s["batches_in_flight"] for s in samples])
    axes[2].set_ylabel("ledger (batches in flight)")
    axes[3].plot(t, [s["events_written"] for s in samples])
    axes[3].set_ylabel("events written")
    axes[3].set_xlabel("seconds since start")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=40_000)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--panels", type=int, default=4)
    parser.add_argument("--panel-shape", type=int, nargs=2, default=[64, 64])
    parser.add_argument("--padded-shape", type=int, nargs=2, default=[64, 64])
    parser.add_argument("--interval", type=float, default=5.0)
    parser.add_argument("--fsync", action="store_true")
    parser.add_argument("--out-dir", type=Path, default=None, help="kept; else a temp dir")
    parser.add_argument("--plot", type=Path, default=ROOT / "bench" / "soak.png")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    out = args.out_dir or Path(tempfile.mkdtemp(prefix="soak.", dir=ROOT / "bench"))
    out.mkdir(parents=True, exist_ok=True)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        report = asyncio.run(soak(args, out))
    finally:
        ray.shutdown()
        if args.out_dir is None:
            shutil.rmtree(out, ignore_errors=True)
    report["summary"] = summarize(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    plot(report, args.plot)
    print(json.dumps({k: report[k] for k in ("elapsed_s", "final", "lists", "summary")}, indent=1))
    return 0 if report["lists"]["files_match"] and report["lists"]["events_match"] else 1


if __name__ == "__main__":
    sys.exit(main())
