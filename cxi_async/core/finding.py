"""One Q2 item in, one Found or Rejected out: the finder's work without Ray.

Decode the item (q2), read its image, find peaks (peaks), keep the events with enough
of them, and map the kept peaks onto the slab (geometry). The finder actor runs
`BatchFinder.run` in a worker thread and passes `ray.get` as `fetch`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from cxi_async.config import Config
from cxi_async.core import peaks, q2
from cxi_async.core.geometry import GeometryMismatch, SlabLayout, load_layout
from cxi_async.core.messages import EventPeaks, Found, Rejected
from cxi_async.core.metadata import MetadataRules

log = logging.getLogger(__name__)


IMAGE_GONE = (
    "image-gone",
    "warning",
    "detector images are gone from the object store (their inference job ended before "
    "cxi_async read them): those hits are written with their peaks and a zero image, flagged "
    "by the file attribute images_missing_events and counted as events_without_image",
)


class RefUnavailable(Exception):
    """An ObjectRef of the item could not be resolved (its owner exited, object lost).

    `fetch` callables raise it (the actor converts Ray's errors), so this module need not
    know Ray's exception types.
    """


def load_slab_layout(config: Config) -> SlabLayout | None:
    """The configured geometry, or None for panels stacked in order (known per batch)."""
    if config.geometry.geom_file is None:
        return None
    return load_layout(config.geometry.geom_file)


class Layouts:
    """The configured slab layout, or stacked layouts made per data shape when there is none."""

    def __init__(self, layout: SlabLayout | None) -> None:
        self.layout = layout
        self.stacked: dict[tuple[int, int, int], SlabLayout] = {}

    def for_shape(self, num_panels: int, height: int, width: int) -> SlabLayout:
        """The slab layout for this data shape; raises GeometryMismatch if it cannot fit."""
        if self.layout is not None:
            self.layout.check(num_panels, height, width)
            return self.layout
        key = (num_panels, height, width)
        if key not in self.stacked:
            self.stacked[key] = SlabLayout.stacked(num_panels, height, width)
        return self.stacked[key]


class BatchFinder:
    """Everything a finder holds: settings and the geometry loaded once."""

    def __init__(self, config: Config, layout: SlabLayout | None = None) -> None:
        self.pf = config.peak_finding
        self.on_missing_image = config.processing.on_missing_image
        self.run_key = config.output.run_from_metadata
        self.layouts = Layouts(layout if layout is not None else load_slab_layout(config))
        self.fallback_energy = fallback_energy(config, self.layouts.layout)
        md = config.metadata
        self.rules = MetadataRules(md.wavelength_unit, dict(md.datasets))
        self.padding = q2.Padding(
            unpadded_shape(config, self.layouts.layout), config.queue.pad_style
        )

    def run(self, item: Any, delivery_id: int, fetch: Callable[[Any], Any]) -> Found | Rejected:
        """Find and select the peaks of one item; a bad item becomes a rejected result."""
        batch_id = _batch_id_of(item)
        try:
            batch = q2.decode_item(
                item, fetch, self.run_key, rules=self.rules, padding=self.padding
            )
            b, c, h, w = batch.original_shape
            layout = self.layouts.for_shape(c, h, w)
        except q2.MalformedItem as exc:
            return _rejected(delivery_id, batch_id, str(exc), event_count(item))
        except GeometryMismatch as exc:
            return _rejected(delivery_id, batch_id, f"batch {batch_id}: {exc}", event_count(item))
        except RefUnavailable as exc:
            return _rejected(
                delivery_id,
                batch_id,
                f"batch {batch_id}: predictions_ref is gone: {exc}",
                event_count(item),
            )
        image, images_missing, reason = self._image(batch, fetch)
        if reason is not None:
            return _rejected(delivery_id, batch.batch_id, reason, num_events=b)
        t0 = time.perf_counter()
        try:
            table = peaks.find_peaks(
                batch.unpadded(batch.logits),
                batch.original_shape,
                bfloat16=batch.logits_kind == "bfloat16",
                image=None if image is None else batch.unpadded(image),
                connectivity=self.pf.connectivity,
            )
        except peaks.PeakFindingError as exc:
            return _rejected(delivery_id, batch.batch_id, f"batch {batch.batch_id}: {exc}", b)
        selection = peaks.select_events(table, self.pf.min_num_peak, self.pf.max_num_peak)
        kept = self._kept_events(batch, table, selection, layout)
        return Found(
            delivery_id=delivery_id,
            batch_id=batch.batch_id,
            num_events=b,
            kept=kept,
            filtered=int(selection.filtered.size),
            image=[] if images_missing else [batch.image_ref],
            num_panels=c,
            panel_shape=(h, w),
            pad_offset=batch.pad_offset,
            images_missing=images_missing,
            truncated_peaks=selection.total_truncated,
            notices=self._notices(batch, kept, image),
            find_seconds=time.perf_counter() - t0,
        )

    def _image(
        self, batch: q2.DecodedBatch, fetch: Callable[[Any], Any]
    ) -> tuple[np.ndarray | None, bool, str | None]:
        """(image or None, written without images?, rejection reason or None)."""
        if batch.image_ref is None:
            return None, True, None
        try:
            image = q2.check_image(batch, fetch(batch.image_ref))
        except q2.MalformedItem as exc:
            return None, True, str(exc)
        except RefUnavailable as exc:
            if self.on_missing_image == "reject":
                return None, True, f"batch {batch.batch_id}: the detector image is gone: {exc}"
            log.debug("batch %s: the detector image is gone (%s)", batch.batch_id, exc)
            return None, True, None
        return image, False, None

    def _kept_events(
        self,
        batch: q2.DecodedBatch,
        table: peaks.PeakTable,
        selection: peaks.Selection,
        layout: SlabLayout,
    ) -> list[EventPeaks]:
        rows = selection.peak_index
        row, col = (
            (table.weighted_row, table.weighted_col)
            if self.pf.weighted_centre
            else (table.row, table.col)
        )
        ss, fs = layout.to_slab(table.panel[rows], row[rows], col[rows])
        columns = {
            "fs": fs.astype(np.float32),
            "ss": ss.astype(np.float32),
            "total_intensity": table.total_intensity[rows],
            "npix": table.npix[rows],
            "max_value": table.max_value[rows],
            "panel": table.panel[rows].astype(np.int16),
        }
        meta = batch.meta
        energy = np.where(
            np.isnan(meta.photon_energy_ev), self.fallback_energy or 0.0, meta.photon_energy_ev
        )
        kept = []
        for i, b in enumerate(selection.kept.tolist()):
            s = slice(int(selection.peak_offsets[i]), int(selection.peak_offsets[i + 1]))
            kept.append(
                EventPeaks(
                    event_index=b,
                    **{k: v[s] for k, v in columns.items()},
                    photon_energy_ev=float(energy[b]),
                    timestamp=int(meta.timestamp[b]),
                    batch_id=batch.batch_id,
                    run=batch.run[b] if batch.run is not None else None,
                    timestamp_missing=bool(meta.timestamp_missing[b]),
                    datasets=tuple((p, float(v[b])) for p, v in meta.datasets.items()),
                )
            )
        return kept

    def _notices(
        self, batch: q2.DecodedBatch, kept: list[EventPeaks], image: np.ndarray | None
    ) -> list[tuple[str, str, str]]:
        """The metadata's notices, and one for kept events CrystFEL would skip (no energy)."""
        notices = [(n.kind, n.level, n.text) for n in batch.meta.notices]
        if kept and batch.image_ref is not None and image is None:
            notices.append(IMAGE_GONE)
        unknown = np.isnan(batch.meta.photon_energy_ev)
        if self.fallback_energy is None and any(unknown[e.event_index] for e in kept):
            notices.append(
                (
                    "no-energy",
                    "warning",
                    f"batch {batch.batch_id}: events without a photon energy in their metadata "
                    "are written with photon energy 0 (never NaN), and CrystFEL cannot index such "
                    "frames: set output.photon_energy_ev, or photon_energy in the geometry file",
                )
            )
        return notices


def fallback_energy(config: Config, layout: SlabLayout | None) -> float | None:
    """eV for events whose metadata has none: output.photon_energy_ev, else the geometry's."""
    if config.output.photon_energy_ev is not None:
        return config.output.photon_energy_ev
    return getattr(layout, "photon_energy_ev", None) if layout is not None else None


def unpadded_shape(config: Config, layout: SlabLayout | None) -> tuple[int, int] | None:
    """Real (H, W) of items without preprocessing_metadata: queue.unpadded_shape, else the
    panel of a one-panel geometry (an assembled detector image), else None (not padded)."""
    if config.queue.unpadded_shape is not None:
        return tuple(config.queue.unpadded_shape)
    if layout is not None and layout.num_panels == 1:
        return layout.panel_shape
    return None


def event_count(item: Any) -> int:
    """Best guess of a rejected item's events, so that they count: B of its metadata or of
    its logits, 0 when neither can be read."""
    meta = getattr(item, "preprocessing_metadata", None)
    shape = getattr(meta, "original_shape", None) if meta is not None else None
    if shape is None:
        shape = getattr(getattr(item, "predictions", None), "shape", None)
    try:
        return max(0, int(shape[0])) if shape is not None else 0
    except (TypeError, ValueError, IndexError):
        return 0


def _batch_id_of(item: Any) -> str:
    bid = getattr(item, "batch_id", None)
    return bid if isinstance(bid, str) else f"<{type(item).__name__}>"


def _rejected(delivery_id: int, batch_id: str, reason: str, num_events: int = 0) -> Rejected:
    log.error(
        "rejected %s", reason if reason.startswith("batch") else f"batch {batch_id}: {reason}"
    )
    return Rejected(delivery_id, batch_id, num_events, reason)
