"""The lab frame of a CrystFEL geometry: where a slab pixel is in space, and back.

``geometry.py`` only needs the slab rectangles; simulating diffraction (``lattice.py``) and
judging it (``runstats.py``: resolution, the virtual powder pattern) need CrystFEL's lab
model of every panel, ASIC or module: the corner ``(corner_x, corner_y)``, the ``fs`` / ``ss``
vectors and ``clen`` (+ ``coffset``), in pixels of ``1 / res`` metres. The file is parsed by
``cfelpyutils`` (as in ``geometry.py``), and the formulas are CrystFEL's own:

- a point at panel-relative corner coordinates ``(fs, ss)`` (pixel corners on integers; the
  centre of pixel index ``i`` is ``i + 0.5``) lies at ``cn + fs * fsvec + ss * ssvec``, with
  ``cn = (corner_x, corner_y, (clen + coffset) * res)``, all in pixels;
- the beam goes along +z; the scattering vector of a point ``r`` is
  ``q = (r / |r| - z) / lambda``, so ``1/d = |q|``.

Positions taken or given here are cxi_async's pixel indices (slab ``fs``/``ss`` of the CXI
peak lists, centre of pixel (0, 0) at 0.0): CrystFEL adds half a pixel on reading them, and so
does this module. No Ray, no h5py.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from cfelpyutils.geometry import load_crystfel_geometry

__all__ = ["DetectorError", "LabDetector"]


class DetectorError(ValueError):
    """The geometry has no usable lab model (e.g. ``clen`` read from a dataset)."""


@dataclass(frozen=True, eq=False)
class LabDetector:
    """Every CrystFEL panel of a geometry, in the lab frame (lengths in that panel's pixels)."""

    names: tuple[str, ...]
    min_fs: np.ndarray  # int64 (P,), slab rectangle, inclusive like the .geom
    max_fs: np.ndarray
    min_ss: np.ndarray
    max_ss: np.ndarray
    corner: np.ndarray  # float64 (P, 3): corner_x, corner_y, (clen + coffset) * res
    fs_vec: np.ndarray  # float64 (P, 3)
    ss_vec: np.ndarray  # float64 (P, 3)
    res: np.ndarray  # float64 (P,), pixels per metre

    # -- construction ------------------------------------------------------------------------

    @classmethod
    def load(cls, path: str | os.PathLike) -> LabDetector:
        """The lab model of a geometry file."""
        return cls.from_text(Path(path).read_text(encoding="utf-8"), str(path))

    @classmethod
    def from_text(cls, text: str, source: str = "geometry") -> LabDetector:
        """The lab model of a geometry text; DetectorError when clen or res are not numbers."""
        panels = load_crystfel_geometry(io.StringIO(text)).detector["panels"]
        rows = []
        for name, p in panels.items():
            clen = p.get("clen")
            if not isinstance(clen, (int, float)) or not np.isfinite(clen):
                raise DetectorError(
                    f"{source}: panel {name} has clen = {clen!r} ({p.get('clen_from') or 'no'} "
                    f"dataset); a lab model needs clen as a number of metres"
                )
            res = float(p["res"])
            rows.append(
                (
                    name,
                    p["orig_min_fs"],
                    p["orig_max_fs"],
                    p["orig_min_ss"],
                    p["orig_max_ss"],
                    (p["cnx"], p["cny"], (clen + p["coffset"]) * res),
                    (p["fsx"], p["fsy"], p["fsz"]),
                    (p["ssx"], p["ssy"], p["ssz"]),
                    res,
                )
            )
        if not rows:
            raise DetectorError(f"{source}: the geometry has no panels")
        cols = list(zip(*rows, strict=True))
        return cls(
            names=tuple(cols[0]),
            min_fs=np.array(cols[1], dtype=np.int64),
            max_fs=np.array(cols[2], dtype=np.int64),
            min_ss=np.array(cols[3], dtype=np.int64),
            max_ss=np.array(cols[4], dtype=np.int64),
            corner=np.array(cols[5], dtype=np.float64),
            fs_vec=np.array(cols[6], dtype=np.float64),
            ss_vec=np.array(cols[7], dtype=np.float64),
            res=np.array(cols[8], dtype=np.float64),
        )

    @property
    def num_panels(self) -> int:
        return len(self.names)

    # -- slab -> lab -------------------------------------------------------------------------

    def panel_of(self, ss: np.ndarray, fs: np.ndarray) -> np.ndarray:
        """Index of the CrystFEL panel holding each slab pixel-index position; -1 for none."""
        ss = np.floor(np.asarray(ss, dtype=np.float64) + 0.5)[..., None]
        fs = np.floor(np.asarray(fs, dtype=np.float64) + 0.5)[..., None]
        inside = (
            (ss >= self.min_ss) & (ss <= self.max_ss) & (fs >= self.min_fs) & (fs <= self.max_fs)
        )
        return np.where(inside.any(axis=-1), np.argmax(inside, axis=-1), -1)

    def lab_xyz(self, ss: np.ndarray, fs: np.ndarray) -> np.ndarray:
        """(..., 3) lab positions in metres of slab pixel-index positions; NaN off the panels."""
        ss = np.asarray(ss, dtype=np.float64)
        fs = np.asarray(fs, dtype=np.float64)
        p = self.panel_of(ss, fs)
        ok = p >= 0
        q = np.where(ok, p, 0)
        u = (fs + 0.5 - self.min_fs[q])[..., None]  # CrystFEL's corner coordinates
        v = (ss + 0.5 - self.min_ss[q])[..., None]
        xyz = (self.corner[q] + u * self.fs_vec[q] + v * self.ss_vec[q]) / self.res[q][..., None]
        xyz[~ok] = np.nan
        return xyz

    def inverse_d(self, ss: np.ndarray, fs: np.ndarray, wavelength_a: np.ndarray) -> np.ndarray:
        """1/d in 1/Angstrom of slab positions at ``wavelength_a`` (broadcasts); NaN off panels."""
        xyz = self.lab_xyz(ss, fs)
        r = np.linalg.norm(xyz, axis=-1)
        cos2theta = xyz[..., 2] / r
        # |q| = 2 sin(theta) / lambda, and 2 sin(theta) = sqrt(2 (1 - cos 2theta)).
        return np.sqrt(np.maximum(2.0 * (1.0 - cos2theta), 0.0)) / np.asarray(wavelength_a)

    def _panel_corners(self) -> np.ndarray:
        """(4 x num_panels, 3): every panel's four corners in the lab, in the units of ``corner``.

        One list for what the panels bound: the highest resolution they see and the extent
        of a plot (in x, y, pixels).
        """
        corners = []
        for p in range(self.num_panels):
            w = self.max_fs[p] - self.min_fs[p] + 1
            h = self.max_ss[p] - self.min_ss[p] + 1
            for u, v in ((0, 0), (w, 0), (0, h), (w, h)):
                corners.append(self.corner[p] + u * self.fs_vec[p] + v * self.ss_vec[p])
        return np.array(corners, dtype=np.float64)

    def max_inverse_d(self, wavelength_a: float) -> float:
        """The highest 1/d any panel corner reaches: bounds the reflections worth predicting."""
        xyz = self._panel_corners()
        cos2theta = xyz[:, 2] / np.linalg.norm(xyz, axis=1)
        return float(np.sqrt(2.0 * (1.0 - cos2theta.min())) / wavelength_a)

    def lab_extent_px(self) -> tuple[float, float, float, float]:
        """(x_min, x_max, y_min, y_max) of all panels in the lab plane, in pixels (x, y)."""
        pts = self._panel_corners()[:, :2]
        return (
            float(pts[:, 0].min()),
            float(pts[:, 0].max()),
            float(pts[:, 1].min()),
            float(pts[:, 1].max()),
        )

    # -- lab -> slab -------------------------------------------------------------------------

    def project(self, directions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Where rays from the sample along ``directions`` (N, 3) hit the detector.

        Returns (panel index, slab ss, slab fs) as pixel indices (float64); panel -1 (and NaN
        positions) for rays that hit no panel. A ray that would hit two panels (overlapping
        panels in the lab) takes the nearer one.
        """
        d = np.asarray(directions, dtype=np.float64)
        n = d.shape[0]
        panel = np.full(n, -1, dtype=np.int64)
        ss = np.full(n, np.nan)
        fs = np.full(n, np.nan)
        best = np.full(n, np.inf)
        for p in range(self.num_panels):
            # The ray meets the panel plane (normal n = fs x ss) at t d, t = n.c / n.d; the
            # in-plane offset from the corner then splits into u fs + v ss.
            f, s, c = self.fs_vec[p], self.ss_vec[p], self.corner[p]
            normal = np.cross(f, s)
            nd = d @ normal
            with np.errstate(divide="ignore", invalid="ignore"):
                t = (normal @ c) / nd
            offset = t[:, None] * d - c
            fu, sv = np.cross(s, normal), np.cross(normal, f)
            u = offset @ fu / (f @ fu)
            v = offset @ sv / (s @ sv)
            w = self.max_fs[p] - self.min_fs[p] + 1
            h = self.max_ss[p] - self.min_ss[p] + 1
            hit = (np.abs(nd) > 1e-12) & (t > 0) & (u >= 0) & (u < w) & (v >= 0) & (v < h)
            hit &= t < best
            panel[hit] = p
            best[hit] = t[hit]
            fs[hit] = self.min_fs[p] + u[hit] - 0.5
            ss[hit] = self.min_ss[p] + v[hit] - 0.5
        return panel, ss, fs
