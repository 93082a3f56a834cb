"""The side files beside the CXI files: file and event lists, live status, run report.

A crystallographer points CrystFEL at the output directory while the run goes on. The two
lists only grow: a finished file's lines are appended in one ``write`` (whole lines, fsync'd
with ``output.fsync``), so a reader sees a prefix of whole lines, and a restart cuts a torn
last line. status.json and the report are replaced atomically (written to a hidden temporary
file in the same directory, then ``os.replace``): a reader sees the old or the new content.

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

No Ray here: the coordinator calls this (from a worker thread: every method takes a lock).
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import json
import logging
import math
import os
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import cxi_async
from cxi_async.core import runstats
from cxi_async.core.files import atomic_write, fsync_dir

log = logging.getLogger(__name__)

__all__ = [
    "EVENTS_LIST",
    "FILES_LIST",
    "STATUS_FILE",
    "Catalog",
    "CatalogError",
    "FileEntry",
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

    Events still in flight and rejected events are neither hits nor misses. While running,
    pass the hits as judged (``events_hits``), counted when ``events_filtered`` is: the
    events written lag them by the hits in open files, and would bias the rate low.
    """
    judged = kept + filtered
    return kept / judged if judged > 0 else None


def _digest(path: str) -> bytes:
    """16 bytes that stand for a listed path (what dedup keeps instead of the path)."""
    return hashlib.blake2b(path.encode(), digest_size=16).digest()


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _append(path: Path, data: bytes, fsync: bool) -> None:
    """Append whole lines to ``path``; on failure cut it back to its earlier size."""
    created = not path.exists()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)  # 0666 less the umask
    try:
        before = os.fstat(fd).st_size
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if fsync:
                os.fsync(fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, before)
            raise
    finally:
        os.close(fd)
    if fsync and created:
        fsync_dir(path.parent)


def _cut_torn_line(path: Path) -> None:
    """Cut a last line without its newline (a crash in mid-append) from ``path``."""
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return
    try:
        end = os.fstat(fd).st_size
        pos = end
        while pos > 0:
            start = max(0, pos - 4096)
            chunk = os.pread(fd, pos - start, start)
            newline = chunk.rfind(b"\n")
            if newline >= 0:
                pos = start + newline + 1
                break
            pos = start
        if pos < end:
            log.warning("%s: cut a torn last line (%d bytes) left by a crash", path, end - pos)
            os.ftruncate(fd, pos)
            os.fsync(fd)
    finally:
        os.close(fd)


def _raw_lines(path: Path, offset: int = 0) -> Iterator[bytes]:
    try:
        fh = open(path, "rb")  # noqa: SIM115 (a generator: closed by the with below)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise CatalogError(f"cannot read {path} to continue it: {exc}.") from None
    with fh:
        fh.seek(offset)
        yield from fh


def _decode(raw: bytes, path: Path) -> str:
    try:
        return raw.decode()
    except UnicodeDecodeError as exc:
        raise CatalogError(f"cannot read {path} to continue it: {exc}.") from None


def _lines(path: Path, offset: int = 0) -> Iterator[str]:
    """The non-blank lines of ``path`` from byte ``offset``, one at a time."""
    for raw in _raw_lines(path, offset):
        line = _decode(raw, path).rstrip("\n")
        if line.strip():
            yield line


def _last_line(path: Path) -> str | None:
    """The last line of ``path`` (read from its end), or None."""
    try:
        with open(path, "rb") as fh:
            end = fh.seek(0, os.SEEK_END)
            fh.seek(max(0, end - 2 * MAX_LINE - 4))
            tail = fh.read().rstrip(b"\n").rsplit(b"\n", 1)[-1]
    except FileNotFoundError:
        return None
    return tail.decode(errors="replace") or None


def _read_entries(
    files: Path, events: Path, files_from: int = 0, events_from: int = 0
) -> list[FileEntry]:
    """The files listed after byte ``files_from`` with their events after ``events_from``."""
    counts: collections.Counter[str] = collections.Counter(
        line.rpartition(" ")[0] for line in _lines(events, events_from)
    )
    return [FileEntry(p, counts.get(p, 0)) for p in _lines(files, files_from)]


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

    The lists are append-only: a finished file's lines are appended (``O_APPEND``, fsync'd with
    ``fsync``), at most once per ``min_interval_s`` (0: on every :meth:`add_file`);
    :meth:`flush` appends what is held back now. Appending costs the same for the 100,000th
    file as for the first, and memory holds a 16-byte digest per listed file, never the lines.
    Existing lists are continued; see :meth:`_load` for what a crash can leave and how it is cut.
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
        self._known: set[bytes] = set()  # digests of listed (or pending) paths
        self._listed = 0  # files in files.lst, including pending ones
        self._pending: list[FileEntry] = []  # held back by min_interval_s or a failed append
        self._batch: list[tuple[Path, bytes]] = []  # appends of a batch not yet all done
        self._samples: list[dict[str, Any]] = []
        self._last_status: tuple[float, int] | None = None  # (elapsed_s, processed)
        self._recent: float | None = None  # events/s between the last two status updates
        self._last_write = -math.inf
        self._load()
        # Where this run's lines begin: the report lists the files after these offsets.
        self._run_start = (_size(self.files_path), _size(self.events_path))

    # ------------------------------------------------------------------ lists

    @property
    def entries(self) -> list[FileEntry]:
        """Every listed file (earlier runs first), in finishing order; read from the lists."""
        with self._lock:
            self._flush_lists(force=True)
            return _read_entries(self.files_path, self.events_path)

    @property
    def run_entries(self) -> list[FileEntry]:
        """Files added by this catalog, i.e. written by this run; read from the lists."""
        with self._lock:
            self._flush_lists(force=True)
            return _read_entries(self.files_path, self.events_path, *self._run_start)

    def is_listed(self, path: str | os.PathLike[str]) -> bool:
        """Whether ``path`` (made absolute) is in files.lst or waiting to be appended."""
        with self._lock:
            return _digest(os.path.abspath(os.fspath(path))) in self._known

    @property
    def files_listed(self) -> int:
        with self._lock:
            return self._listed

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
            key = _digest(text)
            if key in self._known:
                return False
            self._known.add(key)
            self._listed += 1
            self._pending.append(FileEntry(text, n_events))
            self._flush_lists(force=False)
        return True

    def flush(self) -> None:
        """Append the lines held back (by ``min_interval_s`` or a failed append) now."""
        with self._lock:
            self._flush_lists(force=True)

    def _flush_lists(self, force: bool) -> None:
        if not self._pending and not self._batch:
            return
        now = time.monotonic()
        if not force and now - self._last_write < self.min_interval_s:
            return
        if not self._batch:
            self._batch = self._appends(self._pending)
            self._pending = []
        # In order; a failed append is cut back and retried (from that one) by the next call.
        while self._batch:
            path, data = self._batch[0]
            try:
                _append(path, data, self.fsync)
            except OSError as exc:
                raise CatalogError(
                    f"could not append to {path}: {exc.strerror or exc}; it keeps its earlier "
                    "lines and the next update retries."
                ) from exc
            self._batch.pop(0)
        self._last_write = now

    def _appends(self, entries: list[FileEntry]) -> list[tuple[Path, bytes]]:
        """The appends that list ``entries``: events.lst before files.lst, whole lists first.

        files.lst is the commit record: lines in events.lst of a file files.lst does not name
        are cut on load (a crash between the two), and a run's lists follow the whole ones.
        """
        steps = [
            (self.events_path, "".join(event_lines(e.path, e.events) for e in entries)),
            (self.files_path, "".join(f"{e.path}\n" for e in entries)),
        ]
        runs: dict[Path, list[FileEntry]] = {}
        for e in entries:
            parent = Path(e.path).parent
            if parent.parent == self.output_dir:  # <output_dir>/<run>/: that run gets lists too
                runs.setdefault(parent, []).append(e)
        for directory, mine in sorted(runs.items()):
            steps.append(
                (directory / EVENTS_LIST, "".join(event_lines(e.path, e.events) for e in mine))
            )
            steps.append((directory / FILES_LIST, "".join(f"{e.path}\n" for e in mine)))
        return [(path, text.encode()) for path, text in steps if text]

    def _load(self) -> None:
        """Continue the lists of an earlier run, cutting what a crash left half-done.

        A torn last line (no newline) is cut from either list; events.lst lines after the
        last file files.lst names are cut too (that file's count may be incomplete: the
        coordinator lists such a file again from its CXI content). A run directory whose own
        lists do not end with its last listed file gets them rebuilt from the whole ones.
        """
        _cut_torn_line(self.files_path)
        _cut_torn_line(self.events_path)
        last_file: dict[Path, str] = {}  # run directory -> its last listed file
        for line in _lines(self.files_path):
            self._known.add(_digest(line))
            self._listed += 1
            parent = Path(line).parent
            if parent.parent == self.output_dir:
                last_file[parent] = line
        last_event: dict[Path, str] = {}  # run directory -> its last file with events
        committed = 0  # byte offset after the last line of a listed file
        offset = 0
        previous, listed, path, run = b"", False, "", None
        for number, raw in enumerate(_raw_lines(self.events_path), 1):
            offset += len(raw)
            head, sep, event = raw.rpartition(b" ")
            if not sep or not event.startswith(b"//"):
                line = _decode(raw, self.events_path).rstrip("\n")
                raise CatalogError(
                    f"{self.events_path} line {number} ({line!r}) is not '<path> //<frame>'; "
                    "fix or remove the file before restarting in this directory."
                )
            if head != previous:  # a file's lines are consecutive: one digest per file
                previous = head
                path = _decode(head, self.events_path)
                listed = _digest(path) in self._known
                parent = Path(path).parent
                run = parent if parent.parent == self.output_dir else None
            if listed:
                committed = offset
                if run is not None:
                    last_event[run] = path
        if committed < offset:
            os.truncate(self.events_path, committed)
        for directory, path in last_file.items():
            self._check_run_lists(directory, path, last_event.get(directory))

    def _check_run_lists(self, directory: Path, last: str, last_with_events: str | None) -> None:
        """Rebuild a run's lists from the whole ones if they do not end where they should."""
        files, events = directory / FILES_LIST, directory / EVENTS_LIST
        for path in (files, events):
            _cut_torn_line(path)
        end_event = _last_line(events)
        if (
            _last_line(files) == last
            and (end_event.rpartition(" ")[0] if end_event else None) == last_with_events
        ):
            return

        def mine(path: Path, key: Any) -> Iterable[str]:
            for line in _lines(path):
                if Path(key(line)).parent == directory:
                    yield f"{line}\n"

        try:
            atomic_write(events, mine(self.events_path, lambda s: s.rpartition(" ")[0]), self.fsync)
            atomic_write(files, mine(self.files_path, lambda s: s), self.fsync)
        except OSError as exc:
            raise CatalogError(f"could not rebuild the lists of {directory}: {exc}") from exc

    def _write(self, path: Path, chunks: Iterable[str]) -> None:
        try:
            atomic_write(path, chunks, self.fsync)
        except OSError as exc:
            raise CatalogError(
                f"could not write {path}: {exc.strerror or exc}; its previous version is intact "
                "and the next update retries."
            ) from exc

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
            "events_hits": int(stats.get("events_hits", stats.get("events_written", 0))),
            "events_rejected": int(stats.get("events_rejected", 0)),
            "q2_depth": stats.get("q2_depth"),
            "credits_in_use": stats.get("credits_in_use"),
            "credits": stats.get("credits"),
            "pool_size": stats.get("pool_size"),
            "finder_inbox": _inboxes(stats.get("finders")),
            "writer_inbox": _inboxes(stats.get("writers")),
        }

    def _build_status(self, stats: Mapping[str, Any], finished: bool) -> dict[str, Any]:
        now = time.time()
        kept = int(stats.get("events_written", 0))
        filtered = int(stats.get("events_filtered", 0))
        hits = int(stats.get("events_hits", kept))  # judged hits, written or not yet
        elapsed = float(stats.get("elapsed_s", 0.0))
        processed = _processed(stats)
        with self._lock:
            last = self._last_status
            if last is None or elapsed > last[0]:
                if last is not None:
                    self._recent = (processed - last[1]) / (elapsed - last[0])
                self._last_status = (elapsed, processed)
            recent = self._recent  # the same stats again (the final status) keep the last rate
            listed = self._listed
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
            "events_abandoned": int(stats.get("events_abandoned", 0)),
            "events_doubled": int(stats.get("events_doubled", 0)),
            "events_without_image": int(stats.get("events_without_image", 0)),
            "hit_rate": hit_rate(hits, filtered),
            "files": int(stats.get("files", 0)),
            "files_listed": listed,
            "bytes_written": int(stats.get("bytes_written", 0)),
            "events_per_s": stats.get("events_per_s"),
            "events_per_s_recent": recent,
            "credits_in_use": stats.get("credits_in_use"),
            "credits": stats.get("credits"),
            "q2_depth": stats.get("q2_depth"),
            "q2_full": bool(stats.get("q2_full", False)),  # the producer drops what it puts
            "pool_size": stats.get("pool_size"),  # finders taking work (adaptive pool: varies)
            "pool": stats.get("pool"),  # bounds, resizes, "cannot grow" (adaptive pool only)
            "q2_full_seconds": float(stats.get("q2_full_seconds", 0.0)),
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
        """Replace status.json from the coordinator's ``stats`` dict; returns what was written.

        ``state`` is running / stopping / stopped (``finished``); ``events_kept`` is
        ``events_written``; ``hit_rate`` is :func:`hit_rate` of the judged hits
        (``events_hits``) and the filtered events (null before any event was judged);
        ``events_per_s`` is the coordinator's mean since the start and
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
        """At stop: list any file the coordinator reports but nobody added, write the lists, the
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
                "files": [{"path": e.path, "events": e.events} for e in self.run_entries],
                "crystallography": crystallography,  # what `python -m cxi_async plot` draws
            }
            self._write(self.report_path, [_dump_json(report)])
        return self.report_path

    def _adopt(self, files_written: Iterable[Mapping[str, Any]]) -> None:
        """Files a writer finished but that never reached add_file (in sequence order)."""
        missing = [f for f in files_written if not self.is_listed(str(f.get("path", "")))]
        for f in sorted(missing, key=lambda f: os.path.basename(str(f.get("path", "")))):
            with contextlib.suppress(CatalogError):  # gone or odd: the report still has counts
                self.add_file(str(f["path"]), int(f.get("events", 0)))
