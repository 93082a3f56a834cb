"""CXI (HDF5) file writing: whole-array writes, one frame per chunk, atomic rename.

A file is written as ``<name>.cxi.inprogress`` and renamed to ``<name>.cxi`` only after HDF5
has closed it (and, with ``fsync``, after its bytes are on disk), so a reader or a crash never
sees a half-written ``.cxi``. Without compression the frames bypass the page cache, with
``fsync`` or without: HDF5 allocates every chunk up front (4 KiB aligned) and the frames go to
those offsets with ``O_DIRECT`` writes, which the device reads straight from a reused frame
buffer. Copying 8.65 MB per event into fresh page-cache pages was most of the writer's CPU
(see bench/README.md), and the page cache only delays bytes that must reach the disk anyway;
``fsync = false`` then only skips the fsync of the file and of its directory.
The layout is the one in ``cxi-format.md``; CrystFEL reads it with
``--peaks=cxi`` and a slab geometry. No Ray here: the writer actor calls this from a thread.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import errno
import gc
import logging
import mmap
import os
import re
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import h5py
import numpy as np

import cxi_async
from cxi_async.core.files import fsync_dir, fsync_file
from cxi_async.core.messages import EventPeaks

log = logging.getLogger(__name__)

__all__ = [
    "COMPRESSIONS",
    "CXI_VERSION",
    "CxiEvents",
    "CxiWriteError",
    "SequenceCounter",
    "count_events",
    "cxi_file_name",
    "inprogress_path",
    "leftover_inprogress",
    "write_cxi_file",
]

CXI_VERSION = 140
INPROGRESS_SUFFIX = ".inprogress"
COMPRESSIONS = ("none", "bitshuffle-lz4", "zstd", "gzip")

DATA_PATH = "/entry_1/data_1/data"
RESULT_PATH = "/entry_1/result_1"
PHOTON_ENERGY_PATH = "/LCLS/photon_energy_eV"
TIMESTAMP_PATH = "/LCLS/detector_1/timestamp"
# (N, 2) int64 (delivery id, event index) of each frame, and the file attr naming the
# coordinator run those ids belong to: what lets a coordinator find its own files again.
DELIVERY_PATH = f"{RESULT_PATH}/cxi_async_delivery"
RUN_ID_ATTR = "cxi_async_run_id"

DIRECT_ALIGN = 4096  # O_DIRECT: offsets, lengths and buffers aligned to this (>= any block size)

# File attributes this module owns; caller attrs may not shadow them.
RESERVED_ATTRS = frozenset(
    {
        "cxi_async_version",
        "creation_time",
        "filtered_events",
        "images_missing",
        "compression",
        "n_events",
        "max_num_peak",
    }
)


class CxiWriteError(OSError):
    """Writing a CXI file failed; no ``.cxi`` was left behind and the caller keeps its events.

    ``path`` is the ``.cxi`` that was not written; ``errno`` is the cause's (EIO if it had none).
    ``residue`` is the ``.inprogress`` file that could not be removed (its directory was moved
    away, say), so the caller can remove it once the directory is back; None when none is left.
    """

    path: Path
    residue: Path | None = None

    @classmethod
    def from_cause(cls, path: Path, cause: BaseException) -> CxiWriteError:
        err = cls(f"could not write {path}: {type(cause).__name__}: {cause}")
        err.errno = getattr(cause, "errno", None) or errno.EIO  # str() stays the message
        err.path = path
        return err


# --------------------------------------------------------------------------- events


# (field, dtype, CXI dataset name) for the (N, M) peak arrays, in file order.
_PEAK_COLUMNS: tuple[tuple[str, type, str], ...] = (
    ("peak_fs", np.float32, "peakXPosRaw"),
    ("peak_ss", np.float32, "peakYPosRaw"),
    ("peak_total_intensity", np.float32, "peakTotalIntensity"),
    ("peak_npix", np.int32, "peakNPixels"),
    ("peak_max_value", np.float32, "peakMaximumValue"),
    ("peak_panel", np.int16, "peakSegPosRaw"),
)
# EventPeaks attribute that feeds each peak column in pack().
_PACK_SOURCES = ("fs", "ss", "total_intensity", "npix", "max_value", "panel")


def _column(name: str, value: Any, dtype: type, ndim: int) -> np.ndarray:
    """Coerce without copying when possible; refuse lossy kinds (float -> int)."""
    arr = np.asarray(value)
    try:
        arr = arr.astype(dtype, copy=False, casting="same_kind")
    except TypeError as exc:
        raise ValueError(
            f"CxiEvents.{name} has dtype {arr.dtype}, which cannot become {np.dtype(dtype)}"
        ) from exc
    if arr.ndim != ndim:
        raise ValueError(f"CxiEvents.{name} must be {ndim}-D, got shape {arr.shape}")
    return arr


@dataclass
class CxiEvents:
    """N events bound for one file, as column arrays (peak arrays padded with 0 to M columns).

    Construction checks shapes and coerces dtypes (same kind only), so a writer never finds out
    halfway through a file that a column is malformed. Nothing here is mutated by writing.
    """

    n_peaks: np.ndarray  # (N,) int32
    peak_fs: np.ndarray  # (N, M) float32 -> peakXPosRaw
    peak_ss: np.ndarray  # (N, M) float32 -> peakYPosRaw
    peak_total_intensity: np.ndarray  # (N, M) float32 -> peakTotalIntensity
    peak_npix: np.ndarray  # (N, M) int32 -> peakNPixels
    peak_max_value: np.ndarray  # (N, M) float32 -> peakMaximumValue
    peak_panel: np.ndarray  # (N, M) int16 -> peakSegPosRaw
    photon_energy_ev: np.ndarray  # (N,) float64, NaN where unknown
    timestamp: np.ndarray  # (N,) uint64, 0 where unknown
    batch_id: list[str]  # (N,)
    event_index: np.ndarray  # (N,) int32
    datasets: dict[str, np.ndarray] = dataclasses.field(
        default_factory=dict
    )  # path -> (N,) float64

    def __post_init__(self) -> None:
        self.n_peaks = _column("n_peaks", self.n_peaks, np.int32, 1)
        n = self.n_peaks.shape[0]
        if n < 1:
            raise ValueError("CxiEvents needs at least one event; a CXI file is never empty")
        for field, dtype, _ in _PEAK_COLUMNS:
            setattr(self, field, _column(field, getattr(self, field), dtype, 2))
        m = self.peak_fs.shape[1]
        for field, _, _ in _PEAK_COLUMNS:
            shape = getattr(self, field).shape
            if shape != (n, m):
                raise ValueError(f"CxiEvents.{field} has shape {shape}, expected {(n, m)}")
        self.photon_energy_ev = _column("photon_energy_ev", self.photon_energy_ev, np.float64, 1)
        self.timestamp = _timestamps(self.timestamp)
        self.event_index = _column("event_index", self.event_index, np.int32, 1)
        self.batch_id = [str(b) for b in self.batch_id]
        for field in ("photon_energy_ev", "timestamp", "event_index", "batch_id"):
            if len(getattr(self, field)) != n:
                raise ValueError(
                    f"CxiEvents.{field} has {len(getattr(self, field))} entries, expected {n}"
                )
        self.datasets = {
            path: _column(f"datasets[{path!r}]", values, np.float64, 1)
            for path, values in self.datasets.items()
        }
        for path, values in self.datasets.items():
            if len(values) != n:
                raise ValueError(f"CxiEvents.datasets[{path!r}] has {len(values)} entries, not {n}")
        if n and (self.n_peaks.min() < 0 or self.n_peaks.max() > m):
            raise ValueError(f"CxiEvents.n_peaks must lie in [0, max_num_peak={m}]")

    @property
    def n_events(self) -> int:
        return int(self.n_peaks.shape[0])

    @property
    def max_num_peak(self) -> int:
        return int(self.peak_fs.shape[1])

    @classmethod
    def pack(cls, per_event: Sequence[EventPeaks], max_num_peak: int) -> CxiEvents:
        """Pad per-event 1-D peak arrays into (N, max_num_peak) columns in one vectorised pass.

        An event with more than ``max_num_peak`` peaks is an error: truncating (and counting
        it) is the caller's policy, not the file format's.
        """
        n = len(per_event)
        if n < 1:
            raise ValueError("CxiEvents.pack needs at least one event; a CXI file is never empty")
        if max_num_peak < 1:
            raise ValueError(f"max_num_peak must be >= 1, got {max_num_peak}")
        counts = np.fromiter((len(e.fs) for e in per_event), dtype=np.int64, count=n)
        for src in _PACK_SOURCES[1:]:
            other = np.fromiter((len(getattr(e, src)) for e in per_event), np.int64, count=n)
            bad = np.flatnonzero(other != counts)
            if bad.size:
                e = per_event[int(bad[0])]
                raise ValueError(
                    f"event {e.batch_id!r}[{e.event_index}] has {counts[bad[0]]} fs values "
                    f"but {other[bad[0]]} {src} values; all peak arrays must have equal length"
                )
        over = np.flatnonzero(counts > max_num_peak)
        if over.size:
            e = per_event[int(over[0])]
            raise ValueError(
                f"event {e.batch_id!r}[{e.event_index}] has {counts[over[0]]} peaks, more than "
                f"max_num_peak={max_num_peak}; truncate before packing"
            )
        # Row/column of every peak in the padded arrays: row = its event, col = rank within it.
        rows = np.repeat(np.arange(n), counts)
        starts = np.cumsum(counts) - counts
        cols = np.arange(int(counts.sum())) - np.repeat(starts, counts)
        columns: dict[str, np.ndarray] = {}
        for (field, dtype, _), src in zip(_PEAK_COLUMNS, _PACK_SOURCES, strict=True):
            out = np.zeros((n, max_num_peak), dtype=dtype)
            out[rows, cols] = np.concatenate([np.asarray(getattr(e, src)) for e in per_event])
            columns[field] = out
        return cls(
            n_peaks=counts.astype(np.int32),
            photon_energy_ev=np.array([e.photon_energy_ev for e in per_event], np.float64),
            timestamp=_timestamps([e.timestamp for e in per_event]),
            batch_id=[str(e.batch_id) for e in per_event],
            event_index=np.array([e.event_index for e in per_event], dtype=np.int32),
            datasets=_per_event_datasets(per_event),
            **columns,
        )


def _per_event_datasets(per_event: Sequence[Any]) -> dict[str, np.ndarray]:
    """The events' extra datasets as columns; NaN for an event that lacks one."""
    rows = [dict(getattr(e, "datasets", ())) for e in per_event]
    paths = list(dict.fromkeys(path for row in rows for path in row))
    return {p: np.array([row.get(p, np.nan) for row in rows], np.float64) for p in paths}


def _timestamps(value: Any) -> np.ndarray:
    """uint64 without a float detour (psana timestamps exceed 2**53 and often 2**63)."""
    if isinstance(value, np.ndarray):
        if value.dtype.kind == "f":
            raise ValueError("CxiEvents.timestamp must be integers (uint64), not floats")
        arr = value.astype(np.uint64, copy=False)
    else:
        arr = np.array([int(v) for v in value], dtype=np.uint64)
    if arr.ndim != 1:
        raise ValueError(f"CxiEvents.timestamp must be 1-D, got shape {arr.shape}")
    return arr


# --------------------------------------------------------------------------- naming


def cxi_file_name(prefix: str, run_label: str, seq: int) -> str:
    """``<prefix>_<run_label>_<seq:06d>.cxi``."""
    for what, part in (("prefix", prefix), ("run_label", run_label)):
        if not part or "/" in part or os.sep in part:
            raise ValueError(f"CXI file {what} {part!r} must be non-empty and contain no '/'")
    if seq < 0:
        raise ValueError(f"CXI sequence number must be >= 0, got {seq}")
    return f"{prefix}_{run_label}_{seq:06d}.cxi"


def inprogress_path(final_path: Path) -> Path:
    """Where ``final_path`` is written before the rename."""
    final_path = Path(final_path)
    return final_path.with_name(final_path.name + INPROGRESS_SUFFIX)


def _numbered_files(directory: str | os.PathLike[str], prefix: str) -> list[tuple[int, Path]]:
    """``(seq, path)`` of every ``<prefix>_*_<seq>.cxi`` and ``.cxi.inprogress`` in directory."""
    suffix = re.escape(INPROGRESS_SUFFIX)
    pattern = re.compile(rf"{re.escape(prefix)}_.+_(\d{{6,}})\.cxi(?:{suffix})?")
    with os.scandir(directory) as entries:
        return [
            (int(match.group(1)), Path(entry.path))
            for entry in entries
            if (match := pattern.fullmatch(entry.name))
        ]


def leftover_inprogress(directory: str | os.PathLike[str], prefix: str) -> list[tuple[int, Path]]:
    """``(seq, path)`` of the ``.cxi.inprogress`` files a crashed writer left in directory."""
    return sorted(
        (seq, path)
        for seq, path in _numbered_files(directory, prefix)
        if path.name.endswith(INPROGRESS_SUFFIX)
    )


def count_events(path: str | os.PathLike[str]) -> int:
    """Frames in a finished CXI file (the length of its nPeaks)."""
    with h5py.File(path, "r") as f:
        return int(f[f"{RESULT_PATH}/nPeaks"].shape[0])


class SequenceCounter:
    """Next file sequence number for (directory, prefix).

    Scans existing ``<prefix>_*_<seq:06d>.cxi`` and ``.cxi.inprogress`` files at construction
    and starts after the largest, so numbers never repeat across restarts (a crashed run's
    ``.inprogress`` leftovers count too). The directory must exist. ``next()`` is thread-safe.
    One counter per (directory, prefix): two processes sharing both would collide, which
    ``write_cxi_file`` then reports instead of overwriting.
    """

    def __init__(self, directory: str | os.PathLike[str], prefix: str) -> None:
        self.directory = Path(directory)
        self.prefix = prefix
        self._lock = threading.Lock()
        self._next = self._scan() + 1

    def _scan(self) -> int:
        if not self.directory.is_dir():
            raise FileNotFoundError(
                errno.ENOENT,
                "CXI output directory does not exist; create it before counting sequence numbers",
                str(self.directory),
            )
        return max((seq for seq, _ in _numbered_files(self.directory, self.prefix)), default=-1)

    def peek(self) -> int:
        """The number ``next()`` would return."""
        with self._lock:
            return self._next

    def next(self) -> int:
        with self._lock:
            seq = self._next
            self._next += 1
            return seq


# --------------------------------------------------------------------------- writing


def _compression_kwargs(compression: str) -> dict[str, Any]:
    if compression == "none":
        return {}
    if compression == "gzip":
        return {"compression": "gzip", "compression_opts": 4, "shuffle": True}
    import hdf5plugin  # only when asked: it registers filters process-wide

    if compression == "bitshuffle-lz4":
        return dict(hdf5plugin.Bitshuffle(cname="lz4"))
    if compression == "zstd":
        return dict(hdf5plugin.Zstd())
    raise ValueError(f"compression {compression!r} is not one of {', '.join(COMPRESSIONS)}")


def _check_attrs(attrs: Mapping[str, Any]) -> None:
    clash = RESERVED_ATTRS.intersection(attrs)
    if clash:
        raise ValueError(f"CXI file attrs {sorted(clash)} are set by write_cxi_file itself")
    for key, value in attrs.items():
        if value is None:
            raise ValueError(f"CXI file attr {key!r} is None; HDF5 attributes need a value")


class _FramePool:
    """Page-aligned float32 frame buffers, reused across files.

    A fresh 8.65 MB buffer per file costs a page fault per 4 KiB on first touch (and on a VM
    that returns freed memory to its host, a host fault too); O_DIRECT needs the alignment.
    Holds at most as many buffers as files were ever written at the same time.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._free: dict[tuple[int, int], list[np.ndarray]] = {}

    def take(self, shape: tuple[int, int]) -> np.ndarray:
        with self._lock:
            free = self._free.get(shape)
            if free:
                return free.pop()
        nbytes = shape[0] * shape[1] * 4
        buf = mmap.mmap(-1, -(-nbytes // DIRECT_ALIGN) * DIRECT_ALIGN)
        with contextlib.suppress(AttributeError, OSError):
            buf.madvise(mmap.MADV_HUGEPAGE)  # fewer pages to fault in and to pin for DMA
        return np.frombuffer(buf, dtype=np.float32, count=shape[0] * shape[1]).reshape(shape)

    def give(self, frame: np.ndarray) -> None:
        with self._lock:
            self._free.setdefault(frame.shape, []).append(frame)

    @contextlib.contextmanager
    def zeroed(self, shape: tuple[int, int]) -> Iterator[np.ndarray]:
        """A zeroed frame for one file, back in the pool afterwards."""
        frame = self.take(shape)
        try:
            frame[...] = 0
            yield frame
        finally:
            self.give(frame)


_FRAMES = _FramePool()
_HDF5_LOCK = threading.Lock()


def write_cxi_file(
    final_path: str | os.PathLike[str],
    events: CxiEvents,
    slab_shape: tuple[int, int],
    fill_frame: Callable[[int, np.ndarray], None] | None,
    *,
    compression: str = "none",
    fsync: bool = True,
    attrs: Mapping[str, Any] | None = None,
    filtered_events: int = 0,
    next_name: Callable[[], Path] | None = None,
    deliveries: Sequence[tuple[int, int]] | None = None,
) -> Path:
    """Write ``events`` to ``final_path`` via ``<final_path>.inprogress`` and a rename.

    The rename never replaces a file (:func:`rename_noreplace`). When the name is taken (two
    pipelines, or two starts within the same second of the time label, in one directory),
    ``next_name()`` gives the next one to try and the path actually written is returned;
    without ``next_name`` a taken name raises :class:`CxiWriteError` (``FileExistsError``).

    ``fill_frame(i, out)`` writes event ``i``'s slab image into ``out``, a float32 (SS, FS)
    buffer that is reused for every frame (one copy per panel, straight into what is written).
    ``out`` starts as zeros and then holds the previous frame: pixels the callback never touches
    (gaps of a fixed layout) stay 0, and a callback without an image for event ``i`` must zero
    ``out`` itself. ``fill_frame=None`` writes no image chunks at all: the data dataset exists
    with the right shape and reads as zeros, and the file attribute ``images_missing`` is True.

    Bad arguments raise ``ValueError`` before anything touches the disk. Any failure while
    writing (disk full, permissions, directory gone, ``fill_frame`` raising) removes the
    ``.inprogress`` file, leaves no ``.cxi`` and raises :class:`CxiWriteError` chained to the
    cause; ``events`` is never modified, so the caller can retry with them.

    ``deliveries`` (one (delivery id, event index) per event) goes to ``DELIVERY_PATH``; with
    the attr ``RUN_ID_ATTR`` it says which events of which run the file holds.
    """
    final_path = Path(final_path)
    tmp_path = inprogress_path(final_path)
    ss, fs = (int(v) for v in slab_shape)
    if ss < 1 or fs < 1:
        raise ValueError(f"slab_shape must be two positive ints, got {tuple(slab_shape)}")
    if filtered_events < 0:
        raise ValueError(f"filtered_events must be >= 0, got {filtered_events}")
    attrs = dict(attrs or {})
    _check_attrs(attrs)
    pairs = None
    if deliveries is not None:
        pairs = np.asarray(deliveries, dtype=np.int64).reshape(-1, 2)
        if pairs.shape[0] != events.n_events:
            raise ValueError(f"{pairs.shape[0]} deliveries for {events.n_events} events")
    filters = _compression_kwargs(compression)

    # O_DIRECT needs whole aligned blocks: every frame size of a real detector is one.
    direct = fill_frame is not None and not filters and (ss * fs * 4) % DIRECT_ALIGN == 0
    # HDF5 aligns every object at least one frame large (the chunks) to DIRECT_ALIGN.
    align = {"alignment_threshold": ss * fs * 4, "alignment_interval": DIRECT_ALIGN}
    created = False
    renamed = False
    stack = contextlib.ExitStack()
    try:
        while final_path.exists() or tmp_path.exists():  # taken by another writer
            if next_name is None:
                raise FileExistsError(errno.EEXIST, "refusing to overwrite an existing CXI file")
            final_path = Path(next_name())
            tmp_path = inprogress_path(final_path)
        reservation = _SPACE.reserve(tmp_path.parent, _estimated_bytes(events, (ss, fs)))
        stack.enter_context(reservation)
        # One HDF5 file at a time per process: h5py serialises its calls, but two threads
        # failing with ENOSPC at once crashed the interpreter in ObjectID._dealloc (seen
        # here). What overlaps between files is the O_DIRECT frame writes and the fsync.
        with _HDF5_LOCK:
            try:
                with h5py.File(tmp_path, "w-", **(align if direct else {})) as f:
                    created = True
                    offsets = _write_contents(f, events, (ss, fs), fill_frame, filters, direct)
                    if pairs is not None:
                        f.create_dataset(DELIVERY_PATH, data=pairs)
                    f.attrs["cxi_async_version"] = cxi_async.__version__
                    f.attrs["creation_time"] = datetime.now(timezone.utc).isoformat(
                        timespec="seconds"
                    )
                    f.attrs["filtered_events"] = np.int64(filtered_events)
                    f.attrs["images_missing"] = fill_frame is None
                    f.attrs["compression"] = compression
                    f.attrs["n_events"] = np.int64(events.n_events)
                    f.attrs["max_num_peak"] = np.int64(events.max_num_peak)
                    for key, value in attrs.items():
                        f.attrs[key] = value
            except BaseException:
                gc.collect()  # free the HDF5 ids a failure left behind, still under the lock
                raise
        if offsets is not None and fill_frame is not None:
            _write_frames(tmp_path, offsets, (ss, fs), fill_frame, fsync)
        if fsync:
            fsync_file(tmp_path)
        for _ in range(MAX_NAME_TRIES):
            try:
                rename_noreplace(tmp_path, final_path)
                break
            except FileExistsError:  # a concurrent writer took the name after our checks
                if next_name is None:
                    raise
                final_path = Path(next_name())
                log.warning("%s was taken by another writer; renaming to the next name", tmp_path)
        else:
            raise FileExistsError(errno.EEXIST, f"{MAX_NAME_TRIES} names in a row were taken")
        renamed = True
        if fsync:
            fsync_dir(final_path.parent)
    except BaseException as exc:
        # The rename may have happened; a .cxi whose durability failed is withdrawn too,
        # because the caller will write these events again.
        if renamed:
            with contextlib.suppress(OSError):
                final_path.unlink()
        residue = None
        if created:
            try:
                tmp_path.unlink()
            except OSError:
                residue = tmp_path
        if not isinstance(exc, Exception):
            raise
        err = CxiWriteError.from_cause(final_path, exc)
        err.residue = residue
        raise err from exc
    finally:
        stack.close()
    return final_path


MAX_NAME_TRIES = 1000
RENAME_NOREPLACE = 1  # linux/fs.h
_AT_FDCWD = -100


def _load_renameat2() -> Callable[..., int] | None:
    """glibc's renameat2 (2.28+), or None: then link + unlink does the same job."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_renameat2 = _load_renameat2()


def rename_noreplace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
    """Rename ``src`` to ``dst`` atomically, raising ``FileExistsError`` if ``dst`` exists.

    ``os.rename`` replaces an existing ``dst``, and checking first leaves a window for another
    writer. ``renameat2(RENAME_NOREPLACE)`` checks and renames in one step; where the kernel or
    file system does not have it, ``link`` (which fails on an existing name) then ``unlink``.
    """
    src_b, dst_b = os.fsencode(src), os.fsencode(dst)
    if _renameat2 is not None:
        if _renameat2(_AT_FDCWD, src_b, _AT_FDCWD, dst_b, RENAME_NOREPLACE) == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise OSError(err, os.strerror(err), os.fsdecode(src), None, os.fsdecode(dst))
    os.link(src_b, dst_b)  # FileExistsError if taken
    os.unlink(src_b)


def _estimated_bytes(events: CxiEvents, slab_shape: tuple[int, int]) -> int:
    """An upper bound of a file's size: frames, peak arrays, and room for HDF5's metadata."""
    n, m = events.n_events, events.max_num_peak
    frames = n * slab_shape[0] * slab_shape[1] * 4
    peaks = n * m * (5 * 4 + 2) + n * 64
    return frames + peaks + (256 << 10)  # measured overhead: ~21 KB for a 4-event file


class _SpaceLedger:
    """Refuse a file the file system has no room for, before HDF5 touches it.

    HDF5 2.0 / h5py 3.16 crash the interpreter (segfault in ObjectID._dealloc) when a file
    cannot be closed because the disk is full (reproduced here on a full tmpfs). Checking
    free space first, minus what other files of this process are still writing, turns a
    full disk into an ordinary CxiWriteError(ENOSPC) that the writer retries.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._reserved: dict[int, int] = {}  # st_dev -> bytes being written

    @contextlib.contextmanager
    def reserve(self, directory: Path, nbytes: int):
        st = os.statvfs(directory)
        device = os.stat(directory).st_dev
        with self._lock:
            free = st.f_bavail * st.f_frsize - self._reserved.get(device, 0)
            if nbytes > free:
                raise OSError(
                    errno.ENOSPC,
                    f"no room for the file: it needs ~{nbytes / 1e6:.1f} MB and "
                    f"{max(free, 0) / 1e6:.1f} MB are free",
                )
            self._reserved[device] = self._reserved.get(device, 0) + nbytes
        try:
            yield
        finally:
            with self._lock:
                self._reserved[device] -= nbytes


_SPACE = _SpaceLedger()


def _write_contents(
    f: h5py.File,
    events: CxiEvents,
    slab_shape: tuple[int, int],
    fill_frame: Callable[[int, np.ndarray], None] | None,
    filters: dict[str, Any],
    preallocate: bool = False,
) -> list[int] | None:
    """Everything but the frames when ``preallocate``: then the chunks' byte offsets."""
    n = events.n_events
    f.create_dataset("cxi_version", data=np.int32(CXI_VERSION))

    # Small arrays first: a fill_frame failure then costs nothing extra, and CrystFEL's reader
    # finds the peak lists near the start of the file.
    result = f.require_group(RESULT_PATH)
    result.create_dataset("nPeaks", data=events.n_peaks)
    for field, _, name in _PEAK_COLUMNS:
        result.create_dataset(name, data=getattr(events, field))
    result.create_dataset(
        "batchId",
        data=np.array(events.batch_id, dtype=object),
        dtype=h5py.string_dtype("utf-8"),
    )
    result.create_dataset("eventIndex", data=events.event_index)
    f.create_dataset(PHOTON_ENERGY_PATH, data=events.photon_energy_ev)
    f.create_dataset(TIMESTAMP_PATH, data=events.timestamp)
    for path, values in events.datasets.items():  # [metadata.datasets], e.g. EncoderValue
        f.create_dataset(path, data=values)

    early = {}
    if preallocate:  # every chunk allocated now, at a known offset, and never filled
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
        early = {"dcpl": dcpl, "fill_time": "never"}
    dset = f.create_dataset(
        DATA_PATH,
        shape=(n, *slab_shape),
        dtype=np.float32,
        chunks=(1, *slab_shape),
        fillvalue=np.float32(0),
        **filters,
        **early,
    )
    if preallocate:
        return [dset.id.get_chunk_info_by_coord((i, 0, 0)).byte_offset for i in range(n)]
    if fill_frame is None:
        return None  # unwritten chunks read as the fill value 0 and take no space
    with _FRAMES.zeroed(slab_shape) as frame:
        if filters:
            for i in range(n):
                fill_frame(i, frame)
                dset.write_direct(frame, dest_sel=np.s_[i])
        else:
            # A frame is exactly one chunk: hand its bytes to HDF5 without the dataspace
            # selection and type-conversion machinery (see bench/bench_cxi.py).
            write_chunk = dset.id.write_direct_chunk
            for i in range(n):
                fill_frame(i, frame)
                write_chunk((i, 0, 0), frame)
    return None


def _write_frames(
    path: Path,
    offsets: list[int],
    slab_shape: tuple[int, int],
    fill_frame: Callable[[int, np.ndarray], None],
    fsync: bool = True,
) -> None:
    """Each frame into its preallocated chunk, with O_DIRECT where the filesystem allows it.

    A filesystem that refuses O_DIRECT (EINVAL, at open or at the first write) gets buffered
    writes of the same bytes; with ``fsync`` their page-cache copy is dropped after the fsync.
    """
    direct = True
    with _FRAMES.zeroed(slab_shape) as frame:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_DIRECT)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            fd, direct = os.open(path, os.O_WRONLY), False
        try:
            for i, offset in enumerate(offsets):
                fill_frame(i, frame)
                try:
                    written = os.pwrite(fd, frame, offset)
                except OSError as exc:
                    if not (direct and i == 0 and exc.errno == errno.EINVAL):
                        raise
                    os.close(fd)
                    fd, direct = os.open(path, os.O_WRONLY), False
                    written = os.pwrite(fd, frame, offset)
                if written != frame.nbytes:
                    raise OSError(errno.EIO, f"short write of frame {i} ({written} bytes)")
            if not direct and fsync:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
