"""Bench: the output disk's own sequential write rate, in files the size of a CXI file.

    python bench/bench_disk.py [--dir DIR] [--events-per-file 16] [--event-mb 8.70]
        [--files 3] [--mode buffered|direct|both] [--json]

Writes ``--files`` files of ``events-per-file x event-mb`` MB each (one CXI file's worth) into
DIR, one after the other, each fsynced before the next starts, then deletes them. Blocks are one
ePix10k2M frame (8.65 MB) from a buffer of random bytes made once (incompressible: a virtual
disk may compress or deduplicate zeros). Two ways, the same bytes:

  - buffered: ``write()`` into the page cache, then ``fsync`` (what ``dd conv=fsync`` does):
    includes the kernel's copy into the page cache;
  - direct: ``O_DIRECT`` writes (the device reads the buffer itself), then ``fsync``:
    the device's own rate, without the page-cache copy.

MB/s = bytes / (time from the first write to the last fsync), 1 MB = 1e6 bytes; the median
over files is reported, and events/s = MB/s / event-mb is the ceiling the disk sets for a
writer that makes every file durable. bench_pipeline.py calls :func:`measure_disk_rate` in
the directory the pipeline writes to, in the same invocation.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import mmap
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

MB = 1e6
FRAME_BYTES = 5632 * 384 * 4  # one ePix10k2M slab frame, float32 (a multiple of 4096)
EVENT_MB = 8.70  # measured bytes per written event (frame + peak arrays), see README
MODES = ("buffered", "direct")
ALIGN = 4096  # O_DIRECT: buffer, offset and length aligned to the device's block (<= 4096)


@dataclass
class DiskRate:
    """Sequential write rate of one mode in one directory (per-file numbers in lists)."""

    mode: str
    directory: str
    file_bytes: int
    files: int
    mb_per_s: float | None  # median over files; None when the mode is not supported
    mb_per_s_each: list[float] = field(default_factory=list)
    fsync_fraction: float | None = None  # share of the time spent in fsync (median)
    error: str | None = None

    def events_per_s(self, event_mb: float = EVENT_MB) -> float | None:
        return None if self.mb_per_s is None else self.mb_per_s / event_mb


def _aligned_random(nbytes: int) -> mmap.mmap:
    """Page-aligned (anonymous mmap) buffer of random bytes: O_DIRECT needs the alignment."""
    size = -(-nbytes // ALIGN) * ALIGN
    buf = mmap.mmap(-1, size)
    chunk = os.urandom(1 << 20)
    for off in range(0, size, len(chunk)):
        buf[off : off + len(chunk)] = chunk[: size - off]
    return buf


def _write_one(path: Path, buf: mmap.mmap, block: int, file_bytes: int, direct: bool) -> tuple:
    """(seconds, fsync seconds) to write and fsync one file of file_bytes."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | (os.O_DIRECT if direct else 0)
    view = memoryview(buf)
    t0 = time.perf_counter()
    fd = os.open(path, flags, 0o644)
    try:
        done = 0
        while done < file_bytes:
            n = min(block, file_bytes - done)
            if direct:
                n = -(-n // ALIGN) * ALIGN  # the tail rounds up (a few KB at most)
            done += os.pwrite(fd, view[:n], done)
        t1 = time.perf_counter()
        os.fsync(fd)
    finally:
        os.close(fd)
    t2 = time.perf_counter()
    return t2 - t0, t2 - t1, done


def measure_disk_rate(
    directory: str | os.PathLike[str],
    file_bytes: int,
    *,
    files: int = 3,
    mode: str = "direct",
    block: int = FRAME_BYTES,
    buffer: mmap.mmap | None = None,
) -> DiskRate:
    """Write ``files`` files of ``file_bytes`` in ``directory``, fsync each, delete them.

    ``mode`` is "buffered" or "direct" (O_DIRECT). A filesystem that refuses O_DIRECT
    (EINVAL, e.g. some tmpfs) gives ``mb_per_s=None`` and the reason in ``error``.
    """
    if mode not in MODES:
        raise ValueError(f"disk-rate mode {mode!r} is not one of {', '.join(MODES)}")
    if files < 1 or file_bytes < 1:
        raise ValueError(f"disk rate needs files, file_bytes >= 1; got {files}, {file_bytes}")
    directory = Path(directory)
    buf = buffer if buffer is not None else _aligned_random(block)
    rates, fsync_share = [], []
    out = DiskRate(mode, str(directory), file_bytes, files, None)
    for _ in range(files):
        path = directory / f".disk_rate_{uuid.uuid4().hex[:8]}.tmp"
        try:
            seconds, fsync_s, written = _write_one(path, buf, block, file_bytes, mode == "direct")
        except OSError as exc:
            if exc.errno == errno.EINVAL and mode == "direct":
                out.error = f"O_DIRECT is not supported in {directory}: {exc.strerror}"
                return out
            raise
        finally:
            with contextlib.suppress(OSError):
                path.unlink()
        rates.append(written / seconds / MB)
        fsync_share.append(fsync_s / seconds)
    out.mb_per_s = statistics.median(rates)
    out.mb_per_s_each = rates
    out.fsync_fraction = statistics.median(fsync_share)
    return out


def describe(rate: DiskRate, event_mb: float = EVENT_MB) -> str:
    """One line: mode, median MB/s (range), implied events/s ceiling."""
    if rate.mb_per_s is None:
        return f"{rate.mode}: not measured ({rate.error})"
    lo, hi = min(rate.mb_per_s_each), max(rate.mb_per_s_each)
    share = 100 * (rate.fsync_fraction or 0)
    return (
        f"{rate.mode:<8} {rate.mb_per_s:6.0f} MB/s (files {lo:.0f}..{hi:.0f}; fsync {share:.0f} % "
        f"of the time) = {rate.events_per_s(event_mb):5.1f} events/s at {event_mb:.2f} MB/event"
    )


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dir", default=None, help="where to write (default: the temp dir)")
    p.add_argument("--events-per-file", type=int, default=16)
    p.add_argument("--event-mb", type=float, default=EVENT_MB)
    p.add_argument("--files", type=int, default=3)
    p.add_argument("--mode", choices=(*MODES, "both"), default="both")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    args = p.parse_args(argv)
    directory = Path(args.dir or tempfile.gettempdir())
    file_bytes = int(args.events_per_file * args.event_mb * MB)
    buf = _aligned_random(FRAME_BYTES)
    modes = MODES if args.mode == "both" else (args.mode,)
    results = [
        measure_disk_rate(directory, file_bytes, files=args.files, mode=m, buffer=buf)
        for m in modes
    ]
    if args.json:
        print(json.dumps([asdict(r) for r in results], indent=1))
        return 0
    print(
        f"disk rate in {directory}: {args.files} files of {file_bytes / MB:.0f} MB "
        f"({args.events_per_file} events x {args.event_mb:.2f} MB), fsync per file"
    )
    for r in results:
        print("  " + describe(r, args.event_mb))
    return 0


if __name__ == "__main__":
    sys.exit(main())
