"""Straightforward reference implementations: the baselines that tests and benches compare with.

Slow on purpose (per event, per scalar); never used by the pipeline.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import h5py
import numpy as np

if TYPE_CHECKING:
    from cxi_async.cxi import CxiEvents


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
