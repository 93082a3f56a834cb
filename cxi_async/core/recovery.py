"""Files a dead writer renamed but never reported: found on disk, so nothing is written twice.

A writer renames a file and then sends `FileDone`; if it dies in between, the coordinator's
ledger still counts the file's events as unfiled and would have them written again. Each
file records the (delivery id, event index) pairs it holds (`cxi.DELIVERY_PATH`) and the
coordinator run they belong to (`cxi.RUN_ID_ATTR`), so before re-submitting anything the
coordinator reads them back from the files of this run it was never told about.

Which files to read, cheaply: a dead writer k only renamed files whose sequence number is
k modulo the number of writers, in the output directory or a run directory, no older than
the run, and not already listed (every reported file is, and a start lists earlier runs'
leftovers). No Ray here: the coordinator calls `unreported_files` from a worker thread.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np

from cxi_async.core import cxi

log = logging.getLogger(__name__)

MTIME_SLACK_S = 60.0  # clocks of a shared file system's clients may disagree this much

Pair = tuple[int, int]


def recorded_events(path: str | os.PathLike[str], run_id: str) -> list[Pair] | None:
    """The (delivery id, event index) pairs a finished file holds, in file order, or None
    when it is not a file of run `run_id` (another run, another pipeline, an older writer)."""
    with h5py.File(path, "r") as f:
        owner = f.attrs.get(cxi.RUN_ID_ATTR)
        if isinstance(owner, bytes):
            owner = owner.decode()
        if owner != run_id or cxi.DELIVERY_PATH not in f:
            return None
        pairs = np.asarray(f[cxi.DELIVERY_PATH][()], dtype=np.int64).reshape(-1, 2)
    return [(int(d), int(e)) for d, e in pairs]


def candidate_files(
    directories: list[Path],
    prefix: str,
    writer: int,
    num_writers: int,
    since: float,
    is_listed: Callable[[Path], bool],
) -> list[Path]:
    """Finished `.cxi` files writer `writer` may have renamed at or after `since` (unix time)
    and that are not listed, sorted by path."""
    pattern = re.compile(rf"{re.escape(prefix)}_.+_(\d{{6,}})\.cxi")
    found = []
    for directory in directories:
        try:
            entries = list(os.scandir(directory))
        except FileNotFoundError:
            continue
        for entry in entries:
            match = pattern.fullmatch(entry.name)
            if match is None or int(match.group(1)) % num_writers != writer:
                continue
            path = Path(entry.path)
            if is_listed(path):
                continue
            try:
                if entry.stat().st_mtime < since - MTIME_SLACK_S:
                    continue
            except FileNotFoundError:
                continue
            found.append(path)
    return sorted(found)


def run_directories(output_dir: Path, with_runs: bool) -> list[Path]:
    """The output directory and, for metadata runs, its run sub-directories."""
    dirs = [output_dir]
    if with_runs:
        dirs += sorted(p for p in output_dir.iterdir() if p.is_dir())
    return dirs


def unreported_files(
    directories: list[Path],
    prefix: str,
    writer: int,
    num_writers: int,
    since: float,
    run_id: str,
    is_listed: Callable[[Path], bool],
) -> list[tuple[Path, list[Pair]]]:
    """The files of run `run_id` that writer `writer` renamed and nobody listed, each with
    the pairs it holds. A file that cannot be read is skipped with a warning (its events
    are then written again, as before this existed)."""
    out = []
    for path in candidate_files(directories, prefix, writer, num_writers, since, is_listed):
        try:
            pairs = recorded_events(path, run_id)
        except (OSError, KeyError, ValueError) as exc:
            log.warning("could not read %s to see which events it holds: %s", path, exc)
            continue
        if pairs:
            out.append((path, pairs))
    return out
