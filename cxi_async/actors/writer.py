"""Writer actor: Found results in, CXI files out, one FileDone back per renamed file.

Thin shell over `core.assembly.FileAssembler` (which events go in which file) and
`core.cxi.write_cxi_file` (how a file is written). `submit` reads the batch's image (a
zero-copy view, held until the file is written) and waits for room in a bounded anyio memory
stream: that wait is the backpressure the coordinator feels. Files are written in worker
threads, two at a time, and each panel is copied once, straight into the frame HDF5 writes.
What the writer has and has not renamed is the coordinator's ledger's business: the writer
keeps no books of deliveries.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import numpy as np
import ray

from cxi_async.actors.common import debug_init, is_actor_death, is_object_lost, setup_actor_logging
from cxi_async.config import Config
from cxi_async.core import cxi
from cxi_async.core.assembly import FileAssembler, FileBatch
from cxi_async.core.finding import Layouts
from cxi_async.core.geometry import SlabLayout, write_slab_geom
from cxi_async.core.messages import FileDone, Found
from cxi_async.core.runstats import STATS_KEY, PeakStats
from cxi_async.replay.lattice import REPLAY_CELL_FILE, UnitCell, write_cell_file

log = logging.getLogger(__name__)

RETRY_FIRST_S = 0.5
RETRY_MAX_S = 10.0
DIE_MARKER = ".debug_writer_died"  # debug.die_after_renames: the drill's writer died once
MAX_CONCURRENT_WRITES = 2  # measured: overlapping one file's fsync with the next file's writes


class Writer:
    """One writer of a run; several may share a directory (interleaved sequence numbers)."""

    def __init__(
        self,
        config: Config,
        index: int,
        coordinator: Any,
        layout: SlabLayout | None,
        output_dir: str,
        run_label: str,
        run_id: str,
    ) -> None:
        setup_actor_logging(config)
        debug_init(config, "writer")
        out = config.output
        self.config = config
        self.index = index
        self.coordinator = coordinator
        self.layouts = Layouts(layout)
        self.geom_written: set[tuple[Path, int, int, int]] = set()
        self.output_dir = Path(output_dir)
        self.run_label = run_label
        self.num_writers = out.num_writers
        share = max(1, config.processing.credits // out.num_writers)
        self.assembler = FileAssembler(
            events_per_file=out.events_per_file,
            max_file_age_s=out.max_file_age_s,
            max_parked_deliveries=share,
        )
        self.sequences: dict[Path, cxi.SequenceCounter] = {}  # per directory written into
        self._open_directory(self.output_dir)
        if out.run_from_metadata is not None:  # runs of earlier sessions, which may not return
            for directory in sorted(p for p in self.output_dir.iterdir() if p.is_dir()):
                self._open_directory(directory)
        self.inbox_send: Any = None  # the bounded memory stream, made on the event loop
        self.inbox_receive: Any = None
        self.main: asyncio.Task | None = None  # the one root task; its task group holds the rest
        self.wake = anyio.Event()
        self.writing = 0  # files being written now
        self.replying = 0
        self.warned_no_run = False
        self.images_lost_warned = False
        self.events_without_image = 0
        self.flush_requested = False
        self.close_open = False  # set by close_open_file: the open file is due once
        self.retry_after = 0.0
        self.files_written = 0
        # Renamed files whose FileDone the coordinator has not answered: what it asks for at
        # the stop (`written_files`) to list any it missed. Only these: a run of days writes
        # tens of thousands of files, and keeping them all here would grow without bound.
        self.unconfirmed: dict[str, dict] = {}
        self.events_written = 0
        self.bytes_written = 0
        self.write_seconds = 0.0
        self.failures = 0
        self.peak_stats: PeakStats | None = None  # made at the first file (needs its layout)
        self.drained = False  # set by flush(): from then on stats() carry the histograms
        self.failing_since: float | None = None
        self.residue: set[Path] = set()  # .inprogress files a failed write could not remove
        self.attrs = {
            "min_num_peak": config.peak_finding.min_num_peak,
            "geometry_file": (layout.geom_file or "") if layout else "",
            "geometry_sha256": (layout.geom_sha256 or "") if layout else "",
            "batch_id_source": "peaknet-pipeline-ray Q2",
            cxi.RUN_ID_ATTR: run_id,  # whose delivery ids DELIVERY_PATH holds
            **config.metadata.constants,  # beamline conditions of the run
        }

    def _open_directory(self, directory: Path) -> cxi.SequenceCounter:
        """Count a directory's sequence numbers, then remove a crashed writer's leftovers.

        A crashed writer's `.inprogress` files are incomplete: remove them, say so. Writer k
        owns the sequence numbers congruent to k, so it only touches those; the counter has
        already seen them, so their numbers are never reused.
        """
        prefix = self.config.output.file_prefix
        sequence = self.sequences[directory] = cxi.SequenceCounter(directory, prefix)
        for seq, path in cxi.leftover_inprogress(directory, prefix):
            if seq % self.num_writers != self.index:
                continue
            try:
                path.unlink()
                log.warning("removed %s, left incomplete by an earlier writer", path)
            except OSError as exc:
                log.warning("could not remove the incomplete %s: %s", path, exc)
        return sequence

    # ------------------------------------------------------------------ API

    async def submit(self, found: Found) -> str | None:
        """Take a delivery's events to file; returns a reason when they are refused.

        The image is read now, not when its file is written: the producer that owns it may
        exit meanwhile (the end of an inference job), and a view held here stays readable.
        Waiting for room in the inbox is the backpressure on the coordinator.
        """
        self._ensure_started()
        if found.image and not found.images_missing:
            try:
                found.image = [await found.image[0]]
            except Exception as exc:
                if not is_object_lost(exc) and not is_actor_death(exc):
                    raise
                refusal = self._image_lost(found, exc)
                if refusal is not None:
                    return refusal
        await self.inbox_send.send(found)
        if self.config.debug.reply_delay_s:  # drill: die between accepting and replying
            self.replying += 1
            await anyio.sleep(self.config.debug.reply_delay_s)
            self.replying -= 1
        return None

    def _image_lost(self, found: Found, exc: BaseException) -> str | None:
        """The refusal (processing.on_missing_image = "reject"), or None: written without."""
        reason = f"the detector image is gone from the object store ({type(exc).__name__})"
        if self.config.processing.on_missing_image == "reject":
            log.error("batch %s: %s; its events are rejected", found.batch_id, reason)
            return f"batch {found.batch_id}: {reason}"
        log.log(
            logging.DEBUG if self.images_lost_warned else logging.WARNING,
            "batch %s: %s; writing its peaks without images (said once per writer)",
            found.batch_id,
            reason,
        )
        self.images_lost_warned = True
        found.image, found.images_missing = [], True
        return None

    async def flush(self) -> None:
        """Write everything held now (drain/stop), then return."""
        self._ensure_started()
        self.flush_requested = True
        self._wake()
        while self._inbox_size() or self.assembler.pending_events or self.writing:
            await anyio.sleep(0.02)
        self.flush_requested = False
        self.drained = True  # the coordinator is stopping: its final stats go into the report

    async def close_open_file(self) -> None:
        """The stream paused: write the open file now instead of at max_file_age_s."""
        self._ensure_started()
        self.close_open = True
        self._wake()

    async def stats(self) -> dict:
        return {
            "index": self.index,
            "inbox": self._inbox_size(),
            "pending_events": self.assembler.pending_events,
            "open_deliveries": self.assembler.parked_deliveries,
            "files": self.files_written,
            "events_written": self.events_written,
            "bytes_written": self.bytes_written,
            "write_seconds": self.write_seconds,
            "events_without_image": self.events_without_image,
            "write_failures": self.failures,
            "replying": self.replying,  # accepted results whose reply is held (drill)
            "failing": self.failing_since is not None,
            "node_id": ray.get_runtime_context().get_node_id(),  # placement (multi-node)
            STATS_KEY: None
            if self.peak_stats is None
            else self.peak_stats.to_dict(histograms=self.drained),  # histograms: for the report
        }

    async def written_files(self) -> list[dict]:
        """The renamed files the coordinator has not confirmed (it lists the others)."""
        return list(self.unconfirmed.values())

    async def ping(self) -> int:
        return self.index

    # ------------------------------------------------------------------ loop

    def _ensure_started(self) -> None:
        if self.main is None:
            self.inbox_send, self.inbox_receive = anyio.create_memory_object_stream[Found](
                self.config.processing.writer_inbox
            )
            self.main = asyncio.get_running_loop().create_task(self._run())

    def _inbox_size(self) -> int:
        return (
            0 if self.inbox_receive is None else self.inbox_receive.statistics().current_buffer_used
        )

    def _wake(self) -> None:
        self.wake.set()

    async def _run(self) -> None:
        """Receive results and start writes, in one task group for the actor's life."""
        async with anyio.create_task_group() as group:
            group.start_soon(self._receive)
            while True:
                flush = self.flush_requested or self.close_open
                while self._may_start_write() and self.assembler.due(flush=flush):
                    # Take the file here, not in the write task: a task that has not run yet
                    # would leave its events in the open file for the next turn to take again.
                    batch = self.assembler.take_file()
                    if batch is None:
                        break
                    self.writing += 1
                    group.start_soon(self._write_next, batch)
                if self.close_open and not self.assembler.open_events:
                    self.close_open = False  # the open file of the pause was taken
                with anyio.move_on_after(self._timeout()):
                    await self.wake.wait()
                self.wake = anyio.Event()

    async def _receive(self) -> None:
        async for found in self.inbox_receive:
            self.assembler.add(found)
            self._wake()

    def _may_start_write(self) -> bool:
        """Two files at a time (one in HDF5 while the other fsyncs); one while failing."""
        limit = 1 if self.failing_since is not None else MAX_CONCURRENT_WRITES
        return self.writing < limit and time.monotonic() >= self.retry_after

    def _timeout(self) -> float:
        if self.writing and not self._may_start_write():
            return float("inf")  # the end of a write wakes the loop
        if self.assembler.retry or self.assembler.closed:
            return max(0.0, self.retry_after - time.monotonic())
        due = self.assembler.seconds_until_due()
        return float("inf") if due is None else due

    async def _write_next(self, batch: FileBatch) -> None:
        """Write one file taken from the assembler; on failure keep its events and retry."""
        try:
            done = await self._write(batch)
        finally:
            self.writing -= 1
            self._wake()
        if done is None:
            return
        self._maybe_die_unreported()
        try:
            await self.coordinator.file_done.remote(done)
        except Exception as exc:  # the coordinator is gone: the run is over; keep the loop
            log.warning("writer %d could not report %s: %s", self.index, done.path, exc)
            return
        self.unconfirmed.pop(done.path, None)  # listed by the coordinator

    async def _write(self, batch: FileBatch) -> FileDone | None:
        images = {found.delivery_id: found.image[0] for found, _ in batch.events if found.image}
        if self.config.debug.write_delay_s:
            await anyio.sleep(self.config.debug.write_delay_s)
        self._remove_residue()
        t0 = time.perf_counter()
        try:  # every exit hands the taken file back: written, or failed and kept for a retry
            events = cxi.CxiEvents.pack(
                [event for _, event in batch.events], self.config.peak_finding.max_num_peak
            )
            directory, label, sequence = self._location(batch.events[0][1].run)

            def next_name() -> Path:
                seq = self._next_sequence(sequence)
                return directory / cxi.cxi_file_name(self.config.output.file_prefix, label, seq)

            path = await anyio.to_thread.run_sync(
                self._write_file, next_name(), batch, events, images, label, next_name
            )
        except Exception as exc:  # CxiWriteError, or a bug: either way the events stay
            self._write_failed(batch, exc)
            return None
        seconds = time.perf_counter() - t0
        try:  # the file is renamed: whatever happens now, FileDone goes out
            size = self._write_succeeded(path, batch, seconds)
        except Exception:
            log.exception("writer %d: wrote %s but could not count it", self.index, path)
            size = 0
        return FileDone(self.index, str(path), batch.ids, size, seconds)

    def _maybe_die_unreported(self) -> None:
        """Drill (`debug.die_after_renames`): writer 0 exits between a rename and its
        FileDone, once per output directory (a marker file keeps its replacement alive)."""
        n = self.config.debug.die_after_renames
        if not n or self.index != 0 or self.files_written < n:
            return
        marker = self.output_dir / DIE_MARKER
        try:
            marker.touch(exist_ok=False)
        except FileExistsError:
            return
        log.warning("debug.die_after_renames = %d: writer 0 exits before its FileDone", n)
        os._exit(1)

    def _write_file(
        self,
        path: Path,
        batch: FileBatch,
        events: cxi.CxiEvents,
        images: dict[int, Any],
        label: str,
        next_name: Callable[[], Path],
    ) -> Path:
        """Write the file; a name another writer took is skipped (the path written returned)."""
        first, _ = batch.events[0]
        layout = self.layouts.for_shape(first.num_panels, *first.panel_shape)
        self._write_slab_geom(path.parent, first.num_panels, first.panel_shape, layout)
        no_image = sum(found.delivery_id not in images for found, _ in batch.events)

        def fill_frame(i: int, out: np.ndarray) -> None:
            found, event = batch.events[i]
            image = images.get(found.delivery_id)
            if image is None:
                out[...] = 0
                return
            c = found.num_panels
            b = event.event_index
            top, left = found.pad_offset
            layout.assemble(image[b * c : (b + 1) * c, 0, top:, left:], out)

        return cxi.write_cxi_file(
            path,
            events,
            layout.slab_shape,
            None if no_image == len(batch.events) else fill_frame,
            compression=self.config.output.compression,
            fsync=self.config.output.fsync,
            attrs={
                **self.attrs,
                "run": label,
                "images_missing_events": np.int64(no_image),
                "timestamps_missing": np.int64(sum(e.timestamp_missing for _, e in batch.events)),
            },
            filtered_events=batch.filtered,
            next_name=next_name,
            deliveries=batch.ids,
        )

    def _write_slab_geom(
        self, directory: Path, num_panels: int, panel_shape: tuple[int, int], layout: SlabLayout
    ) -> None:
        """The geometry that indexes these files, written beside them once per layout."""
        key = (directory, num_panels, *panel_shape)
        if key in self.geom_written:
            return
        path = directory / f"{self.config.output.file_prefix}.geom"
        write_slab_geom(
            path, layout, self.config.geometry.geom_file, self.config.metadata.constants
        )
        replay = self.config.replay
        if replay.enabled and replay.pattern == "lattice":  # the cell to index the demo with
            cell = UnitCell.from_values(replay.cell, replay.lattice_type, replay.centering)
            write_cell_file(directory / REPLAY_CELL_FILE, cell)
        self.geom_written.add(key)

    def _remove_residue(self) -> None:
        """Remove what failed writes left behind, once their directory is reachable again."""
        for path in list(self.residue):
            try:
                path.unlink()
                log.info("removed %s, left by a failed write", path)
            except FileNotFoundError:
                if not path.parent.is_dir():
                    continue  # the directory is still away: try again next time
            except OSError:
                continue
            self.residue.discard(path)

    def _location(self, run: str | None) -> tuple[Path, str, cxi.SequenceCounter]:
        """Directory, label and sequence of a file: ``<output_dir>/<run>/`` for a metadata run.

        A run's directory is made (and cleared of a crashed writer's leftovers) on first use;
        OSError from that is a failed write like any other, retried with the events kept.
        """
        key = self.config.output.run_from_metadata
        if run is None:
            if key is not None and not self.warned_no_run:
                self.warned_no_run = True
                log.warning(
                    "events without metadata[%r] go to %s, labelled %s",
                    key,
                    self.output_dir,
                    self.run_label,
                )
            return self.output_dir, self.run_label, self.sequences[self.output_dir]
        directory = self.output_dir / run
        sequence = self.sequences.get(directory)
        if sequence is None:
            directory.mkdir(exist_ok=True)
            sequence = self._open_directory(directory)
            log.info("run %s: writing to %s", run, directory)
        return directory, run, sequence

    def _next_sequence(self, sequence: cxi.SequenceCounter) -> int:
        """Numbers of writer k are congruent to k modulo the number of writers."""
        while True:
            seq = sequence.next()
            if seq % self.num_writers == self.index:
                return seq

    def _write_failed(self, batch: FileBatch, exc: Exception) -> None:
        """Log a failure once (retries log at DEBUG until writing works again)."""
        self.failures += 1
        first = self.failing_since is None
        if first:
            self.failing_since = time.monotonic()
        log.log(
            logging.ERROR if first else logging.DEBUG,
            "%s; keeping its %d events and retrying (credits are not released meanwhile)",
            exc,
            len(batch.events),
            exc_info=not isinstance(exc, OSError),  # CxiWriteError, or a run directory
        )
        residue = getattr(exc, "residue", None)
        if residue is not None:
            self.residue.add(residue)
        self.assembler.file_failed(batch)
        self.retry_after = time.monotonic() + min(
            RETRY_MAX_S, RETRY_FIRST_S * 2 ** min(batch.attempts - 1, 5)
        )

    def _write_succeeded(self, path: Path, batch: FileBatch, seconds: float) -> int:
        """Count a renamed file; returns its size."""
        if self.failing_since is not None:
            log.info(
                "writing works again after %.1f s: wrote %s",
                time.monotonic() - self.failing_since,
                path,
            )
            self.failing_since = None
        size = path.stat().st_size
        self.files_written += 1
        self.unconfirmed[str(path)] = {
            "path": str(path),
            "events": len(batch.events),
            "bytes": size,
        }
        self.events_without_image += sum(not found.image for found, _ in batch.events)
        self.events_written += len(batch.events)
        self.bytes_written += size
        self._count_peaks(batch)
        self.write_seconds += seconds
        log.debug(
            "wrote %s (%d events, %.1f MB, %.2f s)", path, len(batch.events), size / 1e6, seconds
        )
        return size

    def _count_peaks(self, batch: FileBatch) -> None:
        """Hit-finding numbers for status.json and the report (runstats); never fails a write."""
        try:
            if self.peak_stats is None:
                first, _ = batch.events[0]
                layout = self.layouts.for_shape(first.num_panels, *first.panel_shape)
                self.peak_stats = PeakStats.for_run(self.config.geometry.geom_file, layout)
            self.peak_stats.add_events(event for _, event in batch.events)
        except Exception:
            log.exception("writer %d: could not count the peaks of a file", self.index)
