"""What a crystallographer watches during a run: is it hitting, how many peaks, how far out.

OM's monitor shows these live at the beamline; cxi_async keeps them per writer, from the
peaks it writes, and the coordinator's stats carry them to ``status.json`` (live numbers) and to
the run report (the histograms ``python -m cxi_async plot`` draws):

- peaks per frame, as a histogram of the kept frames;
- a peakogram: peak intensity against resolution 1/d, when the geometry is the real one
  (``geometry.geom_file``) and the frame has a photon energy;
- a virtual powder pattern: every kept peak at its place on the assembled lab-frame detector
  (the placeholder layout without a geometry file), which shows the beam centre and the rings;
- a resolution estimate per frame: the d-spacing reached by the outer 5 % of its peaks;
- the hit rate over time, from the report's throughput samples.

The histograms have fixed bins, so the writers' counts simply add. No Ray, no h5py.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import statistics
import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from cxi_async.core.detector import DetectorError, LabDetector

__all__ = [
    "PeakStats",
    "decode_grid",
    "hit_rate_over_time",
    "live_fields",
    "merge",
    "report_section",
    "strip_peak_stats",
]

HC_EV_ANGSTROM = 12398.4193  # as synthetic.HC_EV_ANGSTROM (not imported: that needs torch)
INV_D_MAX = 1.0  # 1/Angstrom: the peakogram's range (d >= 1 A)
INV_D_BINS = 100
LOG_I_RANGE = (-1.0, 6.0)  # log10 of peakTotalIntensity
LOG_I_BINS = 70
POWDER_BIN_PX = 8  # lab-frame pixels per powder bin
RECENT_FRAMES = 32  # frames behind the live medians, and listed in the report
OUTER_FRACTION = 0.05  # resolution estimate: the 1/d that only this share of peaks exceeds
MIN_PEAKS_FOR_RESOLUTION = 5
STATS_KEY = "peak_stats"  # where a writer's stats dict carries PeakStats.to_dict()


class PeakStats:
    """Running histograms of the frames one writer wrote (see the module doc)."""

    def __init__(self, detector: LabDetector, *, resolution: bool) -> None:
        self.detector = detector
        self.resolution = resolution
        x0, x1, y0, y1 = detector.lab_extent_px()
        self.x0 = math.floor(x0 / POWDER_BIN_PX) * POWDER_BIN_PX
        self.y0 = math.floor(y0 / POWDER_BIN_PX) * POWDER_BIN_PX
        nx = math.ceil((x1 - self.x0) / POWDER_BIN_PX)
        ny = math.ceil((y1 - self.y0) / POWDER_BIN_PX)
        self.powder = np.zeros((ny, nx), dtype=np.int32)
        self.peakogram = np.zeros((INV_D_BINS, LOG_I_BINS), dtype=np.int32)
        self.peaks_per_frame = np.zeros(1, dtype=np.int64)
        self.frames = 0
        self.peaks = 0
        self.recent: deque[tuple[float, int, float | None]] = deque(maxlen=RECENT_FRAMES)

    @classmethod
    def for_run(cls, geom_file: str | None, layout: Any) -> PeakStats:
        """From the configured geometry (resolution too), else the placeholder lab layout the
        run writes beside its files (a powder pattern, but no resolution: clen is made up)."""
        from cxi_async.core.geometry import _placeholder_geom

        if geom_file is not None:
            with contextlib.suppress(DetectorError):  # e.g. clen from a dataset
                return cls(LabDetector.load(geom_file), resolution=True)
        text = _placeholder_geom(layout)
        return cls(LabDetector.from_text(text, "placeholder geometry"), resolution=False)

    def add_events(self, events: Iterable[Any]) -> None:
        """Count the kept events (``messages.EventPeaks``) of a file just written."""
        now = time.time()
        for e in events:
            self.add_frame(e.ss, e.fs, e.total_intensity, e.photon_energy_ev, now)

    def add_frame(
        self,
        ss: np.ndarray,
        fs: np.ndarray,
        intensity: np.ndarray,
        photon_energy_ev: float | None,
        when: float | None = None,
    ) -> float | None:
        """Count one kept frame (slab pixel-index positions); returns its resolution in A."""
        n = len(ss)
        if n >= len(self.peaks_per_frame):
            grown = np.zeros(max(n + 1, 2 * len(self.peaks_per_frame)), dtype=np.int64)
            grown[: len(self.peaks_per_frame)] = self.peaks_per_frame
            self.peaks_per_frame = grown
        self.peaks_per_frame[n] += 1
        self.frames += 1
        self.peaks += n
        d_frame = None
        if n:
            xyz = self.detector.lab_xyz(ss, fs)
            ok = np.isfinite(xyz[:, 0])
            res = self.detector.res[self.detector.panel_of(ss, fs)[ok]]
            ix = ((xyz[ok, 0] * res - self.x0) // POWDER_BIN_PX).astype(np.int64)
            iy = ((xyz[ok, 1] * res - self.y0) // POWDER_BIN_PX).astype(np.int64)
            ny, nx = self.powder.shape
            inside = (ix >= 0) & (ix < nx) & (iy >= 0) & (iy < ny)
            np.add.at(self.powder, (iy[inside], ix[inside]), 1)
            if self.resolution and photon_energy_ev and photon_energy_ev > 0:
                inv_d = self.detector.inverse_d(ss, fs, HC_EV_ANGSTROM / photon_energy_ev)
                good = np.isfinite(inv_d)
                self._peakogram(inv_d[good], np.asarray(intensity, dtype=np.float64)[good])
                if good.sum() >= MIN_PEAKS_FOR_RESOLUTION:
                    outer = float(np.quantile(inv_d[good], 1.0 - OUTER_FRACTION))
                    d_frame = 1.0 / outer if outer > 0 else None
        self.recent.append((time.time() if when is None else when, n, d_frame))
        return d_frame

    def _peakogram(self, inv_d: np.ndarray, intensity: np.ndarray) -> None:
        x = np.clip((inv_d / INV_D_MAX * INV_D_BINS).astype(np.int64), 0, INV_D_BINS - 1)
        lo, hi = LOG_I_RANGE
        log_i = np.log10(np.maximum(intensity, 10.0**lo))
        y = np.clip(((log_i - lo) / (hi - lo) * LOG_I_BINS).astype(np.int64), 0, LOG_I_BINS - 1)
        np.add.at(self.peakogram, (x, y), 1)

    def to_dict(self, histograms: bool = True) -> dict[str, Any]:
        """What the writer's stats carry: the live numbers, and with ``histograms`` the
        numpy histograms too (only for the report: the stats are polled every second)."""
        # Five numbers: the coordinator polls this every second (its memory test is strict).
        last = self.recent[-1] if self.recent else (None, None, None)
        resolutions = [d for _, _, d in self.recent if d is not None]
        out: dict[str, Any] = {
            "frames": self.frames,
            "peaks": self.peaks,
            "resolution": self.resolution,
            "live": (
                statistics.median(n for _, n, _ in self.recent) if self.recent else None,
                statistics.median(resolutions) if resolutions else None,
                *last,
            ),
        }
        if histograms:
            out.update(
                recent=[list(r) for r in self.recent],  # (unix time, peaks, resolution or None)
                peaks_per_frame=self.peaks_per_frame.copy(),
                peakogram=self.peakogram.copy() if self.resolution else None,
                powder=self.powder.copy(),
                powder_origin_px=(self.x0, self.y0),
            )
        return out


def merge(parts: Iterable[Mapping[str, Any] | None]) -> dict[str, Any] | None:
    """The sum of several writers' ``PeakStats.to_dict()`` (None when there is none)."""
    parts = [p for p in parts if p]
    if not parts:
        return None
    out: dict[str, Any] = {
        "frames": sum(int(p["frames"]) for p in parts),
        "peaks": sum(int(p["peaks"]) for p in parts),
        "resolution": any(p.get("resolution") for p in parts),
        # The live numbers of the writer that wrote last.
        "live": max((tuple(p["live"]) for p in parts), key=lambda v: v[2] or 0.0),
    }
    full = [p for p in parts if "powder" in p]
    if len(full) < len(parts):  # some writer sent its live numbers only
        return out
    out["recent"] = sorted(itertools.chain.from_iterable(p["recent"] for p in parts))[
        -RECENT_FRAMES:
    ]
    longest = max(len(p["peaks_per_frame"]) for p in parts)
    ppf = np.zeros(longest, dtype=np.int64)
    for p in parts:
        ppf[: len(p["peaks_per_frame"])] += np.asarray(p["peaks_per_frame"])
    peakograms = [np.asarray(p["peakogram"]) for p in parts if p.get("peakogram") is not None]
    out.update(
        peaks_per_frame=ppf,
        peakogram=sum(peakograms[1:], peakograms[0]) if peakograms else None,
        powder=sum((np.asarray(p["powder"]) for p in parts[1:]), np.asarray(parts[0]["powder"])),
        powder_origin_px=tuple(parts[0]["powder_origin_px"]),
    )
    return out


def _writer_parts(writers: Any) -> list[Mapping[str, Any]]:
    return [w.get(STATS_KEY) for w in writers or [] if isinstance(w, Mapping) and w.get(STATS_KEY)]


def live_fields(writers: Any) -> dict[str, Any]:
    """The status.json numbers from the coordinator's per-writer stats (empty before any frame)."""
    stats = merge(_writer_parts(writers))
    if stats is None or not stats["frames"]:
        return {}
    peaks_median, resolution_median, t, n, d = stats["live"]
    return {
        "peaks_per_frame_mean": stats["peaks"] / stats["frames"],
        "peaks_per_frame_recent_median": peaks_median,
        "resolution_a_recent_median": resolution_median,
        "last_frame": {"t_unix": t, "peaks": n, "resolution_a": d},
    }


def hit_rate_over_time(samples: Sequence[Mapping[str, Any]]) -> dict[str, list[float | None]]:
    """Hits / judged events between consecutive samples, at the interval midpoints.

    Hits are ``events_hits``, counted when a finder judges them as ``events_filtered`` is:
    ``events_written`` grows only when a file is renamed, so between two samples it can miss
    hits already judged and draw a false 0 %. Samples of older reports lack ``events_hits``
    and fall back to it.
    """
    t: list[float | None] = []
    rate: list[float | None] = []
    key = "events_hits" if all("events_hits" in s for s in samples) else "events_written"
    for a, b in itertools.pairwise(samples):
        kept = b[key] - a[key]
        judged = kept + b["events_filtered"] - a["events_filtered"]
        if b["t"] <= a["t"]:
            continue
        t.append((a["t"] + b["t"]) / 2)
        rate.append(kept / judged if judged > 0 else None)
    return {"t": t, "hit_rate": rate}


def _encode_grid(grid: np.ndarray | None) -> list[str] | None:
    """A 2-D count histogram as one line of numbers per row: a report stays readable."""
    if grid is None:
        return None
    return [" ".join(str(int(v)) for v in row) for row in np.asarray(grid)]


def decode_grid(rows: Sequence[str] | None) -> np.ndarray | None:
    """Inverse of the report's grid encoding."""
    if rows is None:
        return None
    return np.array([[int(v) for v in r.split()] for r in rows], dtype=np.int64)


def report_section(writers: Any, samples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The report's ``crystallography`` section: every histogram ``plot`` draws."""
    stats = merge(_writer_parts(writers))
    section: dict[str, Any] = {"hit_rate_over_time": hit_rate_over_time(samples)}
    if stats is None:
        return section
    section.update(
        frames=stats["frames"],
        peaks=stats["peaks"],
        resolution_a_recent=[d for _, _, d in stats.get("recent", [])],
    )
    if "powder" not in stats:  # stopped without a drain: the writers kept their histograms
        return section
    x0, y0 = stats["powder_origin_px"]
    section.update(
        peaks_per_frame=[int(v) for v in np.trim_zeros(stats["peaks_per_frame"], "b")],
        peakogram=None
        if stats["peakogram"] is None
        else {
            "inv_d_max": INV_D_MAX,
            "log10_intensity_range": list(LOG_I_RANGE),
            "counts": _encode_grid(stats["peakogram"]),
        },
        powder={
            "bin_px": POWDER_BIN_PX,
            "origin_px": [x0, y0],
            "real_geometry": bool(stats["resolution"]),
            "counts": _encode_grid(stats["powder"]),
        },
    )
    return section


def strip_peak_stats(stats: Mapping[str, Any]) -> dict[str, Any]:
    """The coordinator's stats without the writers' histograms (the report has them once)."""
    out = dict(stats)
    if isinstance(out.get("writers"), list):
        out["writers"] = [
            {k: v for k, v in w.items() if k != STATS_KEY} if isinstance(w, Mapping) else w
            for w in out["writers"]
        ]
    return out
