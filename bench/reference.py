"""Straightforward reference implementations: the baselines that tests and benches compare with.

Slow on purpose (per panel, per label, per event, per scalar); never used by the pipeline.
Sections: the peak finder (oracle for ``peaks.find_peaks``), the CXI writer.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import h5py
import numpy as np
from scipy import ndimage

from cxi_async.core.peaks import PeakTable

if TYPE_CHECKING:
    from cxi_async.core.cxi import CxiEvents


# --- baseline peak finder ---

_STRUCTURE = {4: ndimage.generate_binary_structure(2, 1), 8: np.ones((3, 3), bool)}


def _logits_as_float32(panel: np.ndarray, bfloat16: bool) -> np.ndarray:
    """(2, h, w) logits of one panel as float32 (bfloat16 bits widened to float32)."""
    if bfloat16:
        return (panel.astype(np.int32) << 16).view(np.float32)
    return panel.astype(np.float32)


def reference_find_peaks(
    logits: np.ndarray,
    original_shape: tuple[int, int, int, int],
    *,
    bfloat16: bool = False,
    image: np.ndarray | None = None,
    connectivity: int = 8,
) -> PeakTable:
    """Per panel: crop, argmax over classes, ``ndimage.label``, a loop over the labels.

    The mask is ``argmax == 1`` and not NaN in class 1: ``np.argmax`` gives class 0 on
    ties (as ``l1 > l0`` does) but treats NaN as the maximum, so a NaN class-1 logit would
    otherwise become a peak. With the NaN guard the mask equals ``l1 > l0`` exactly.
    Sums are accumulated in float64.
    """
    nb, nc, ho, wo = (int(v) for v in original_shape)
    structure = _STRUCTURE[connectivity]
    cols: dict[str, list] = {k: [] for k in ("event", "panel", "row", "col", "npix")}
    for k in ("total_intensity", "max_value", "weighted_row", "weighted_col"):
        cols[k] = []
    for n in range(nb * nc):
        lg = _logits_as_float32(logits[n, :, :ho, :wo], bfloat16)
        mask = (np.argmax(lg, axis=0) == 1) & ~np.isnan(lg[1])
        labels, _ = ndimage.label(mask, structure=structure)
        img = None if image is None else image[n].reshape(image.shape[-2:])[:ho, :wo]
        for lab, sl in enumerate(ndimage.find_objects(labels), start=1):
            rr, cc = np.nonzero(labels[sl] == lab)
            rr = rr + sl[0].start
            cc = cc + sl[1].start
            row, col = rr.mean(), cc.mean()
            cols["event"].append(n // nc)
            cols["panel"].append(n % nc)
            cols["row"].append(row)
            cols["col"].append(col)
            cols["npix"].append(rr.size)
            if img is None:
                tot, vmax, wrow, wcol = 0.0, 0.0, row, col
            else:
                v = img[rr, cc].astype(np.float64)
                tot, vmax = v.sum(), v.max()
                wrow, wcol = ((v * rr).sum() / tot, (v * cc).sum() / tot) if tot > 0 else (row, col)
            cols["total_intensity"].append(tot)
            cols["max_value"].append(vmax)
            cols["weighted_row"].append(wrow)
            cols["weighted_col"].append(wcol)
    dtypes = {"event": np.int32, "panel": np.int32, "npix": np.int32}
    dtypes |= {"total_intensity": np.float32, "max_value": np.float32}
    arrays = {k: np.asarray(v, dtypes.get(k, np.float64)) for k, v in cols.items()}
    counts = np.bincount(arrays["event"], minlength=nb).astype(np.int64)
    return PeakTable(**arrays, counts=counts)


# --- baseline CXI writer ---


def reference_write_cxi(
    path: str | Path,
    events: CxiEvents,
    slab_shape: tuple[int, int],
    fill_frame: Callable[[int, np.ndarray], None] | None,
) -> Path:
    """Write a CXI file the way the earlier writer did: grow every dataset per event, assign
    the frame with ``dset[i] = frame`` and every peak value with ``dset[i, j] = x``.

    Same datasets and dtypes as ``cxi.write_cxi_file`` (no attributes, no atomic rename), so the
    bench compares only how the bytes get in.
    """
    path = Path(path)
    ss, fs = slab_shape
    m = events.max_num_peak
    with h5py.File(path, "w") as f:
        f.create_dataset("cxi_version", data=np.int32(140))
        data = f.create_dataset(
            "/entry_1/data_1/data",
            (0, ss, fs),
            np.float32,
            chunks=(1, ss, fs),
            maxshape=(None, ss, fs),
        )
        result = f.require_group("/entry_1/result_1")
        n_peaks = result.create_dataset("nPeaks", (0,), np.int32, maxshape=(None,))
        columns = {}
        for name, dtype, attr in (
            ("peakXPosRaw", np.float32, "peak_fs"),
            ("peakYPosRaw", np.float32, "peak_ss"),
            ("peakTotalIntensity", np.float32, "peak_total_intensity"),
            ("peakNPixels", np.int32, "peak_npix"),
            ("peakMaximumValue", np.float32, "peak_max_value"),
            ("peakSegPosRaw", np.int16, "peak_panel"),
        ):
            dset = result.create_dataset(name, (0, m), dtype, chunks=(1, m), maxshape=(None, m))
            columns[name] = (dset, getattr(events, attr))
        batch_id = result.create_dataset(
            "batchId", (0,), h5py.string_dtype("utf-8"), maxshape=(None,)
        )
        event_index = result.create_dataset("eventIndex", (0,), np.int32, maxshape=(None,))
        energy = f.create_dataset("/LCLS/photon_energy_eV", (0,), np.float64, maxshape=(None,))
        stamp = f.create_dataset("/LCLS/detector_1/timestamp", (0,), np.uint64, maxshape=(None,))

        frame = np.zeros((ss, fs), np.float32)
        for i in range(events.n_events):
            for dset in (data, n_peaks, batch_id, event_index, energy, stamp):
                dset.resize(i + 1, axis=0)
            for dset, _ in columns.values():
                dset.resize(i + 1, axis=0)
            if fill_frame is not None:
                fill_frame(i, frame)
                data[i] = frame
            count = int(events.n_peaks[i])
            n_peaks[i] = count
            for dset, values in columns.values():
                for j in range(count):
                    dset[i, j] = values[i, j]
            batch_id[i] = events.batch_id[i]
            event_index[i] = events.event_index[i]
            energy[i] = events.photon_energy_ev[i]
            stamp[i] = events.timestamp[i]
    return path
