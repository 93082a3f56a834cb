"""Still diffraction from a crystal, for the replay producer's ``pattern = "lattice"``.

The random blobs of ``synthetic.py`` can be read by indexamajig but never indexed. Here each
event is a crystal of the configured unit cell in a seeded random orientation, lit at the
photon energy of the event's own metadata. The reciprocal lattice points close to the Ewald
sphere are projected through the CrystFEL geometry (``detector.LabDetector``: clen, res,
corners and fs/ss vectors, rotated and per-ASIC panels included) onto the slab, and drawn as
separated spots into the panel-local logits and image, so the pipeline and CrystFEL read
them back exactly:

- each spot is the set of pixels within a radius of the predicted position, cut to the one
  CrystFEL panel (ASIC) the prediction lies on, and kept only if it is one pixel clear of
  every stronger spot; its centroid (what peak finding reports) is the truth, within
  ~0.3 pixel of the prediction;
- the truth of each event holds the orientation (reciprocal basis in the lab frame), each
  spot's hkl and its slab position.

Conventions are CrystFEL's (see ``detector.py``): beam along +z, ``q = k_out - k_in``,
lengths in Angstrom here. No Ray.
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cxi_async.core.detector import LabDetector
from cxi_async.core.files import atomic_write

__all__ = [
    "REPLAY_CELL_FILE",
    "CrystalTruth",
    "UnitCell",
    "cell_file_text",
    "orientation_error_deg",
    "random_rotation",
    "simulate_event",
    "write_cell_file",
]

REPLAY_CELL_FILE = "replay.cell"  # written beside the run's .geom by the writer

_UNIQUE_AXIS = {"monoclinic": "b", "tetragonal": "c", "hexagonal": "c"}

# Spot model: reflections with excitation error |s| < 2.5 sigma are drawn; intensity falls
# as exp(-(s/sigma)^2) (partiality), exp(-B/(4 d^2)) (Wilson B) and a random |F|^2.
_EXCITATION_SIGMA = 1.5e-4  # 1/Angstrom: ~100-150 spots per lysozyme still on an ePix10k2M
_WILSON_B = 20.0  # Angstrom^2
_SPOT_SCALE = 3000.0  # image units at the strongest spots
_SPOT_RADIUS = (0.8, 2.3)  # pixels, grows with intensity
_MIN_SPOT_PIXELS = 2  # a one-pixel spot's centroid is 0.5 px off the prediction at worst
_MAX_OFFSET = 0.5  # pixels: spots whose centroid is further from the prediction are dropped


@dataclass(frozen=True)
class UnitCell:
    """A unit cell as CrystFEL's cell files give it: lengths in Angstrom, angles in degrees."""

    a: float = 79.1
    b: float = 79.1
    c: float = 37.9
    alpha: float = 90.0
    beta: float = 90.0
    gamma: float = 90.0
    lattice_type: str = "tetragonal"
    centering: str = "P"

    @classmethod
    def from_values(cls, values: Any, lattice_type: str, centering: str) -> UnitCell:
        a, b, c, al, be, ga = (float(v) for v in values)
        return cls(a, b, c, al, be, ga, lattice_type, centering)

    @property
    def unique_axis(self) -> str | None:
        return _UNIQUE_AXIS.get(self.lattice_type)

    def direct_basis(self) -> np.ndarray:
        """Rows a, b, c in Angstrom, a along x and b in the xy plane (crystal frame)."""
        al, be, ga = (math.radians(v) for v in (self.alpha, self.beta, self.gamma))
        cx = math.cos(be)
        cy = (math.cos(al) - math.cos(be) * math.cos(ga)) / math.sin(ga)
        cz = math.sqrt(max(1.0 - cx * cx - cy * cy, 0.0))
        return np.array(
            [
                [self.a, 0.0, 0.0],
                [self.b * math.cos(ga), self.b * math.sin(ga), 0.0],
                [self.c * cx, self.c * cy, self.c * cz],
            ]
        )

    def reciprocal_basis(self) -> np.ndarray:
        """Rows a*, b*, c* in 1/Angstrom (no 2 pi): a* . a = 1."""
        return np.linalg.inv(self.direct_basis()).T

    def allowed(self, hkl: np.ndarray) -> np.ndarray:
        """Reflections the centering does not extinguish (hkl: (N, 3) integers)."""
        h, k, l = hkl.T  # noqa: E741 - crystallographic names
        rule = {
            "P": np.ones(len(hkl), dtype=bool),
            "A": (k + l) % 2 == 0,
            "B": (h + l) % 2 == 0,
            "C": (h + k) % 2 == 0,
            "I": (h + k + l) % 2 == 0,
            "F": ((h + k) % 2 == 0) & ((k + l) % 2 == 0),
            "R": (-h + k + l) % 3 == 0,
            "H": (h - k) % 3 == 0,
        }
        return rule.get(self.centering, rule["P"])


def cell_file_text(cell: UnitCell) -> str:
    """The cell as a CrystFEL unit cell file, for ``indexamajig -p``."""
    lines = [
        "CrystFEL unit cell file version 1.0",
        "",
        f"lattice_type = {cell.lattice_type}",
        f"centering = {cell.centering}",
    ]
    if cell.unique_axis:
        lines.append(f"unique_axis = {cell.unique_axis}")
    lines += [
        "",
        f"a = {cell.a:g} A",
        f"b = {cell.b:g} A",
        f"c = {cell.c:g} A",
        f"al = {cell.alpha:g} deg",
        f"be = {cell.beta:g} deg",
        f"ga = {cell.gamma:g} deg",
    ]
    return "\n".join(lines) + "\n"


def write_cell_file(path: str | os.PathLike, cell: UnitCell) -> Path:
    """Write the cell file atomically (a reader never sees half of it); returns the path."""
    return atomic_write(path, cell_file_text(cell))


# -------------------------------------------------------------------------------- orientation


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A rotation matrix drawn uniformly (normalised Gaussian quaternion)."""
    w, x, y, z = (q := rng.standard_normal(4)) / np.linalg.norm(q)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


@functools.lru_cache(maxsize=4)
def _symmetry_ops(cell: UnitCell, tol: float = 1e-3) -> tuple[np.ndarray, ...]:
    """Signed permutations of (a, b, c) that keep the metric: the lattice's holohedry."""
    direct = cell.direct_basis()
    metric = direct @ direct.T
    ops = []
    for perm in ((0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0)):
        for signs in np.ndindex(2, 2, 2):
            g = np.zeros((3, 3))
            for i, (j, s) in enumerate(zip(perm, signs, strict=True)):
                g[i, j] = -1.0 if s else 1.0
            if np.allclose(g @ metric @ g.T, metric, rtol=tol, atol=tol * metric.max()):
                ops.append(g)
    return tuple(ops)


def orientation_error_deg(found: np.ndarray, truth: np.ndarray, cell: UnitCell) -> float:
    """Smallest rotation (degrees) between two lab-frame reciprocal bases (rows a*, b*, c*),
    over the lattice's symmetry: 0 when ``found`` is ``truth`` up to a relabelling of axes.

    Each candidate ``g @ truth`` is compared by the rotation that best maps it onto
    ``found`` (polar decomposition), so a slightly wrong cell does not count as orientation.
    """
    best = math.inf
    for g in _symmetry_ops(cell):
        t = g @ truth
        m = np.linalg.solve(t, found).T  # columns: found = m-ish @ t rows
        u, _, vt = np.linalg.svd(m)
        r = u @ vt
        if np.linalg.det(r) < 0:
            continue
        angle = math.degrees(math.acos(max(-1.0, min(1.0, (np.trace(r) - 1) / 2))))
        best = min(best, angle)
    return best


# -------------------------------------------------------------------------------- simulation


@dataclass
class CrystalTruth:
    """The crystal of one event, and every spot drawn for it (in PeakTable order)."""

    rotation: np.ndarray  # (3, 3), crystal frame -> lab
    reciprocal: np.ndarray  # (3, 3) rows a*, b*, c* in the lab frame, 1/Angstrom
    wavelength_a: float
    hkl: np.ndarray  # (N, 3) int32
    slab_ss: np.ndarray  # (N,) float64, centroid in slab pixel indices (what is written)
    slab_fs: np.ndarray
    predicted_ss: np.ndarray  # (N,) float64, where the reflection meets the detector
    predicted_fs: np.ndarray


@dataclass
class EventSpots:
    """One event's spots, as pixels of the panel stack and their truth."""

    crystal: CrystalTruth
    panel: np.ndarray  # (N,) int32 inference panel
    row: np.ndarray  # (N,) float64 centroid in panel pixel indices
    col: np.ndarray
    pixels: list[tuple[np.ndarray, np.ndarray]]  # per spot (rows, cols), raster order
    amplitude: np.ndarray  # (N,) float32
    sigma: np.ndarray  # (N,) float32, Gaussian width of the profile


@functools.lru_cache(maxsize=8)
def _hkl_grid(cell: UnitCell, max_inv_d: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All allowed hkl (not 000) with 1/d < max_inv_d, their crystal-frame q and |q|^2."""
    direct = cell.direct_basis()
    lim = [math.ceil(max_inv_d * float(np.linalg.norm(v))) for v in direct]
    axes = [np.arange(-n, n + 1, dtype=np.int32) for n in lim]
    hkl = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    hkl = hkl[np.any(hkl != 0, axis=1) & cell.allowed(hkl)]
    q = hkl @ cell.reciprocal_basis()
    keep = np.linalg.norm(q, axis=1) < max_inv_d
    hkl, q = hkl[keep], q[keep]
    q2 = np.einsum("ij,ij->i", q, q)
    for a in (hkl, q, q2):
        a.flags.writeable = False
    return hkl, q, q2


def simulate_event(
    cell: UnitCell,
    detector: LabDetector,
    module_of_panel: np.ndarray,
    module_origin: tuple[np.ndarray, np.ndarray],
    panel_shape: tuple[int, int],
    wavelength_a: float,
    rng: np.random.Generator,
    max_spots: int | None = None,
) -> EventSpots:
    """One still: a random orientation, the spots on the detector, their pixels and truth.

    ``module_of_panel[p]`` is the inference panel holding CrystFEL panel ``p`` and
    ``module_origin`` the (min_ss, min_fs) of each inference panel in the slab. With
    ``max_spots`` only that many of the strongest spots are drawn (a non-hit).
    """
    rotation = random_rotation(rng)
    reciprocal = (rotation @ cell.reciprocal_basis().T).T
    k = 1.0 / wavelength_a
    hkl, q_crystal, q2 = _hkl_grid(cell, round(detector.max_inverse_d(wavelength_a) + 0.005, 2))
    # |k_out|^2 - k^2 = |q|^2 + 2 k q_z, and |q|^2 does not depend on the orientation: one
    # dot product per reflection finds the few near the sphere (|s| ~ that / 2k).
    near = np.abs(q2 + 2.0 * k * (q_crystal @ rotation[2])) < 2.0 * k * 2.6 * _EXCITATION_SIGMA
    hkl = hkl[near]
    q = q_crystal[near] @ rotation.T
    kout = q + np.array([0.0, 0.0, k])
    excitation = np.linalg.norm(kout, axis=1) - k
    near = np.abs(excitation) < 2.5 * _EXCITATION_SIGMA
    hkl, q, kout, excitation = hkl[near], q[near], kout[near], excitation[near]
    panel, ss, fs = detector.project(kout)
    on = panel >= 0
    hkl, q, excitation, panel, ss, fs = (a[on] for a in (hkl, q, excitation, panel, ss, fs))
    inv_d = np.linalg.norm(q, axis=1)
    intensity = (
        np.exp(-((excitation / _EXCITATION_SIGMA) ** 2))
        * np.exp(-_WILSON_B * inv_d**2 / 4.0)
        * rng.exponential(1.0, len(hkl))
    )
    order = np.argsort(-intensity, kind="stable")
    spots = _draw_spots(
        order, intensity, panel, ss, fs, detector, module_of_panel, module_origin, panel_shape
    )
    if max_spots is not None:
        spots = spots[:max_spots]
    w = panel_shape[1]
    idx = np.array([s[0] for s in spots], dtype=np.int64)
    pix = [(s[2], s[3]) for s in spots]
    module = np.array([s[1] for s in spots], dtype=np.int32)
    first = np.array([int(r[0]) * w + int(c[0]) for r, c in pix], dtype=np.int64)
    sort = np.lexsort((first, module)) if len(spots) else np.zeros(0, dtype=np.int64)
    idx, module = idx[sort], module[sort]
    pix = [pix[i] for i in sort]
    npix = np.array([r.size for r, _ in pix], dtype=np.int64)
    row = np.array([r.sum() for r, _ in pix], dtype=np.int64) / np.maximum(npix, 1)
    col = np.array([c.sum() for _, c in pix], dtype=np.int64) / np.maximum(npix, 1)
    top = float(intensity.max()) if intensity.size else 1.0
    amplitude = (_SPOT_SCALE * intensity[idx] / top + 20.0).astype(np.float32)
    sigma = np.maximum(0.5, 0.5 * np.sqrt(npix / np.pi)).astype(np.float32)
    min_ss, min_fs = module_origin
    crystal = CrystalTruth(
        rotation=rotation,
        reciprocal=reciprocal,
        wavelength_a=float(wavelength_a),
        hkl=hkl[idx].astype(np.int32),
        slab_ss=min_ss[module] + row,
        slab_fs=min_fs[module] + col,
        predicted_ss=ss[idx],
        predicted_fs=fs[idx],
    )
    return EventSpots(crystal, module, row, col, pix, amplitude, sigma)


def _draw_spots(
    order: np.ndarray,
    intensity: np.ndarray,
    panel: np.ndarray,
    ss: np.ndarray,
    fs: np.ndarray,
    detector: LabDetector,
    module_of_panel: np.ndarray,
    module_origin: tuple[np.ndarray, np.ndarray],
    panel_shape: tuple[int, int],
) -> list[tuple[int, int, np.ndarray, np.ndarray]]:
    """Strongest first: (reflection, module, rows, cols) of each spot that stays separated."""
    h, w = panel_shape
    min_ss, min_fs = module_origin
    occupied: dict[int, np.ndarray] = {}
    top = float(intensity.max()) if intensity.size else 1.0
    lo, hi = _SPOT_RADIUS
    out = []
    for i in order.tolist():
        p = int(panel[i])
        m = int(module_of_panel[p])
        radius = lo + (hi - lo) * math.sqrt(intensity[i] / top)
        # Panel-local position of the prediction, and the ASIC rectangle it may use.
        r0, c0 = ss[i] - min_ss[m], fs[i] - min_fs[m]
        rmin = int(detector.min_ss[p] - min_ss[m])
        rmax = int(detector.max_ss[p] - min_ss[m])
        cmin = int(detector.min_fs[p] - min_fs[m])
        cmax = int(detector.max_fs[p] - min_fs[m])
        rr, cc = np.mgrid[
            max(rmin, math.floor(r0 - radius)) : min(rmax, math.ceil(r0 + radius)) + 1,
            max(cmin, math.floor(c0 - radius)) : min(cmax, math.ceil(c0 + radius)) + 1,
        ]
        inside = (rr - r0) ** 2 + (cc - c0) ** 2 <= radius**2
        rows, cols = rr[inside], cc[inside]
        if rows.size < _MIN_SPOT_PIXELS:
            continue
        if abs(rows.mean() - r0) > _MAX_OFFSET or abs(cols.mean() - c0) > _MAX_OFFSET:
            continue  # cut by an ASIC edge: its centroid would mislead the indexer
        grid = occupied.get(m)
        if grid is None:
            grid = occupied[m] = np.zeros((h + 2, w + 2), dtype=bool)
        if grid[rows + 1, cols + 1].any():
            continue
        for dr in (0, 1, 2):
            for dc in (0, 1, 2):
                grid[rows + dr, cols + dc] = True
        out.append((i, m, rows.astype(np.int64), cols.astype(np.int64)))
    return out


def module_map(detector: LabDetector, min_ss: np.ndarray, min_fs: np.ndarray, shape: Any) -> Any:
    """Inference panel holding each CrystFEL panel (by its slab rectangle)."""
    h, w = shape
    inside = (
        (detector.min_ss[:, None] >= min_ss)
        & (detector.max_ss[:, None] < min_ss + h)
        & (detector.min_fs[:, None] >= min_fs)
        & (detector.max_fs[:, None] < min_fs + w)
    )
    if not inside.any(axis=1).all():
        bad = detector.names[int(np.argmin(inside.any(axis=1)))]
        raise ValueError(f"CrystFEL panel {bad} lies in no inference panel of the slab")
    return np.argmax(inside, axis=1)


# -------------------------------------------------------------------------------- replay hook


@functools.lru_cache(maxsize=4)
def _detector_for(
    geom_file: str | None, num_panels: int, panel_shape: tuple[int, int]
) -> tuple[LabDetector, np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """Lab model, CrystFEL panel -> inference panel map and slab origins, loaded once."""
    from cxi_async.core.geometry import SlabLayout, _placeholder_geom, load_layout

    if geom_file is None:  # the placeholder lab layout the run writes beside its files
        layout = SlabLayout.stacked(num_panels, *panel_shape)
        detector = LabDetector.from_text(_placeholder_geom(layout), "placeholder geometry")
    else:
        layout = load_layout(geom_file)
        detector = LabDetector.load(geom_file)
    layout.check(num_panels, *panel_shape)
    origin = (np.asarray(layout.min_ss), np.asarray(layout.min_fs))
    return detector, module_map(detector, *origin, panel_shape), origin


def spec_cell(spec: Any) -> UnitCell:
    """The unit cell of a SyntheticSpec (replay.cell, lattice_type, centering)."""
    return UnitCell.from_values(spec.cell, spec.lattice_type, spec.centering)


def diffract_batch(batch: Any, spec: Any, index: int) -> Any:
    """Draw lattice spots into a spot-free SyntheticBatch; returns it with truth replaced.

    Each event's wavelength comes from its truth's photon energy, i.e. from the metadata
    the batch carries. Spot logits follow the margins ``synthetic`` guarantees (so the
    mask is the same in float32, float16 and bfloat16), and the truth is rebuilt in
    PeakTable order, with each event's ``CrystalTruth`` in ``batch.crystals``.
    """
    from dataclasses import replace

    from cxi_async.replay.synthetic import HC_EV_ANGSTROM, _pad_offset

    # An assembled, centre-padded image has its real pixels at this offset in the padded array.
    dr, dc = _pad_offset(spec) if getattr(spec, "layout", "panels") == "assembled" else (0, 0)
    cell = spec_cell(spec)
    detector, modules, origin = _detector_for(spec.geom_file, spec.num_panels, spec.panel_shape)
    c = spec.num_panels
    truths, crystals, all_pixels = [], [], []
    for e, t in enumerate(batch.truth):
        rng = np.random.default_rng([spec.seed, 0x1A77, index, e])
        hit = rng.random() < spec.hit_fraction or spec.min_num_peak == 0
        limit = None if hit else int(rng.integers(0, spec.min_num_peak))
        wavelength = HC_EV_ANGSTROM / t.photon_energy_ev
        ev = simulate_event(
            cell, detector, modules, origin, spec.panel_shape, wavelength, rng, limit
        )
        n = len(ev.panel)
        npix = np.array([r.size for r, _ in ev.pixels], dtype=np.int64)
        pn = np.repeat(e * c + ev.panel.astype(np.int64), npix)
        pr = np.concatenate([r for r, _ in ev.pixels]) + dr if n else np.zeros(0, np.int64)
        pc = np.concatenate([cc for _, cc in ev.pixels]) + dc if n else np.zeros(0, np.int64)
        l0 = rng.uniform(-4.0, 3.0, pr.size).astype(np.float32)
        batch.logits[pn, 0, pr, pc] = l0
        batch.logits[pn, 1, pr, pc] = l0 + rng.uniform(0.5, 6.0, pr.size).astype(np.float32)
        d2 = (pr - dr - np.repeat(ev.row, npix)) ** 2 + (pc - dc - np.repeat(ev.col, npix)) ** 2
        sigma = np.repeat(ev.sigma, npix).astype(np.float64)
        profile = np.exp(-d2 / (2.0 * sigma**2)).astype(np.float32)
        batch.image[pn, 0, pr, pc] += np.repeat(ev.amplitude, npix) * profile
        values = batch.image[pn, 0, pr, pc]
        starts = np.concatenate([[0], np.cumsum(npix)[:-1]]).astype(np.int64)
        if n:
            total = np.add.reduceat(values.astype(np.float64), starts).astype(np.float32)
            vmax = np.maximum.reduceat(values, starts)
        else:
            total = vmax = np.zeros(0, dtype=np.float32)
        truths.append(
            replace(
                t,
                panel=ev.panel,
                row=ev.row,
                col=ev.col,
                npix=npix.astype(np.int32),
                total_intensity=total,
                max_value=vmax,
                kept=n >= spec.min_num_peak,
            )
        )
        crystals.append(ev.crystal)
        all_pixels.append(np.stack([pn, pr, pc], axis=1))
    batch.truth = truths
    batch.crystals = crystals
    batch.pixels = np.concatenate(all_pixels) if all_pixels else np.zeros((0, 3), np.int64)
    return batch
