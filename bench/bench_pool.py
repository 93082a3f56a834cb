"""Bench: fixed finder pools against the adaptive pool on a stepped replay load.

    python bench/bench_pool.py [--fixed 1,2,3] [--auto 1:4] [--steps 0:40,40:160,100:40]
        [--duration 160] [--batch-size 8] [--num-cpus 2] [--config config.toml]
        [--set section.key=value ...] [--json out.json] [--out-dir DIR]

The coordinator drives the "auto" run with core/autoscale.PoolPolicy; bench/README.md has
the measured run and the command that made it.

Each run (one per fixed size, then auto) starts ``Pipeline.start(config, overrides)`` with the
replay producer enabled and ``replay.rate_steps`` = ``--steps`` (``seconds:events/s``, the
first at 0), enough batches for ``--duration`` seconds, a Q2 large enough never to make the
producer wait, and credits from ``credits_for`` (the fixed pools get what their size needs;
auto starts with min's and the coordinator scales them). A sampler reads ``Pipeline.stats()``
every ``--interval`` s: Q2 depth, pool size, events done (written + filtered).

Reported per run:
  - events/s: events done over the time from the start to the last event;
  - per step: offered and achieved events/s, the peak Q2 depth and, after a step up, the
    seconds until Q2 stopped growing (the time of the segment's peak depth, when the depth
    later fell; "never" when it was still growing at the segment's end);
  - the trace (t, Q2 depth, pool size, events) in --json.
The issue's bar: auto reaches the best fixed pool's events/s within 10 %; after a step up, Q2
stops growing within a stated time (the settle column).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cxi_async.config import load_config
from cxi_async.core.autoscale import credits_for
from cxi_async.pipeline import Pipeline

REPO = Path(__file__).resolve().parents[1]


def parse_steps(text: str) -> list[tuple[float, float]]:
    """ "0:40,40:160" -> [(0.0, 40.0), (40.0, 160.0)]"""
    steps = [tuple(float(x) for x in part.split(":")) for part in text.split(",") if part]
    if not steps or steps[0][0] != 0 or any(len(s) != 2 for s in steps):
        raise SystemExit(f"--steps {text!r}: give seconds:events/s pairs, the first at 0")
    return [(s[0], s[1]) for s in steps]


def offered_events(steps: list[tuple[float, float]], duration: float) -> float:
    edges = [s for s, _ in steps] + [duration]
    return sum(r * max(0.0, edges[k + 1] - s) for k, (s, r) in enumerate(steps))


def overrides_for(args: argparse.Namespace, pool: int | tuple[int, int], out_dir: Path) -> list:
    steps = parse_steps(args.steps)
    batches = math.ceil(offered_events(steps, args.duration) / args.batch_size)
    cfg = load_config(args.config, args.set, check_paths=False)
    inbox, writers = cfg.processing.finder_inbox, cfg.output.num_writers
    per_file = cfg.output.events_per_file
    first = pool if isinstance(pool, int) else pool[0]
    credits = max(
        cfg.processing.credits, credits_for(first, inbox, writers, per_file, args.batch_size)
    )
    sets = [
        f"ray.namespace=cxi-pool-{uuid.uuid4().hex[:8]}",
        f"ray.num_cpus={args.num_cpus}",
        "replay.enabled=true",
        f"replay.batch_size={args.batch_size}",
        f"replay.num_batches={batches}",
        "replay.unique_batches=4",
        f"replay.rate_steps={[list(s) for s in steps]}",
        f"queue.maxsize_per_shard={batches + 1}",
        f"processing.num_finders={first}",
        f"processing.credits={credits}",
        f'output.output_dir="{out_dir}"',
        "stop.idle_timeout_s=10",
    ]
    if not isinstance(pool, int):
        sets += [f"processing.min_finders={pool[0]}", f"processing.max_finders={pool[1]}"]
    return [*sets, *args.set]  # the command line wins


def pool_size(stats: dict) -> int:
    """The pool's size in the stats: the coordinator's own count once it has one."""
    if isinstance(stats.get("pool_size"), int):
        return stats["pool_size"]
    return len(stats.get("finders") or [])


async def run_one(args: argparse.Namespace, pool: int | tuple[int, int]) -> dict[str, Any]:
    label = f"fixed {pool}" if isinstance(pool, int) else f"auto {pool[0]}..{pool[1]}"
    root = Path(args.out_dir) if args.out_dir else Path(tempfile.mkdtemp(prefix="cxi_pool_"))
    out_dir = root / label.replace(" ", "_").replace(".", "")
    trace: list[tuple[float, int, int, int]] = []
    try:
        pipeline = await Pipeline.start(args.config, overrides_for(args, pool, out_dir))
        t0 = time.monotonic()

        async def sample() -> None:
            while True:
                with contextlib.suppress(Exception):
                    s = await pipeline.stats()
                    done = s["events_written"] + s["events_filtered"]
                    trace.append((time.monotonic() - t0, s["q2_depth"], pool_size(s), done))
                await asyncio.sleep(args.interval)

        sampler = asyncio.ensure_future(sample())
        final = await pipeline.wait()
        sampler.cancel()
    finally:
        if not args.out_dir:
            shutil.rmtree(root, ignore_errors=True)
    return {"label": label, "pool": pool, "trace": trace, **summarize(args, trace, final)}


def summarize(args: argparse.Namespace, trace: list, final: dict) -> dict[str, Any]:
    total = final["events_written"] + final["events_filtered"]
    last = next((t for t, _, _, e in trace if e >= total), trace[-1][0] if trace else 0.0)
    steps = parse_steps(args.steps)
    edges = [s for s, _ in steps] + [math.inf]
    segments = []
    for k, (start, rate) in enumerate(steps):
        rows = [r for r in trace if start <= r[0] < edges[k + 1]]
        if len(rows) < 2:
            continue
        peak = max(rows, key=lambda r: r[1])
        fell = rows[-1][1] < peak[1]
        up = k > 0 and rate > steps[k - 1][1]
        segments.append(
            {
                "from_s": start,
                "offered_eps": rate,
                "achieved_eps": (rows[-1][3] - rows[0][3]) / max(rows[-1][0] - rows[0][0], 1e-9),
                "peak_q2": peak[1],
                "settle_s": (peak[0] - start if fell else None) if up else None,
                "pool": sorted({r[2] for r in rows}),
            }
        )
    return {
        "events": total,
        "events_per_s": total / last if last else 0.0,
        "segments": segments,
        "pool_sizes": sorted({r[2] for r in trace}),
    }


def report(results: list[dict]) -> None:
    for r in results:
        print(
            f"\n{r['label']}: {r['events']} events, {r['events_per_s']:.1f} ev/s, pool sizes "
            f"{r['pool_sizes']}"
        )
        for s in r["segments"]:
            settle = (
                "" if s["settle_s"] is None else f", Q2 stopped growing after {s['settle_s']:.0f} s"
            )
            print(
                f"  from {s['from_s']:>5.0f} s: offered {s['offered_eps']:.0f} ev/s, achieved "
                f"{s['achieved_eps']:.1f}, peak Q2 {s['peak_q2']}, pool {s['pool']}{settle}"
            )
    fixed = [r for r in results if isinstance(r["pool"], int)]
    auto = [r for r in results if not isinstance(r["pool"], int)]
    if fixed and auto:
        best = max(fixed, key=lambda r: r["events_per_s"])
        for a in auto:
            ratio = a["events_per_s"] / best["events_per_s"] if best["events_per_s"] else 0.0
            verdict = "within 10 %" if ratio >= 0.9 else "NOT within 10 %"
            print(
                f"\n{a['label']} reaches {ratio:.0%} of the best fixed pool ({best['label']}): "
                f"{verdict}"
            )
            if len(a["pool_sizes"]) <= 1:
                print(
                    "  the pool never changed size: the load never held Q2 up with busy finders "
                    "for autoscale.grow_after_s (see core/autoscale.py)."
                )


async def run_all(args: argparse.Namespace, pools: list) -> list[dict]:
    """One after another, in one event loop and one Ray (started by the first run)."""
    return [await run_one(args, pool) for pool in pools]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fixed", default="1,2,3", help="fixed pool sizes, comma-separated")
    ap.add_argument("--auto", default="1:4", help="min:max of the adaptive pool ('' to skip)")
    ap.add_argument("--steps", default="0:40,40:160,100:40", help="seconds:events/s, ...")
    ap.add_argument("--duration", type=float, default=160.0, help="seconds of offered load")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--num-cpus", type=int, default=2)
    ap.add_argument("--interval", type=float, default=1.0, help="seconds between stats samples")
    ap.add_argument("--config", default=str(REPO / "config.toml"))
    ap.add_argument("--set", action="append", default=[], help="section.key=value override")
    ap.add_argument("--json", help="write the results (traces included) here")
    ap.add_argument("--out-dir", help="keep the CXI files here (default: a temporary directory)")
    args = ap.parse_args(argv)
    pools: list[int | tuple[int, int]] = [int(n) for n in args.fixed.split(",") if n]
    if args.auto:
        low, high = (int(x) for x in args.auto.split(":"))
        pools.append((low, high))
    results = asyncio.run(run_all(args, pools))
    report(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
