"""Writer actor: results in, CXI files out, acks back to the drainer.

Thin shell over `assembly.FileAssembler` (what goes in which file) and `cxi.write_cxi_file`
(how a file is written). Images are read from the object store zero-copy when a file is
written and each panel is copied once, straight into the frame buffer HDF5 writes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import ray

from cxi_async.actors.common import debug_init, is_actor_death, is_object_lost, setup_actor_logging
from cxi_async.config import Config
from cxi_async.core import cxi
from cxi_async.core.assembly import FileAssembler, FileBatch
from cxi_async.core.finding import Layouts
from cxi_async.core.geometry import SlabLayout, write_slab_geom
from cxi_async.core.messages import Ack, BatchResult
from cxi_async.core.runstats import STATS_KEY, PeakStats
from cxi_async.replay.lattice import REPLAY_CELL_FILE, UnitCell, write_cell_file

log = logging.getLogger(__name__)

RETRY_FIRST_S = 0.5
RETRY_MAX_S = 10.0
MAX_CONCURRENT_WRITES = 2  # measured: overlapping one file's fsync with the next file's writes


class Writer:
    """One writer of a run; several may share a directory (interleaved sequence numbers)."""

    def __init__(
        self,
        config: Config,
        index: int,
        drainer: Any,
        layout: SlabLayout | None,
        output_dir: str,
        run_label: str,
    ) -> None:
        setup_actor_logging(config)
        debug_init(config, "writer")
        self.replying = 0
        out = config.output
        self.config = config
        self.index = index
        self.drainer = drainer
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
        self.inbox: asyncio.Queue[BatchResult] = asyncio.Queue(
            maxsize=config.processing.writer_inbox
        )
        self.sequences: dict[Path, cxi.SequenceCounter] = {}  # per directory written into
        self._open_directory(self.output_dir)
        if out.run_from_metadata is not None:  # runs of earlier sessions, which may not return
            for directory in sorted(p for p in self.output_dir.iterdir() if p.is_dir()):
                self._open_directory(directory)
        self.warned_no_run = False
        self.images_lost_warned = False
        self.events_without_image = 0
        self.flush_requested = False
        self.close_open = False  # set by close_open_file: the open file is due once
        self.wake = asyncio.Event()
        self.loop_task: asyncio.Task | None = None
        self.write_tasks: set[asyncio.Task] = set()
        self.retry_after = 0.0
        self.files: list[dict] = []
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

    async def submit(self, result: BatchResult) -> None:
        """Queue a finder's result; waiting here is the backpressure on finders.

        The image is read now, not when its file is written: the producer that owns it may
        exit meanwhile (the end of an inference job), and a view held here stays readable.
        """
        self._ensure_loop()
        if result.image and not result.images_missing:
            try:
                result.image = [await result.image[0]]
            except Exception as exc:
                if not is_object_lost(exc) and not is_actor_death(exc):
                    raise
                if await self._image_lost(result, exc):
                    return
        await self.inbox.put(result)
        if self.config.debug.reply_delay_s:  # drill: die between accepting and replying
            self.replying += 1
            await asyncio.sleep(self.config.debug.reply_delay_s)
            self.replying -= 1

    async def _image_lost(self, result: BatchResult, exc: BaseException) -> bool:
        """Reject the delivery (True), or mark it to be written without images (False)."""
        reason = f"the detector image is gone from the object store ({type(exc).__name__})"
        if self.config.processing.on_missing_image == "reject":
            log.error("batch %s: %s; its events are rejected", result.batch_id, reason)
            ack = Ack(
                result.delivery_id,
                written=0,
                filtered=result.filtered,
                rejected=len(result.kept),
                reason=reason,
                num_events=result.num_events,
            )
            await self._send_acks([ack])
            return True
        log.log(
            logging.DEBUG if self.images_lost_warned else logging.WARNING,
            "batch %s: %s; writing its peaks without images (said once per writer)",
            result.batch_id,
            reason,
        )
        self.images_lost_warned = True
        result.image, result.images_missing = [], True
        return False

    async def flush(self) -> None:
        """Write everything held now (drain/stop), then return."""
        self._ensure_loop()
        self.flush_requested = True
        self.wake.set()
        while self.inbox.qsize() or self.assembler.pending_events or self._writing:
            await asyncio.sleep(0.02)
        self.flush_requested = False
        self.drained = True  # the drainer is stopping: its final stats go into the report

    async def close_open_file(self) -> None:
        """The stream paused: write the open file now instead of at max_file_age_s."""
        self._ensure_loop()
        self.close_open = True
        self.wake.set()

    async def stats(self) -> dict:
        return {
            "index": self.index,
            "inbox": self.inbox.qsize(),
            "pending_events": self.assembler.pending_events,
            "open_deliveries": len(self.assembler.deliveries),
            "files": len(self.files),
            "events_written": self.events_written,
            "bytes_written": self.bytes_written,
            "write_seconds": self.write_seconds,
            "duplicates": self.assembler.duplicates,
            "events_without_image": self.events_without_image,
            "write_failures": self.failures,
            "replying": self.replying,  # accepted results whose reply is held (drill)
            "dedup_batches": len(self.assembler.seen),  # batch ids remembered (bounded)
            "failing": self.failing_since is not None,
            "node_id": ray.get_runtime_context().get_node_id(),  # placement (multi-node)
            STATS_KEY: None
            if self.peak_stats is None
            else self.peak_stats.to_dict(histograms=self.drained),  # histograms: for the report
        }

    async def written_files(self) -> list[dict]:
        return list(self.files)

    async def ping(self) -> int:
        return self.index

    # ------------------------------------------------------------------ loop

    @property
    def _writing(self) -> bool:
        return bool(self.write_tasks)

    def _may_start_write(self) -> bool:
        """Two files at a time (one in HDF5 while the other fsyncs); one while failing."""
        limit = 1 if self.failing_since is not None else MAX_CONCURRENT_WRITES
        return len(self.write_tasks) < limit and time.monotonic() >= self.retry_after

    def _ensure_loop(self) -> None:
        if self.loop_task is None:
            self.loop_task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        """Receive results while files are written in worker threads."""
        getter: asyncio.Task | None = None
        while True:
            if getter is None:
                getter = asyncio.ensure_future(self.inbox.get())
            waker = asyncio.ensure_future(self.wake.wait())
            done, _ = await asyncio.wait(
                {getter, waker}, timeout=self._timeout(), return_when=asyncio.FIRST_COMPLETED
            )
            waker.cancel()
            self.wake.clear()
            if getter in done:
                acks = self.assembler.add(getter.result())
                getter = None
                await self._send_acks(acks)
            flush = self.flush_requested or self.close_open
            while self._may_start_write() and self.assembler.due(flush=flush):
                # Take the file now, not in the task: a task that has not run yet would leave
                # the events in the open file, and the next turn would start a second task
                # that takes the same file's remainder (files of 6 events instead of 16).
                batch = self.assembler.take_file()
                if batch is None:
                    break
                task = asyncio.ensure_future(self._write_next(batch))
                self.write_tasks.add(task)
                task.add_done_callback(self._write_done)
            if self.close_open and not self.assembler.open_events:
                self.close_open = False  # the open file of the pause was taken

    def _timeout(self) -> float | None:
        if self.write_tasks and not self._may_start_write():
            return None  # _write_done wakes the loop
        if self.assembler.retry or self.assembler.closed:
            return max(0.0, self.retry_after - time.monotonic())
        return self.assembler.seconds_until_due()

    def _write_done(self, task: asyncio.Task) -> None:
        self.write_tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error(
                "writer %d: unexpected error while writing a file",
                self.index,
                exc_info=task.exception(),
            )
        self.wake.set()

    async def _write_next(self, batch: FileBatch) -> None:
        """Write one file taken from the assembler; on failure keep its events and retry."""
        images = {e.delivery_id: e.image[0] for e in batch.events if e.image}
        if self.config.debug.write_delay_s:
            await asyncio.sleep(self.config.debug.write_delay_s)
        self._remove_residue()
        t0 = time.perf_counter()
        try:  # every exit hands the taken file back: written, or failed and kept for a retry
            events = cxi.CxiEvents.pack(
                [_record(e) for e in batch.events], self.config.peak_finding.max_num_peak
            )
            directory, label, sequence = self._location(batch.events[0].event.run)

            def next_name() -> Path:
                seq = self._next_sequence(sequence)
                return directory / cxi.cxi_file_name(self.config.output.file_prefix, label, seq)

            path = await asyncio.to_thread(
                self._write_file, next_name(), batch, events, images, label, next_name
            )
        except Exception as exc:  # CxiWriteError, or a bug: either way the events stay
            self._write_failed(batch, exc)
            return
        self._write_succeeded(path, batch, time.perf_counter() - t0)
        await self.drainer.file_written.remote(
            str(path), [(e.delivery_id, e.event.event_index) for e in batch.events]
        )
        await self._send_acks(self.assembler.file_written(batch))

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
        first = batch.events[0]
        layout = self.layouts.for_shape(first.num_panels, *first.panel_shape)
        self._write_slab_geom(path.parent, first.num_panels, first.panel_shape, layout)
        no_image = sum(e.delivery_id not in images for e in batch.events)

        def fill_frame(i: int, out: np.ndarray) -> None:
            event = batch.events[i]
            image = images.get(event.delivery_id)
            if image is None:
                out[...] = 0
                return
            c = event.num_panels
            b = event.event.event_index
            top, left = event.pad_offset
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
                "timestamps_missing": np.int64(
                    sum(e.event.timestamp_missing for e in batch.events)
                ),
            },
            filtered_events=batch.filtered,
            next_name=next_name,
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

    def _write_succeeded(self, path: Path, batch: FileBatch, seconds: float) -> None:
        if self.failing_since is not None:
            log.info(
                "writing works again after %.1f s: wrote %s",
                time.monotonic() - self.failing_since,
                path,
            )
            self.failing_since = None
        size = path.stat().st_size
        self.files.append({"path": str(path), "events": len(batch.events), "bytes": size})
        self.events_without_image += sum(not e.image for e in batch.events)
        self.events_written += len(batch.events)
        self.bytes_written += size
        self._count_peaks(batch)
        self.write_seconds += seconds
        log.debug(
            "wrote %s (%d events, %.1f MB, %.2f s)", path, len(batch.events), size / 1e6, seconds
        )

    def _count_peaks(self, batch: FileBatch) -> None:
        """Hit-finding numbers for status.json and the report (runstats); never fails a write."""
        try:
            if self.peak_stats is None:
                first = batch.events[0]
                layout = self.layouts.for_shape(first.num_panels, *first.panel_shape)
                self.peak_stats = PeakStats.for_run(self.config.geometry.geom_file, layout)
            self.peak_stats.add_events(e.event for e in batch.events)
        except Exception:
            log.exception("writer %d: could not count the peaks of a file", self.index)

    async def _send_acks(self, acks: list[Ack]) -> None:
        if acks:
            await self.drainer.ack.remote(acks)


def _record(event: Any) -> cxi.EventRecord:
    e = event.event
    return cxi.EventRecord(
        fs=e.fs,
        ss=e.ss,
        total_intensity=e.total_intensity,
        npix=e.npix,
        max_value=e.max_value,
        panel=e.panel,
        photon_energy_ev=e.photon_energy_ev,
        timestamp=e.timestamp,
        batch_id=event.batch_id,
        event_index=e.event_index,
        datasets=e.datasets,
    )
