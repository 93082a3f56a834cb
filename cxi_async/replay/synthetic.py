"""Synthetic Q2 load: batches shaped exactly like the producer's items, with exact ground truth.

The demo, the tests and the bench replay these batches instead of running PeakNet. Each batch
carries the logits, the padded image and the metadata of a ``PipelineOutput``, plus the peaks
that peak finding must recover: disjoint 8-connected blobs, pairwise separated by at least one
background pixel, so labelling the mask finds exactly one component per blob and the unweighted
centroid of each component equals the truth.

Exactness guarantees (checked in ``tests/test_synthetic.py``):

- On the real pixels of each panel, ``logit[1] > logit[0]`` holds exactly on blob pixels. Every
  logit lies in (-16, 16) and the two classes differ by at least 0.5, so rounding to float16 or
  bfloat16 (spacing <= 1/16 there) keeps the order: the mask is identical in all three dtypes.
- The padding (rows >= H_orig or cols >= W_orig) holds *decoy* positive logits, some of them
  8-adjacent to blobs that touch the bottom or right panel edge: a consumer that labels before
  cropping merges them and gets wrong centroids.
- ``row``/``col`` are the correctly rounded means of the blob pixel coordinates (integer sum
  divided once in float64). ``total_intensity`` is the float64 sum of the float32 image over the
  blob, cast to float32; ``max_value`` is exact. A consumer summing in float32 agrees to ~1e-6
  relative: compare with ``rtol=1e-5``.

No Ray here: ``cxi_async.replay.producer`` puts the arrays into the object store and the queue.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Literal

import numpy as np
import torch
from scipy import ndimage

__all__ = [
    "HC_EV_ANGSTROM",
    "EventTruth",
    "PipelineOutput",
    "PreprocessingMetadata",
    "SyntheticBatch",
    "SyntheticError",
    "SyntheticSpec",
    "SyntheticSpecError",
    "iter_batches",
    "make_batch",
]

HC_EV_ANGSTROM = 12398.4193
"""E[eV] = HC_EV_ANGSTROM / lambda[Angstrom], the conversion the producer's metadata implies."""

Dtype = Literal["float32", "float16", "bfloat16"]
# The metadata the real sources send (q2-protocol.md): "packed" uint64 timestamps and Angstrom
# (cxi_async's own); "psana2" (lclstreamer: float64 packed timestamps, nm from the EPICS PV);
# "psana1" (strings "<s>.<ns>", nm); "streaming" (the upstream's synthetic producer: one
# time.time() per batch, photon_energies in eV, nested dicts, and no image).
MetadataStyle = Literal["packed", "psana2", "psana1", "streaming"]
Layout = Literal["panels", "assembled"]
PadStyle = Literal["bottom-right", "center"]
_TORCH_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}

# Logit ranges. Background: l0 in [0, 8), l1 = l0 - [0.5, 8). Peaks: l0 in [-4, 3),
# l1 = l0 + [0.5, 6). All |values| < 16 and margins >= 0.5 survive float16/bfloat16 rounding.
_MARGIN_MIN = 0.5
_EDGE_PROBABILITY = 0.15  # share of blobs placed flush against a panel edge
_PADDING_DECOYS_PER_PANEL = 6  # random 3x3 decoys in the padding of each panel
_PLACEMENT_ATTEMPTS = 200
_MAX_BLOB_PIXELS = 30
_EVENT_PERIOD_NS = 8_333_333  # 120 Hz
_T0_SECONDS = 1_700_000_000


class SyntheticError(Exception):
    """Base class of this module's errors."""


class SyntheticSpecError(SyntheticError, ValueError):
    """A SyntheticSpec setting is out of range, or the panels cannot hold the requested peaks."""


# --------------------------------------------------------------------------------------------
# The producer's item, as a look-alike with the same attribute names
# --------------------------------------------------------------------------------------------


@dataclass
class PreprocessingMetadata:
    """Same attribute names as the producer's: bottom-right padding from original to model size."""

    original_shape: tuple[int, int, int, int]  # (B, C, H_orig, W_orig)
    preprocessed_shape: tuple[int, int, int, int]  # (B*C, 1, H, W)


@dataclass
class PipelineOutput:
    """Look-alike of ``peaknet_pipeline_ray.config.data_structures.PipelineOutput``.

    Deliberately a plain dataclass without validation so tests can build malformed items.
    """

    predictions: Any = None  # torch.Tensor (B*C, 2, H, W) inline, or None
    predictions_ref: Any = None  # ObjectRef to a numpy array, or None
    metadata: dict | None = None
    batch_id: str | None = None
    original_image_ref: Any = None  # ObjectRef to float32 (B*C, 1, H, W), or None
    preprocessing_metadata: PreprocessingMetadata | None = None


# --------------------------------------------------------------------------------------------
# Spec
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SyntheticSpec:
    """What to generate. Everything is deterministic in (seed, batch index)."""

    batch_size: int = 8
    num_panels: int = 16
    panel_shape: tuple[int, int] = (352, 384)
    padded_shape: tuple[int, int] = (512, 512)
    dtype: Dtype = "float32"
    peaks_per_event: int = 100
    hit_fraction: float = 0.8
    min_num_peak: int = 10
    seed: int = 0
    wavelength_per_event: bool = True  # False: metadata["photon_wavelength"] is one float
    events_per_run: int = 0  # > 0: metadata["run"] = 1 + event number // events_per_run
    metadata_style: MetadataStyle = "packed"  # the metadata of which real source (see below)
    layout: Layout = "panels"  # "assembled": one image per event, no preprocessing_metadata
    pad_style: PadStyle = "center"  # where an assembled image's padding goes (lclstreamer default)
    pattern: Literal["random", "lattice"] = "random"  # lattice: crystal stills (lattice.py)
    cell: tuple[float, ...] = (79.1, 79.1, 37.9, 90.0, 90.0, 90.0)  # lattice: a b c al be ga
    lattice_type: str = "tetragonal"  # lattice: CrystFEL lattice_type of the cell
    centering: str = "P"  # lattice: CrystFEL centering of the cell
    geom_file: str | None = None  # lattice: geometry the spots are projected through

    def __post_init__(self) -> None:
        if self.pattern not in ("random", "lattice"):
            raise SyntheticSpecError(
                f"SyntheticSpec.pattern is {self.pattern!r}; allowed: random, lattice."
            )
        object.__setattr__(self, "cell", tuple(float(v) for v in self.cell))
        # TOML gives lists; store tuples so the frozen spec stays hashable and comparable.
        for name in ("panel_shape", "padded_shape"):
            value = getattr(self, name)
            try:
                shape = tuple(int(v) for v in value)
            except (TypeError, ValueError):
                shape = ()
            if len(shape) != 2 or min(shape) < 1:
                raise SyntheticSpecError(
                    f"SyntheticSpec.{name} is {value!r}; "
                    "allowed: two positive integers (rows, cols)."
                )
            object.__setattr__(self, name, shape)
        for name, low in (
            ("batch_size", 1),
            ("num_panels", 1),
            ("peaks_per_event", 0),
            ("min_num_peak", 0),
            ("seed", 0),
            ("events_per_run", 0),
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                raise SyntheticSpecError(
                    f"SyntheticSpec.{name} is {value!r}; allowed: an integer >= {low}."
                )
        if self.layout == "assembled" and self.num_panels != 1:
            raise SyntheticSpecError(
                f"SyntheticSpec.layout is 'assembled' with num_panels = {self.num_panels}; "
                "allowed: 1 (one assembled image per event)."
            )
        if self.dtype not in _TORCH_DTYPES:
            raise SyntheticSpecError(
                f"SyntheticSpec.dtype is {self.dtype!r}; allowed: {', '.join(_TORCH_DTYPES)}."
            )
        if not isinstance(self.hit_fraction, (int, float)) or not 0.0 <= self.hit_fraction <= 1.0:
            raise SyntheticSpecError(
                f"SyntheticSpec.hit_fraction is {self.hit_fraction!r}; allowed: 0 to 1."
            )
        (h, w), (hp, wp) = self.panel_shape, self.padded_shape
        if hp < h or wp < w:
            raise SyntheticSpecError(
                f"SyntheticSpec.padded_shape {self.padded_shape} is smaller than panel_shape "
                f"{self.panel_shape}; allowed: padded_shape >= panel_shape in both dimensions."
            )
        if h < 2 or w < 2:
            raise SyntheticSpecError(
                f"SyntheticSpec.panel_shape is {self.panel_shape}; allowed: at least 2 x 2 pixels."
            )

    @classmethod
    def from_replay(cls, replay_cfg: Any, min_num_peak: int) -> SyntheticSpec:
        """Build from the replay config section (object or mapping); missing names keep defaults.

        ``min_num_peak`` comes from the peak-finding settings so that the synthetic hit / non-hit
        split matches the filter the pipeline applies.
        """
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name == "min_num_peak":
                continue
            if isinstance(replay_cfg, Mapping):
                if f.name in replay_cfg:
                    values[f.name] = replay_cfg[f.name]
            elif hasattr(replay_cfg, f.name):
                values[f.name] = getattr(replay_cfg, f.name)
        return cls(min_num_peak=min_num_peak, **values)

    @property
    def num_rows(self) -> int:
        """B*C, the leading dimension of the logits and the image."""
        return self.batch_size * self.num_panels


# --------------------------------------------------------------------------------------------
# Batch and truth
# --------------------------------------------------------------------------------------------


@dataclass
class EventTruth:
    """The peaks one event holds, ordered like ``peaks.PeakTable``: (panel, first raster pixel)."""

    batch_id: str
    event_index: int
    panel: np.ndarray  # int32
    row: np.ndarray  # float64, unweighted centroid in panel pixel indices
    col: np.ndarray  # float64
    npix: np.ndarray  # int32
    total_intensity: np.ndarray  # float32, sum of the image over the blob
    max_value: np.ndarray  # float32
    photon_energy_ev: float
    timestamp: int
    kept: bool  # len(panel) >= spec.min_num_peak
    run: int | None = None  # metadata["run"] of the event, when the spec numbers runs

    @property
    def num_peaks(self) -> int:
        return len(self.panel)


@dataclass
class SyntheticBatch:
    """One batch: the arrays the producer would emit plus the truth peak finding must recover."""

    batch_id: str
    logits: np.ndarray  # float32 (B*C, 2, H, W)
    image: np.ndarray | None  # float32 (B*C, 1, H, W), zero padding; None: the source has none
    metadata: dict
    preprocessing_metadata: PreprocessingMetadata | None  # None for assembled images
    truth: list[EventTruth]
    dtype: Dtype = "float32"
    pixels: np.ndarray | None = field(
        default=None, repr=False
    )  # (P, 3) int64 [n, r, c] per blob pixel
    crystals: list[Any] | None = None  # pattern "lattice": lattice.CrystalTruth per event

    def predictions_tensor(self, dtype: Dtype | torch.dtype | None = None) -> torch.Tensor:
        """The logits as the inline torch tensor the producer sends (default: the spec dtype).

        float32 shares memory with ``self.logits``; the other dtypes are fresh tensors.
        """
        if dtype is None:
            dtype = self.dtype
        if isinstance(dtype, str):
            if dtype not in _TORCH_DTYPES:
                raise SyntheticSpecError(
                    f"predictions dtype {dtype!r} for batch {self.batch_id}; "
                    f"allowed: {', '.join(_TORCH_DTYPES)}."
                )
            dtype = _TORCH_DTYPES[dtype]
        if dtype not in _TORCH_DTYPES.values():
            raise SyntheticSpecError(
                f"predictions dtype {dtype} for batch {self.batch_id}; "
                f"allowed: torch.float32, torch.float16, torch.bfloat16."
            )
        return torch.from_numpy(self.logits).to(dtype)

    def to_item(
        self, *, image_ref: Any = None, predictions_ref: Any = None, inline: bool = True
    ) -> PipelineOutput:
        """Wrap as a ``PipelineOutput``; ``inline=False`` leaves ``predictions`` None.

        No validation: ``inline=False`` without ``predictions_ref`` gives an item with no logits,
        which is what a test of malformed items wants.
        """
        return PipelineOutput(
            predictions=self.predictions_tensor() if inline else None,
            predictions_ref=predictions_ref,
            metadata=dict(self.metadata),
            batch_id=self.batch_id,
            original_image_ref=image_ref,
            preprocessing_metadata=self.preprocessing_metadata,
        )

    @property
    def num_peaks(self) -> int:
        return sum(t.num_peaks for t in self.truth)


# --------------------------------------------------------------------------------------------
# Blob shapes
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Shape:
    """A blob: pixel offsets in raster order from its bounding-box corner, and its surroundings."""

    dr: np.ndarray  # int64, raster order
    dc: np.ndarray
    halo_dr: np.ndarray  # offsets of the 3x3 dilation, from -1 to height
    halo_dc: np.ndarray
    profile: np.ndarray  # float32 Gaussian weight per pixel, max 1
    height: int
    width: int


_EIGHT = np.ones((3, 3), dtype=bool)


def _shape_from_grid(grid: np.ndarray) -> _Shape | None:
    """Normalise a boolean grid to a _Shape; None unless it is one 8-connected blob of <= 30 px."""
    rows, cols = np.nonzero(grid)
    if not 1 <= rows.size <= _MAX_BLOB_PIXELS:
        return None
    grid = grid[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    if ndimage.label(grid, structure=_EIGHT)[1] != 1:
        return None
    dr, dc = (a.astype(np.int64) for a in np.nonzero(grid))  # raster order already
    halo = ndimage.binary_dilation(np.pad(grid, 1), structure=_EIGHT)
    hr, hc = np.nonzero(halo)
    rc, cc = dr.mean(), dc.mean()
    sigma = max(0.7, 0.6 * np.sqrt(dr.size / np.pi))
    profile = np.exp(-((dr - rc) ** 2 + (dc - cc) ** 2) / (2 * sigma**2))
    return _Shape(
        dr=dr,
        dc=dc,
        halo_dr=hr.astype(np.int64) - 1,
        halo_dc=hc.astype(np.int64) - 1,
        profile=(profile / profile.max()).astype(np.float32),
        height=grid.shape[0],
        width=grid.shape[1],
    )


def _grid(points: list[tuple[int, int]]) -> np.ndarray:
    pts = np.asarray(points)
    pts -= pts.min(axis=0)
    g = np.zeros(pts.max(axis=0) + 1, dtype=bool)
    g[pts[:, 0], pts[:, 1]] = True
    return g


def _orient(g: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return (
        np.rot90(g, int(rng.integers(4)))
        if rng.random() < 0.5
        else np.rot90(g[::-1], int(rng.integers(4)))
    )


def _candidate_grids(rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Small discs, ellipses, L shapes, diagonal chains and random 8-connected growths."""
    # Fixed small cases: single pixel, diagonal-only pairs (8- but not 4-connected), a ring.
    yield _grid([(0, 0)])
    yield _grid([(0, 0), (1, 1)])
    yield _grid([(0, 1), (1, 0)])
    yield _grid([(0, 0), (0, 1)])
    ring = np.ones((3, 3), dtype=bool)
    ring[1, 1] = False
    yield ring
    for radius in (1.0, 1.5, 2.0, 2.3, 2.9, 3.0):
        y, x = np.mgrid[-3:4, -3:4]
        yield y**2 + x**2 <= radius**2
    for _ in range(24):  # ellipses at random sub-pixel centres and angles
        a, b = rng.uniform(0.6, 3.6, 2)
        theta = rng.uniform(0, np.pi)
        cy, cx = rng.uniform(-0.5, 0.5, 2)
        y, x = np.mgrid[-5:6, -5:6]
        u = (x - cx) * np.cos(theta) + (y - cy) * np.sin(theta)
        v = -(x - cx) * np.sin(theta) + (y - cy) * np.cos(theta)
        yield (u / a) ** 2 + (v / b) ** 2 <= 1.0
    for _ in range(12):  # L shapes, 1 or 2 pixels thick
        arm1, arm2 = rng.integers(2, 7, 2)
        thick = int(rng.integers(1, 3))
        g = np.zeros((arm1, arm2), dtype=bool)
        g[:, :thick] = True
        g[-thick:, :] = True
        yield _orient(g, rng)
    for n in (3, 4, 5, 6):  # diagonal chains
        yield _orient(np.eye(n, dtype=bool), rng)
    for _ in range(32):  # random growth: each new pixel is an 8-neighbour of an existing one
        n = int(rng.integers(2, _MAX_BLOB_PIXELS + 1))
        pts = {(0, 0)}
        while len(pts) < n:
            r, c = list(pts)[rng.integers(len(pts))]
            dr, dc = rng.integers(-1, 2, 2)
            pts.add((r + int(dr), c + int(dc)))
        yield _grid(sorted(pts))


@functools.lru_cache(maxsize=8)
def _shape_library(seed: int) -> tuple[_Shape, ...]:
    """About 80 blob shapes per seed, built once: placing a batch then only draws indices."""
    rng = np.random.default_rng([seed, 0xB10B])
    shapes = (_shape_from_grid(np.ascontiguousarray(g)) for g in _candidate_grids(rng))
    return tuple(s for s in shapes if s is not None)


# --------------------------------------------------------------------------------------------
# Background banks
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def _banks(seed: int, padded_pixels: int) -> tuple[np.ndarray, np.ndarray]:
    """Background logits (2, L) and unit Gaussian noise (L,), L = 4 x the padded panel.

    Drawing ~100 M random numbers per ePix10k2M batch costs over a second; each panel instead
    copies a slice at a random offset of these per-seed banks, which is a memcpy. Panels share
    noise at different offsets: irrelevant to peak finding, but the image is more compressible
    by a long-window compressor than real data.
    """
    rng = np.random.default_rng([seed, 0xBA4C])
    n = 4 * padded_pixels
    l0 = rng.uniform(0.0, 8.0, n).astype(np.float32)
    l1 = l0 - rng.uniform(_MARGIN_MIN, 8.0, n).astype(np.float32)
    noise = rng.standard_normal(n, dtype=np.float32)
    logits = np.stack([l0, l1])
    logits.flags.writeable = False
    noise.flags.writeable = False
    return logits, noise


# --------------------------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------------------------


def _event_peak_count(spec: SyntheticSpec, rng: np.random.Generator) -> int:
    """Hits: around peaks_per_event and >= min_num_peak. Non-hits: 0 .. min_num_peak - 1."""
    if rng.random() < spec.hit_fraction or spec.min_num_peak == 0:
        return max(spec.min_num_peak, int(rng.poisson(spec.peaks_per_event)))
    return int(rng.integers(0, spec.min_num_peak))


def _place_event(
    spec: SyntheticSpec,
    shapes: tuple[_Shape, ...],
    num_peaks: int,
    rng: np.random.Generator,
    batch_id: str,
    event: int,
) -> list[tuple[int, int, int, int]]:
    """Place num_peaks blobs with a 1-pixel gap; returns (panel, shape index, r0, c0) each.

    An occupancy grid per panel (with a 1-pixel frame so halos never leave it) marks every
    blob pixel and its 8 neighbours; a new blob may not touch a marked pixel.
    """
    h, w = spec.panel_shape
    fits = [i for i, s in enumerate(shapes) if s.height <= h and s.width <= w]
    occupied = np.zeros((spec.num_panels, h + 2, w + 2), dtype=bool)
    placed = []
    for _ in range(num_peaks):
        for _attempt in range(_PLACEMENT_ATTEMPTS):
            k = fits[int(rng.integers(len(fits)))]
            s = shapes[k]
            p = int(rng.integers(spec.num_panels))
            r0 = int(rng.integers(h - s.height + 1))
            c0 = int(rng.integers(w - s.width + 1))
            if rng.random() < _EDGE_PROBABILITY:
                side = int(rng.integers(4))
                if side == 0:
                    r0 = 0
                elif side == 1:
                    r0 = h - s.height
                elif side == 2:
                    c0 = 0
                else:
                    c0 = w - s.width
            if not occupied[p, r0 + 1 + s.dr, c0 + 1 + s.dc].any():
                occupied[p, r0 + 1 + s.halo_dr, c0 + 1 + s.halo_dc] = True
                placed.append((p, k, r0, c0))
                break
        else:
            raise SyntheticSpecError(
                f"Batch {batch_id} event {event}: could not place {num_peaks} separated peaks on "
                f"{spec.num_panels} panels of {spec.panel_shape}; allowed: fewer "
                f"peaks_per_event or larger panel_shape / num_panels."
            )
    # PeakTable order: panel, then the blob's first pixel in raster order.
    placed.sort(
        key=lambda t: (t[0], t[2] + int(shapes[t[1]].dr[0]), t[3] + int(shapes[t[1]].dc[0]))
    )
    return placed


def _padding_decoys(
    spec: SyntheticSpec, edge_pixels: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Padding pixels (n, r, c) that get positive logits; empty when there is no padding.

    Two kinds: the padding neighbours of blob pixels on the bottom / right panel edge (they
    would merge with the blob if labelling ran before cropping), and random 3x3 squares.
    """
    (h, w), (hp, wp) = spec.panel_shape, spec.padded_shape
    if (hp, wp) == (h, w):
        return np.zeros((0, 3), dtype=np.int64)
    parts = []
    n, r, c = edge_pixels.T
    if hp > h:
        sel = r == h - 1
        parts.append(np.stack([n[sel], np.full(sel.sum(), h), c[sel]], axis=1))
    if wp > w:
        sel = c == w - 1
        parts.append(np.stack([n[sel], r[sel], np.full(sel.sum(), w)], axis=1))
    # Random squares: a uniform draw over the padding pixels (bottom strip, then right strip).
    count = spec.num_rows * _PADDING_DECOYS_PER_PANEL
    bottom = (hp - h) * wp
    idx = rng.integers(0, bottom + h * (wp - w), count)
    right = idx - bottom
    cr = np.where(idx < bottom, h + idx // wp, right // max(wp - w, 1))
    cc = np.where(idx < bottom, idx % wp, w + right % max(wp - w, 1))
    cn = np.repeat(np.arange(spec.num_rows), _PADDING_DECOYS_PER_PANEL)
    for dr in (-1, 0, 1):
        for dc in (-1, 0, 1):
            parts.append(np.stack([cn, cr + dr, cc + dc], axis=1))
    pix = np.concatenate(parts).astype(np.int64)
    n, r, c = pix.T
    keep = (r >= 0) & (c >= 0) & (r < hp) & (c < wp) & ((r >= h) | (c >= w))
    return pix[keep]


def _event_numbers(spec: SyntheticSpec, index: int) -> np.ndarray:
    """The stream position of each event of batch ``index``."""
    return np.arange(index * spec.batch_size, (index + 1) * spec.batch_size, dtype=np.int64)


def _timestamps(spec: SyntheticSpec, index: int, rng: np.random.Generator) -> np.ndarray:
    """psana uint64 (seconds << 32 | nanoseconds) at 120 Hz, < 1 ms jitter: strictly increasing."""
    jitter = rng.integers(0, 1_000_000, spec.batch_size)
    ns = _event_numbers(spec, index) * _EVENT_PERIOD_NS + jitter
    seconds = _T0_SECONDS + spec.seed % 1_000_000 + ns // 1_000_000_000
    return (seconds.astype(np.uint64) << np.uint64(32)) | (ns % 1_000_000_000).astype(np.uint64)


def _runs(spec: SyntheticSpec, index: int) -> np.ndarray | None:
    """Run numbers 1, 2, ... of ``events_per_run`` consecutive events each (None: no runs)."""
    if not spec.events_per_run:
        return None
    return 1 + _event_numbers(spec, index) // spec.events_per_run


def make_batch(spec: SyntheticSpec, index: int) -> SyntheticBatch:
    """Batch number ``index`` of the stream; identical for the same (spec, index)."""
    if index < 0:
        raise SyntheticSpecError(f"Synthetic batch index is {index}; allowed: an integer >= 0.")
    rng = np.random.default_rng([spec.seed, 1, index])
    batch_id = f"synthetic-{spec.seed}-{index:06d}"
    b, c = spec.batch_size, spec.num_panels
    (h, w), (hp, wp) = spec.panel_shape, spec.padded_shape
    nrows = spec.num_rows

    # Background: logits everywhere, image noise on real pixels only (padding stays zero).
    bank_logits, bank_noise = _banks(spec.seed, hp * wp)
    logits = np.empty((nrows, 2, hp, wp), dtype=np.float32)
    image = np.zeros((nrows, 1, hp, wp), dtype=np.float32)
    offsets = rng.integers(0, bank_noise.size - hp * wp + 1, (nrows, 2))
    means = rng.uniform(0.0, 10.0, nrows).astype(np.float32)
    sigmas = rng.uniform(1.0, 3.0, nrows).astype(np.float32)
    for n in range(nrows):
        o, oi = offsets[n]
        logits[n] = bank_logits[:, o : o + hp * wp].reshape(2, hp, wp)
        real = image[n, 0, :h, :w]
        np.multiply(bank_noise[oi : oi + h * w].reshape(h, w), sigmas[n], out=real)
        real += means[n]

    # Blobs: place per event, then scatter every blob pixel of the batch in one go.
    shapes = _shape_library(spec.seed)
    per_event = [
        _place_event(spec, shapes, _event_peak_count(spec, rng), rng, batch_id, e)
        if spec.pattern == "random"
        else []  # lattice spots are drawn below, once the metadata gives the wavelength
        for e in range(b)
    ]
    blobs = [
        (e * c + p, k, r0, c0) for e, placed in enumerate(per_event) for p, k, r0, c0 in placed
    ]
    npix = np.array([shapes[k].dr.size for _, k, _, _ in blobs], dtype=np.int64)
    if blobs:
        pn = np.repeat([n for n, _, _, _ in blobs], npix)
        pr = np.concatenate([r0 + shapes[k].dr for _, k, r0, _ in blobs])
        pc = np.concatenate([c0 + shapes[k].dc for _, k, _, c0 in blobs])
        profile = np.concatenate([shapes[k].profile for _, k, _, _ in blobs])
    else:
        pn = pr = pc = np.zeros(0, dtype=np.int64)
        profile = np.zeros(0, dtype=np.float32)
    pixels = np.stack([pn, pr, pc], axis=1)
    num_pix = pixels.shape[0]
    l0 = rng.uniform(-4.0, 3.0, num_pix).astype(np.float32)
    logits[pn, 0, pr, pc] = l0
    logits[pn, 1, pr, pc] = l0 + rng.uniform(_MARGIN_MIN, 6.0, num_pix).astype(np.float32)
    amplitude = rng.lognormal(np.log(200.0), 1.0, len(blobs)).astype(np.float32)
    image[pn, 0, pr, pc] += np.repeat(amplitude, npix) * profile

    decoys = _padding_decoys(spec, pixels, rng)
    dn, dr, dc = decoys.T
    d0 = rng.uniform(-4.0, 3.0, len(decoys)).astype(np.float32)
    logits[dn, 0, dr, dc] = d0
    logits[dn, 1, dr, dc] = d0 + rng.uniform(_MARGIN_MIN, 6.0, len(decoys)).astype(np.float32)

    # Truth, in the blob order (already panel / raster sorted within each event).
    values = image[pn, 0, pr, pc]
    starts = np.concatenate([[0], np.cumsum(npix)[:-1]]).astype(np.int64)
    if blobs:
        total = np.add.reduceat(values.astype(np.float64), starts).astype(np.float32)
        vmax = np.maximum.reduceat(values, starts)
        row = np.add.reduceat(pr, starts) / npix  # integer sums, one float64 division
        col = np.add.reduceat(pc, starts) / npix
    else:
        total = vmax = np.zeros(0, dtype=np.float32)
        row = col = np.zeros(0, dtype=np.float64)

    wavelength = rng.normal(1.3, 0.002, b)
    if not spec.wavelength_per_event:
        wavelength[:] = wavelength[0]
    metadata, energies, timestamp = _styled_metadata(
        spec, index, wavelength, _timestamps(spec, index, rng)
    )
    runs = _runs(spec, index)
    truth = []
    start = 0
    for e, placed in enumerate(per_event):
        s = slice(start, start + len(placed))
        start += len(placed)
        truth.append(
            EventTruth(
                batch_id=batch_id,
                event_index=e,
                panel=np.array([p for p, _, _, _ in placed], dtype=np.int32),
                row=row[s].astype(np.float64),
                col=col[s].astype(np.float64),
                npix=npix[s].astype(np.int32),
                total_intensity=total[s],
                max_value=vmax[s],
                photon_energy_ev=float(energies[e]),
                timestamp=int(timestamp[e]),
                kept=len(placed) >= spec.min_num_peak,
                run=None if runs is None else int(runs[e]),
            )
        )

    if runs is not None:
        metadata["run"] = runs
    preprocessing = PreprocessingMetadata(
        original_shape=(b, c, h, w), preprocessed_shape=(nrows, 1, hp, wp)
    )
    if spec.layout == "assembled":  # lclstreamer's PeakNet preprocessing: no shape metadata
        preprocessing = None
        shift = _pad_offset(spec)
        if shift != (0, 0):  # the padding (decoys included) wraps to the top and left
            logits = np.roll(logits, shift, axis=(2, 3))
            image = np.roll(image, shift, axis=(2, 3))
            pixels = pixels + np.array([0, *shift])
    batch = SyntheticBatch(
        batch_id=batch_id,
        logits=logits,
        image=None if spec.metadata_style == "streaming" else image,
        metadata=metadata,
        preprocessing_metadata=preprocessing,
        truth=truth,
        dtype=spec.dtype,
        pixels=pixels,
    )
    if spec.pattern == "lattice":
        from cxi_async.replay.lattice import diffract_batch

        return diffract_batch(batch, spec, index)
    return batch


def _pad_offset(spec: SyntheticSpec) -> tuple[int, int]:
    """(top, left) of the real pixels: floor(dH/2), floor(dW/2) when centred, as lclstreamer."""
    if spec.pad_style == "bottom-right":
        return 0, 0
    (h, w), (hp, wp) = spec.panel_shape, spec.padded_shape
    return (hp - h) // 2, (wp - w) // 2


def _styled_metadata(
    spec: SyntheticSpec, index: int, wavelength: np.ndarray, stamps: np.ndarray
) -> tuple[dict, np.ndarray, np.ndarray]:
    """(metadata as the style's source sends it, true energies in eV, true psana timestamps).

    The truth is what the source means, computed here without cxi_async's reader: a float64
    timestamp keeps only the bits a float64 holds, a batch's ``time.time()`` is one instant.
    """
    style = spec.metadata_style
    socket = {
        "producer_id": 0,
        "batch_id": f"producer_0_batch_{index}",
        "detector_distance": 100.0 + index / 4,  # mm, PV MFX:DET:MMS:04.RBV (per batch)
    }
    if style == "packed":
        energies = HC_EV_ANGSTROM / wavelength
        value = wavelength if spec.wavelength_per_event else float(wavelength[0])
        return {"photon_wavelength": value, "timestamp": stamps}, energies, stamps
    if style in ("psana1", "psana2"):
        nm = wavelength / 10.0
        energies = HC_EV_ANGSTROM / (nm * 10.0)
        if style == "psana2":
            as_float = stamps.astype(np.float64)
            stamps = np.array([int(v) for v in as_float], np.uint64)
            value: Any = as_float
        else:
            seconds, ns = stamps >> np.uint64(32), stamps & np.uint64(0xFFFFFFFF)
            value = np.array([f"{s}.{n}" for s, n in zip(seconds, ns, strict=True)])
        wave = nm if spec.wavelength_per_event else float(nm[0])
        return {**socket, "timestamp": value, "photon_wavelength": wave}, energies, stamps
    # "streaming": one time.time() per batch, 1/256 s apart (exact in float64, as truth).
    seconds = _T0_SECONDS + spec.seed % 1_000_000 + index // 256
    fraction = index % 256
    stamps = np.full(stamps.shape, (seconds << 32) | (fraction * 3_906_250), np.uint64)
    energies = HC_EV_ANGSTROM / wavelength
    metadata = {
        "producer_id": 0,
        "batch_index": index,
        "timestamp": seconds + fraction / 256,
        "photon_energies": [float(e) for e in energies],
        "run_id": f"run_0_{index // 100}",
        "detector_settings": {"gain": "high", "exposure_time": 0.001, "binning": "1x1"},
        "experimental_conditions": {"temperature": 295.0, "pressure": 1013.25},
    }
    return metadata, energies, stamps


def iter_batches(
    spec: SyntheticSpec, num_batches: int, *, start: int = 0
) -> Iterator[SyntheticBatch]:
    """Batches start .. start + num_batches - 1, generated lazily (a full batch is ~400 MB)."""
    for index in range(start, start + num_batches):
        yield make_batch(spec, index)
