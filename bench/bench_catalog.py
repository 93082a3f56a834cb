"""Bench: the catalog's cost per listed file stays flat up to 100,000 files.

    python bench/bench_catalog.py [--files 100000] [--events-per-file 16] [--runs 0]
        [--fsync] [--dir DIR] [--json]

Lists ``--files`` finished files through the ``Catalog`` API, one ``add_file`` per file with
``min_interval_s = 0`` (every file appended at once: the worst case), as the coordinator does. The
files are empty placeholders named as the writers name them (the catalog only checks that they
exist), created before the clock runs. With ``--runs N`` the files are spread over N run
sub-directories (``output.run_from_metadata``), so each run's own lists are appended too.

Reports, per block of 1,000 files, the seconds per file and the process RSS after the block,
then the ratio of the last block's cost to the first's (the issue's bound: within 2x) and the
RSS growth. A restart (constructing a second Catalog on the full lists: the load that cuts a
torn line and rebuilds the dedup digests) is timed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cxi_async.core.catalog import Catalog

BLOCK = 1000


def rss_mb() -> float:
    """Resident memory of this process now, from /proc (MB = 2**20 bytes)."""
    with open("/proc/self/statm") as fh:
        pages = int(fh.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def make_files(out: Path, n: int, runs: int) -> list[Path]:
    paths = []
    for i in range(n):
        directory = out / f"r{i % runs:04d}" if runs else out
        path = directory / f"peaknet_r{i % max(runs, 1):04d}_{i:06d}.cxi"
        paths.append(path)
    for directory in {p.parent for p in paths}:
        directory.mkdir(parents=True, exist_ok=True)
    for p in paths:
        p.touch()
    return paths


def run(out: Path, n: int, events: int, runs: int, fsync: bool) -> dict:
    paths = make_files(out, n, runs)
    cat = Catalog(out, "peaknet", "bench", fsync=fsync, min_interval_s=0.0)
    blocks: list[dict] = []
    rss0 = rss_mb()
    t_block = time.perf_counter()
    for i, path in enumerate(paths, 1):
        cat.add_file(path, events)
        if i % BLOCK == 0:
            now = time.perf_counter()
            blocks.append({"files": i, "s_per_file": (now - t_block) / BLOCK, "rss_mb": rss_mb()})
            t_block = now
    t0 = time.perf_counter()
    again = Catalog(out, "peaknet", "bench2", fsync=fsync)
    restart_s = time.perf_counter() - t0
    assert again.files_listed == n
    first, last = blocks[0]["s_per_file"], blocks[-1]["s_per_file"]
    return {
        "files": n,
        "events_per_file": events,
        "runs": runs,
        "fsync": fsync,
        "first_block_ms_per_file": first * 1e3,
        "last_block_ms_per_file": last * 1e3,
        "median_block_ms_per_file": statistics.median(b["s_per_file"] for b in blocks) * 1e3,
        "max_block_ms_per_file": max(b["s_per_file"] for b in blocks) * 1e3,
        "last_over_first": last / first,
        "rss_start_mb": rss0,
        "rss_end_mb": blocks[-1]["rss_mb"],
        "rss_growth_bytes_per_file": (blocks[-1]["rss_mb"] - rss0) * 2**20 / n,
        "events_lst_mb": (out / "events.lst").stat().st_size / 1e6,
        "restart_s": restart_s,
        "blocks": blocks,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--events-per-file", type=int, default=16)
    parser.add_argument("--runs", type=int, default=0)
    parser.add_argument("--fsync", action="store_true")
    parser.add_argument("--dir", type=Path, default=None, help="parent of the scratch directory")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.files < BLOCK:
        parser.error(f"--files must be at least {BLOCK}")
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="bench_catalog.") as tmp:
        report = run(Path(tmp), args.files, args.events_per_file, args.runs, args.fsync)
    if args.json:
        print(json.dumps(report, indent=1))
        return 0
    for b in report["blocks"]:
        if b["files"] in (BLOCK, args.files) or b["files"] % (args.files // 10) == 0:
            print(
                f"{b['files']:>8} files  {b['s_per_file'] * 1e3:8.4f} ms/file  "
                f"RSS {b['rss_mb']:.1f} MB"
            )
    print(
        f"first 1,000: {report['first_block_ms_per_file']:.4f} ms/file; last 1,000: "
        f"{report['last_block_ms_per_file']:.4f} ms/file; last/first = "
        f"{report['last_over_first']:.2f} (median block {report['median_block_ms_per_file']:.4f},"
        f" max {report['max_block_ms_per_file']:.4f} ms/file)"
    )
    print(
        f"RSS {report['rss_start_mb']:.1f} -> {report['rss_end_mb']:.1f} MB "
        f"({report['rss_growth_bytes_per_file']:.0f} bytes/file); events.lst "
        f"{report['events_lst_mb']:.0f} MB; restart (load) {report['restart_s']:.2f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
