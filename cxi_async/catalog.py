"""The side files beside the CXI files: file and event lists, live status, run report.

A crystallographer points CrystFEL at the output directory while the run goes on, so every
side file is replaced atomically (written to a hidden temporary file in the same directory,
then ``os.replace``): a reader sees the old or the new content, never half of it.

- ``files.lst``: the finished ``.cxi`` files (absolute paths, in the order they finished).
- ``events.lst``: one line per kept frame, ``<path> //<i>``, for ``indexamajig -i events.lst``.
- ``<run>/files.lst`` and ``<run>/events.lst``: the same for the files of one run
  sub-directory (``output.run_from_metadata``).
- ``status.json``: counts, hit rate, rates, credits and queue depth, refreshed while running.
- ``<prefix>_<run_label>_report.json``: config, final counts, throughput samples, files.

Event IDs, as CrystFEL reads them (taw10/crystfel): ``image_hdf5_expand_frames`` in
``libcrystfel/src/image-hdf5.c`` turns a data path without ``%`` in it and one placeholder
dimension (``dim0 = %``, our slab geometry) into the events ``//0``, ``//1``, ... (path part
before ``//``, frame indices after it; ``read_dim_parts`` reads them back); ``list_events``
(``src/list_events.c``) writes such a list as ``"%s %s\\n"`` (file name, event ID); and
indexamajig (``read_prefixed_filename`` in ``src/im-sandbox.c``) splits a line at its last
space when what follows contains ``//``, so a path may contain spaces. It reads each line
into a 1024-byte buffer, so a longer line is refused here rather than silently cut there.

No Ray here: the drainer calls this (from a worker thread: every method takes a lock).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import cxi_async
from cxi_async import runstats

__all__ = [
    "EVENTS_LIST",
    "FILES_LIST",
    "STATUS_FILE",
    "Catalog",
    "CatalogError",
    "FileEntry",
    "atomic_write",
    "event_lines",
    "hit_rate",
    "report_name",
]

FILES_LIST = "files.lst"
EVENTS_LIST = "events.lst"
STATUS_FILE = "status.json"
INPROGRESS_SUFFIX = ".inprogress"  # same as cxi.INPROGRESS_SUFFIX (not imported: no h5py here)
MAX_LINE = 1022  # indexamajig reads list lines with fgets(line, 1023): 1022 chars + newline


class CatalogError(Exception):
    """A side file cannot be written or read back; the message names the file and the rule.

    A failed write leaves the previous version of the file in place and keeps the new
    content in memory: the next write (any later call) retries it.
    """


@dataclass(frozen=True)
class FileEntry:
    """One finished CXI file and its number of frames (kept events)."""

    path: str
    events: int


# --------------------------------------------------------------------------- small helpers


def report_name(prefix: str, run_label: str) -> str:
    """``<prefix>_<run_label>_report.json``, beside that run's CXI files."""
    return f"{prefix}_{run_label}_report.json"


def event_lines(path: str, n_events: int) -> str:
    """The events.lst lines of one file: ``<path> //0`` ... ``<path> //<n-1>``."""
    return "".join(f"{path} //{i}\n" for i in range(n_events))


def hit_rate(kept: int, filtered: int) -> float | None:
    """Kept / (kept + filtered); None before any event was judged.

    Events still in flight and rejected events are neither hits nor misses, so the rate is
    unbiased while running (kept / seen would lag by the events in flight).
    """
    judged = kept + filtered
    return kept / judged if judged > 0 else None


def _fsync_dir(directory: Path) -> None:
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


_FILE_MODE = 0o666 & ~_umask()  # what open() would give: mkstemp alone gives 0600


def atomic_write(path: Path, chunks: Iterable[str], fsync: bool = False) -> None:
    """Replace ``path`` with ``chunks`` through a temporary file in the same directory.

    On any failure the temporary file is removed and ``path`` keeps its old content. The new
    file gets the usual permissions (0666 less the umask), so other users can read the lists.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, _FILE_MODE)
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
        _fsync_dir(path.parent)


def _iso(unix: float | None) -> str | None:
    if unix is None:
        return None
    return datetime.fromtimestamp(unix, timezone.utc).isoformat(timespec="milliseconds")


def _jsonable(value: Any) -> Any:
    """Plain JSON values: non-finite floats become null, numpy scalars their Python value."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "tolist"):  # numpy scalar or array
        return _jsonable(value.tolist())
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return str(value)


def _dump_json(data: Any) -> str:
    return json.dumps(_jsonable(data), indent=1, allow_nan=False) + "\n"


def _check_name(what: str, value: str) -> None:
    if not value or "/" in value or os.sep in value or "\n" in value:
        raise CatalogError(f"catalog {what} {value!r} must be non-empty and contain no '/'.")


def _processed(stats: Mapping[str, Any]) -> int:
    """Events with an outcome: written, filtered or rejected."""
    return (
        int(stats.get("events_written", 0))
        + int(stats.get("events_filtered", 0))
        + int(stats.get("events_rejected", 0))
    )


def _inboxes(actors: Any) -> list[int | None]:
    """Inbox depth of each finder/writer stats dict (None for a dead actor)."""
    return [a.get("inbox") if isinstance(a, Mapping) else None for a in actors or []]


# --------------------------------------------------------------------------- catalog


class Catalog:
    """Keeps files.lst, events.lst, status.json and the run report of one output directory.

    The lists are kept in memory and rewritten whole (atomically) when they change, at most
    once per ``min_interval_s`` (0: on every :meth:`add_file`); :meth:`flush` writes them now.
    Existing lists are loaded at start, so a restart in the same directory continues them.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike[str],
        prefix: str,
        run_label: str,
        *,
        fsync: bool = False,
        min_interval_s: float = 0.0,
        sample_interval_s: float = 2.0,
        max_samples: int = 2000,
    ) -> None:
        self.output_dir = Path(os.path.abspath(output_dir))
        if not self.output_dir.is_dir():
            raise CatalogError(
                f"catalog output directory {self.output_dir} does not exist or is not a "
                "directory: create it before the catalog."
            )
        _check_name("prefix", prefix)
        _check_name("run_label", run_label)
        if min_interval_s < 0 or sample_interval_s < 0 or max_samples < 2:
            raise CatalogError(
                f"catalog min_interval_s = {min_interval_s} and sample_interval_s = "
                f"{sample_interval_s} must be >= 0 and max_samples = {max_samples} >= 2."
            )
        self.prefix = prefix
        self.run_label = run_label
        self.fsync = fsync
        self.min_interval_s = min_interval_s
        self.sample_interval_s = sample_interval_s
        self.max_samples = max_samples
        self.files_path = self.output_dir / FILES_LIST
        self.events_path = self.output_dir / EVENTS_LIST
        self.status_path = self.output_dir / STATUS_FILE
        self.report_path = self.output_dir / report_name(prefix, run_label)
        self._lock = threading.RLock()
        self._entries: list[FileEntry] = []
        self._chunks: list[str] = []  # events.lst text of each entry, same order
        self._known: set[str] = set()
        self._run_entries: list[FileEntry] = []  # added by this catalog (this run)
        self._samples: list[dict[str, Any]] = []
        self._last_status: tuple[float, int] | None = None  # (elapsed_s, processed)
        self._recent: float | None = None  # events/s between the last two status updates
        self._dirty = False
        self._dirty_runs: set[Path] = set()  # run sub-directories whose own lists are stale
        self._last_write = -math.inf
        self._load()

    # ------------------------------------------------------------------ lists

    @property
    def entries(self) -> list[FileEntry]:
        """Every listed file (earlier runs in this directory first), in finishing order."""
        with self._lock:
            return list(self._entries)

    @property
    def run_entries(self) -> list[FileEntry]:
        """Files added by this catalog, i.e. written by this run."""
        with self._lock:
            return list(self._run_entries)

    def add_file(self, path: str | os.PathLike[str], n_events: int) -> bool:
        """List a finished (renamed) CXI file with ``n_events`` frames; False if already listed.

        Raises :class:`CatalogError` for an ``.inprogress`` name, a file that does not exist,
        a negative count, or a path indexamajig could not read back from a list.
        """
        text = os.path.abspath(os.fspath(path))
        if text.endswith(INPROGRESS_SUFFIX):
            raise CatalogError(
                f"refusing to list {text}: it is still being written; list it once renamed "
                f"without {INPROGRESS_SUFFIX}."
            )
        if isinstance(n_events, bool) or not isinstance(n_events, int) or n_events < 0:
            raise CatalogError(f"{text}: n_events = {n_events!r} must be an integer >= 0.")
        if "\n" in text or "\r" in text:
            raise CatalogError(f"refusing to list {text!r}: a list line cannot hold a newline.")
        longest = len(f"{text} //{max(n_events - 1, 0)}")
        if longest > MAX_LINE:
            raise CatalogError(
                f"{text}: its events.lst line would be {longest} characters, more than the "
                f"{MAX_LINE} indexamajig reads; use a shorter output directory."
            )
        if not os.path.isfile(text):
            raise CatalogError(
                f"refusing to list {text}: it does not exist (only finished CXI files are listed)."
            )
        with self._lock:
            if text in self._known:
                return False
            entry = FileEntry(text, n_events)
            self._append(entry)
            self._run_entries.append(entry)
            self._dirty = True
            self._flush_lists(force=False)
        return True

    def flush(self) -> None:
        """Write the lists now if they changed since they were last written."""
        with self._lock:
            self._flush_lists(force=True)

    def _write(self, path: Path, chunks: Iterable[str]) -> None:
        try:
            atomic_write(path, chunks, self.fsync)
        except OSError as exc:
            raise CatalogError(
                f"could not write {path}: {exc.strerror or exc}; its previous version is intact "
                "and the next update retries."
            ) from exc

    def _append(self, entry: FileEntry) -> None:
        self._entries.append(entry)
        self._chunks.append(event_lines(entry.path, entry.events))
        self._known.add(entry.path)
        parent = Path(entry.path).parent
        if parent.parent == self.output_dir:  # <output_dir>/<run>/: that run gets lists too
            self._dirty_runs.add(parent)

    def _flush_lists(self, force: bool) -> None:
        if not self._dirty and not self._dirty_runs:
            return
        now = time.monotonic()
        if not force and now - self._last_write < self.min_interval_s:
            return
        # events.lst first: after a crash between the two, loading recovers files.lst from it.
        if self._dirty:
            self._write(self.events_path, self._chunks)
            self._write(self.files_path, (f"{e.path}\n" for e in self._entries))
            self._dirty = False
        for directory in sorted(self._dirty_runs):
            # A run's own lists, derived from the whole ones, for `indexamajig -i <run>/...`.
            mine = [i for i, e in enumerate(self._entries) if Path(e.path).parent == directory]
            self._write(directory / EVENTS_LIST, (self._chunks[i] for i in mine))
            self._write(directory / FILES_LIST, (f"{self._entries[i].path}\n" for i in mine))
            self._dirty_runs.discard(directory)
        self._last_write = now

    def _load(self) -> None:
        """Continue the lists of an earlier run; reconcile them if a crash split them."""
        listed = self._read_lines(self.files_path)
        counts: dict[str, int] = {}
        order: list[str] = []
        for number, line in enumerate(self._read_lines(self.events_path), 1):
            path, sep, event = line.rpartition(" ")
            if not sep or not event.startswith("//"):
                raise CatalogError(
                    f"{self.events_path} line {number} ({line!r}) is not '<path> //<frame>'; "
                    "fix or remove the file before restarting in this directory."
                )
            if path not in counts:
                counts[path] = 0
                order.append(path)
            counts[path] += 1
        seen: set[str] = set()
        for path in [*listed, *order]:
            if path not in seen:
                seen.add(path)
                self._append(FileEntry(path, counts.get(path, 0)))
        self._dirty = len(self._entries) != len(listed)

    @staticmethod
    def _read_lines(path: Path) -> list[str]:
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        except (OSError, UnicodeDecodeError) as exc:
            raise CatalogError(f"cannot read {path} to continue it: {exc}.") from None
        return [line for line in text.splitlines() if line.strip()]

    # ------------------------------------------------------------------ status and samples

    def sample(self, stats: Mapping[str, Any]) -> bool:
        """Keep a throughput sample if ``sample_interval_s`` passed since the last one.

        When more than ``max_samples`` are kept, every other one is dropped and the interval
        doubles, so a long run keeps evenly spaced samples in bounded memory.
        """
        t = float(stats.get("elapsed_s", 0.0))
        with self._lock:
            if self._samples and t - self._samples[-1]["t"] < self.sample_interval_s:
                return False
            self._samples.append(self._make_sample(stats, t))
            if len(self._samples) > self.max_samples:
                self._samples = self._samples[::2]
                self.sample_interval_s = max(self.sample_interval_s, 1e-3) * 2
            return True

    @property
    def samples(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._samples)

    @staticmethod
    def _make_sample(stats: Mapping[str, Any], t: float) -> dict[str, Any]:
        return {
            "t": t,
            "events_written": int(stats.get("events_written", 0)),
            "events_filtered": int(stats.get("events_filtered", 0)),
            "events_rejected": int(stats.get("events_rejected", 0)),
            "q2_depth": stats.get("q2_depth"),
            "credits_in_use": stats.get("credits_in_use"),
            "finder_inbox": _inboxes(stats.get("finders")),
            "writer_inbox": _inboxes(stats.get("writers")),
        }

    def _build_status(self, stats: Mapping[str, Any], finished: bool) -> dict[str, Any]:
        now = time.time()
        kept = int(stats.get("events_written", 0))
        filtered = int(stats.get("events_filtered", 0))
        elapsed = float(stats.get("elapsed_s", 0.0))
        processed = _processed(stats)
        with self._lock:
            last = self._last_status
            if last is None or elapsed > last[0]:
                if last is not None:
                    self._recent = (processed - last[1]) / (elapsed - last[0])
                self._last_status = (elapsed, processed)
            recent = self._recent  # the same stats again (the final status) keep the last rate
            listed = len(self._entries)
        started = stats.get("started_at")
        if finished:
            state = "stopped"
        elif stats.get("stopping"):
            state = "stopping"
        else:
            state = "running"
        return {
            "run_label": self.run_label,
            "state": state,
            "stop_reason": stats.get("stop_reason"),
            "events_seen": int(stats.get("events_seen", 0)),
            "events_kept": kept,
            "events_filtered": filtered,
            "events_rejected": int(stats.get("events_rejected", 0)),
            "events_duplicate": int(stats.get("events_duplicate", 0)),
            "hit_rate": hit_rate(kept, filtered),
            "files": int(stats.get("files", 0)),
            "files_listed": listed,
            "bytes_written": int(stats.get("bytes_written", 0)),
            "events_per_s": stats.get("events_per_s"),
            "events_per_s_recent": recent,
            "credits_in_use": stats.get("credits_in_use"),
            "credits": stats.get("credits"),
            "q2_depth": stats.get("q2_depth"),
            "latency_p50_s": stats.get("latency_p50_s"),
            "latency_p99_s": stats.get("latency_p99_s"),
            "elapsed_s": elapsed,
            "started_at": _iso(started),
            "started_at_unix": started,
            "updated_at": _iso(now),
            "updated_at_unix": now,
            **runstats.live_fields(stats.get("writers")),  # peaks per frame, resolution
        }

    def write_status(self, stats: Mapping[str, Any], finished: bool = False) -> dict[str, Any]:
        """Replace status.json from the drainer's ``stats`` dict; returns what was written.

        ``state`` is running / stopping / stopped (``finished``); ``events_kept`` is
        ``events_written``; ``hit_rate`` is :func:`hit_rate` (null before any event was
        judged); ``events_per_s`` is the drainer's mean since the start and
        ``events_per_s_recent`` the processed (kept + filtered + rejected) events per second
        since the previous call; times are ISO 8601 UTC plus ``*_unix`` seconds.
        """
        status = self._build_status(stats, finished)
        with self._lock:
            self._write(self.status_path, [_dump_json(status)])
        return status

    def update(self, stats: Mapping[str, Any]) -> None:
        """The periodic call: sample, refresh status.json, write lists held back by the interval."""
        with self._lock:
            self.sample(stats)
            self.write_status(stats)
            self._flush_lists(force=False)

    # ------------------------------------------------------------------ report

    def write_report(self, config_dict: Mapping[str, Any], final_stats: Mapping[str, Any]) -> Path:
        """At stop: list any file the drainer reports but nobody added, write the lists, the
        final status and ``<prefix>_<run_label>_report.json``; returns the report's path."""
        with self._lock:
            self._adopt(final_stats.get("files_written") or [])
            self._flush_lists(force=True)
            status = self.write_status(final_stats, finished=True)
            final_sample = self._make_sample(final_stats, float(final_stats.get("elapsed_s", 0)))
            samples = list(self._samples)
            if not samples or samples[-1]["t"] < final_sample["t"]:
                samples.append(final_sample)
            stats = {k: v for k, v in final_stats.items() if k != "files_written"}
            crystallography = runstats.report_section(stats.get("writers"), samples)
            stats = runstats.strip_peak_stats(stats)
            report = {
                "cxi_async_version": cxi_async.__version__,
                "run_label": self.run_label,
                "prefix": self.prefix,
                "output_dir": str(self.output_dir),
                "started_at": status["started_at"],
                "started_at_unix": status["started_at_unix"],
                "finished_at": status["updated_at"],
                "finished_at_unix": status["updated_at_unix"],
                "config": config_dict,
                "final": status,
                "stats": stats,
                "sample_interval_s": self.sample_interval_s,
                "samples": samples,
                "files": [{"path": e.path, "events": e.events} for e in self._run_entries],
                "crystallography": crystallography,  # what `python -m cxi_async plot` draws
            }
            self._write(self.report_path, [_dump_json(report)])
        return self.report_path

    def _adopt(self, files_written: Iterable[Mapping[str, Any]]) -> None:
        """Files a writer finished but that never reached add_file (in sequence order)."""
        missing = [
            f for f in files_written if os.path.abspath(str(f.get("path", ""))) not in self._known
        ]
        for f in sorted(missing, key=lambda f: os.path.basename(str(f.get("path", "")))):
            with contextlib.suppress(CatalogError):  # gone or odd: the report still has counts
                self.add_file(str(f["path"]), int(f.get("events", 0)))
