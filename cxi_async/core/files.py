"""Writing files so that a reader or a crash never sees half of one: the one place for it.

CrystFEL and people read the output directory while the pipeline writes it, so every side
file (lists, status.json, the report, the slab geometry, the replay cell file) is replaced in
one step, and with ``fsync`` made durable before and after that step. The CXI writer
(:mod:`cxi_async.core.cxi`) renames its own ``.inprogress`` files but fsyncs with these.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

__all__ = ["FILE_MODE", "atomic_write", "fsync_dir", "fsync_file"]


def fsync_file(path: str | os.PathLike[str]) -> None:
    """Flush a closed file's bytes to disk (HDF5 closed it; only its path is left)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(directory: str | os.PathLike[str]) -> None:
    """Flush a directory's entries to disk: a rename or a new file survives a crash only then."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _umask() -> int:
    """The process umask, read without changing it where Linux allows (no thread race)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_umask()
"""What ``open()`` would give a new file; ``mkstemp`` alone gives 0600, unreadable to others."""


def atomic_write(
    path: str | os.PathLike[str], text: str | Iterable[str], fsync: bool = False
) -> Path:
    """Replace ``path`` with ``text`` (a string or chunks of one) in one step; returns the path.

    The text goes to a hidden temporary file in the same directory (``.<name>.*.tmp``), which
    is then renamed over ``path``: a reader sees the old content or the new, never half. On
    any failure (a chunk generator raising included) the temporary file is removed and
    ``path`` keeps its old content. The new file gets the usual permissions (0666 less the
    umask), so other users can read it. With ``fsync`` the file is flushed before the rename
    and its directory after it, so the new content survives a crash once this returns.
    """
    path = Path(path)
    chunks = [text] if isinstance(text, str) else text
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, FILE_MODE)
        with open(fd, "w", encoding="utf-8", newline="\n") as fh:
            fh.writelines(chunks)
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if fsync:
        fsync_dir(path.parent)
    return path
