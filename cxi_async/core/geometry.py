"""CrystFEL geometry -> slab layout: where each inference panel lives in the CXI slab image.

PeakNet sees an event as a stack of panels ``(C, H_orig, W_orig)``; CrystFEL reads one 2-D
*slab* per frame and a geometry file that names, for each of its panels, the slab rectangle
(``min_ss..max_ss``, ``min_fs..max_fs``, inclusive) holding its pixels. This module turns a
geometry file (parsed by ``cfelpyutils``, never by hand) into a :class:`SlabLayout`: one slab
rectangle per inference panel, in inference order.

Panel naming. A geometry may describe each module as one panel (``p0`` .. ``p15``) or each
ASIC (``p0a0`` .. ``p15a3``). A panel whose name ends in ``a<k>`` right after a digit
(``p3a1``, ``q0a12``) is ASIC ``k`` of module ``p3`` / ``q0``; the ASICs of a module must tile
its bounding rectangle exactly. Any other name (``p3``, ``panel3``, ``m3``) is a module on its
own. Modules are ordered by the numbers in their names, compared as numbers (``p2`` before
``p10``, ``panel9`` before ``panel10``), which is psana's panel order for the detectors we know
(ePix10k2M, Jungfrau, Rayonix, ...). The inference stack must then be one module per panel:
a CSPAD geometry in quadrant ASICs ``q0a0`` .. ``q3a15`` groups into 4 quadrants and will not
``check`` against psana's 32 2x1 sensors. Geometries that put panels at a fixed index of a
multi-dimensional array (``p0/dim1 = 0``, EuXFEL style) or with fs before ss are not slab
geometries and are refused.

Units. CrystFEL 0.12 accepts values with units (``photon_energy = 9.5 keV``, ``clen = 100 mm``)
that cfelpyutils 2.2 cannot read; ``normalise_units`` converts them in the text handed to
cfelpyutils only, and the geometry's literal photon energy is kept in eV on the layout.

Coordinates are pixel indices: the centre of pixel (0, 0) is (0.0, 0.0), as in Cheetah and
psana. CrystFEL adds half a pixel when it reads a ``cxi`` peak list.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
from cfelpyutils.geometry import load_crystfel_geometry

from cxi_async.core.files import atomic_write

__all__ = [
    "GEOM_CONSTANT_KEYS",
    "SLAB_GEOM_KEYS",
    "GeometryError",
    "GeometryMismatch",
    "SlabLayout",
    "literal_photon_energy_ev",
    "load_layout",
    "normalise_units",
    "write_slab_geom",
]

#: Global keys of the slab geometry that make CrystFEL read cxi_async's CXI files as they are.
SLAB_GEOM_KEYS: dict[str, str] = {
    "data": "/entry_1/data_1/data",
    "dim0": "%",
    "dim1": "ss",
    "dim2": "fs",
    "peak_list": "/entry_1/result_1",
    "peak_list_type": "cxi",
    "photon_energy": "/LCLS/photon_energy_eV",
}

#: Global CrystFEL keys that ``[metadata.constants]`` may set in the written geometry.
GEOM_CONSTANT_KEYS = frozenset(
    {"adu_per_photon", "adu_per_eV", "coffset", "clen", "res", "photon_energy_bandwidth", "max_adu"}
)
# Other ways to give the beam energy: the photon_energy dataset replaces them.
_ENERGY_ALTERNATIVES = frozenset({"wavelength", "electron_voltage"})

_ASIC_NAME = re.compile(r"^(?P<module>.*\d)a(?P<asic>\d+)$")
_KEY_LINE = re.compile(r"^\s*(?P<key>[^\s=;]+)\s*=")
_DIM_KEY = re.compile(r"^dim\d+$")
_VALUE_LINE = re.compile(r"^\s*(?P<key>[^\s=;]+)\s*=\s*(?P<value>[^;]*?)\s*(?:;.*)?$")
_LEADING_NUMBER = re.compile(r"^[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
#: eV per photon times wavelength in Angstrom.
HC_EV_ANGSTROM = 12398.4193
#: Keys CrystFEL 0.12 reads with a unit after the value (``clen = 100 mm``), the units it
#: accepts for each, the factor to the unit cfelpyutils reads (eV, m), and the unit of a bare
#: literal. cfelpyutils joins the value's words ("100mm") and then fails or misreads it.
_UNITS: dict[str, dict[str, float]] = {
    "photon_energy": {"eV": 1.0, "keV": 1e3},
    "clen": {"m": 1.0, "mm": 1e-3},
    "detector_shift_x": {"m": 1.0, "mm": 1e-3},
    "detector_shift_y": {"m": 1.0, "mm": 1e-3},
    "wavelength": {"m": 1.0, "A": 1.0},  # cfelpyutils ignores wavelength: only the number is kept
    "electron_voltage": {"V": 1.0, "kV": 1.0},  # likewise
}
#: Numeric keys CrystFEL reads with atof(), which ignores whatever follows the number
#: (``coffset = 0.01 m``); cfelpyutils reads them with float() or int() and fails.
_ATOF_KEYS = frozenset(
    {
        "min_fs", "max_fs", "min_ss", "max_ss", "corner_x", "corner_y", "coffset", "res",
        "adu_per_eV", "adu_per_photon", "max_adu", "flag_equal", "flag_lessthan",
        "flag_morethan",
    }
)  # fmt: skip
# Errors cfelpyutils raises for a malformed file (it does not wrap them).
_PARSE_ERRORS = (RuntimeError, ValueError, TypeError, IndexError, KeyError, AttributeError)


class GeometryError(ValueError):
    """The geometry file is missing, unreadable, or does not describe a usable slab."""


class GeometryMismatch(GeometryError):
    """The geometry does not fit the panel stack ``(C, H_orig, W_orig)`` of the data."""


@dataclass(frozen=True, eq=False)
class SlabLayout:
    """Slab rectangle of each inference panel: panel c's pixel (y, x) is slab (min_ss+y, min_fs+x).

    Picklable and immutable (the arrays are read-only), so one instance can be shared by the
    actors. ``geom_file`` and ``geom_sha256`` record where it came from, for CXI attributes.
    """

    panel_names: tuple[str, ...]
    min_ss: np.ndarray
    min_fs: np.ndarray
    panel_shape: tuple[int, int]
    slab_shape: tuple[int, int]
    geom_file: str | None = None
    geom_sha256: str | None = None
    #: The geometry's literal photon energy (``photon_energy = 9500``, ``9.5 keV``, or a
    #: literal ``wavelength``) in eV; None when it names a data location or is absent.
    photon_energy_ev: float | None = None
    # Precomputed at construction so that assemble() does no planning per frame.
    _dst: tuple[tuple[slice, slice], ...] = field(init=False, repr=False)
    _gaps: tuple[tuple[slice, slice], ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        names = tuple(str(n) for n in self.panel_names)
        min_ss = _readonly_int64(self.min_ss)
        min_fs = _readonly_int64(self.min_fs)
        h, w = (int(v) for v in self.panel_shape)
        ss, fs = (int(v) for v in self.slab_shape)
        n = len(names)
        if n == 0 or min_ss.shape != (n,) or min_fs.shape != (n,):
            raise GeometryError(
                f"a slab layout needs at least one panel and one min_ss/min_fs per panel name; "
                f"got {n} names, min_ss of shape {min_ss.shape}, min_fs of shape {min_fs.shape}"
            )
        if len(set(names)) != n:
            raise GeometryError(f"panel names must be unique, got {names}")
        if h < 1 or w < 1:
            raise GeometryError(f"panel shape must be positive, got {h} x {w}")
        outside = (min_ss < 0) | (min_fs < 0) | (min_ss + h > ss) | (min_fs + w > fs)
        if outside.any():
            c = int(np.argmax(outside))
            raise GeometryError(
                f"panel {names[c]} (slab ss {min_ss[c]}..{min_ss[c] + h - 1}, "
                f"fs {min_fs[c]}..{min_fs[c] + w - 1}) lies outside the {ss} x {fs} slab"
            )
        rects = np.stack([min_ss, min_ss + h, min_fs, min_fs + w], axis=1)
        overlap = _first_overlap(rects)
        if overlap is not None:
            a, b = overlap
            raise GeometryError(f"panels {names[a]} and {names[b]} overlap in the slab")
        dst = tuple(
            (slice(int(s), int(s) + h), slice(int(f), int(f) + w))
            for s, f in zip(min_ss, min_fs, strict=True)
        )
        set_ = object.__setattr__
        set_(self, "panel_names", names)
        set_(self, "min_ss", min_ss)
        set_(self, "min_fs", min_fs)
        set_(self, "panel_shape", (h, w))
        set_(self, "slab_shape", (ss, fs))
        set_(self, "_dst", dst)
        set_(self, "_gaps", _gap_rectangles(rects, (ss, fs)))

    # -- construction ------------------------------------------------------------------------

    @classmethod
    def stacked(cls, num_panels: int, height: int, width: int) -> SlabLayout:
        """Layout without a geometry file: panels ``panel0``.. stacked along ss, in order."""
        if num_panels < 1 or height < 1 or width < 1:
            raise GeometryError(
                f"a stacked layout needs positive sizes, got {num_panels} panels of "
                f"{height} x {width}"
            )
        return cls(
            panel_names=tuple(f"panel{c}" for c in range(num_panels)),
            min_ss=np.arange(num_panels, dtype=np.int64) * height,
            min_fs=np.zeros(num_panels, dtype=np.int64),
            panel_shape=(height, width),
            slab_shape=(num_panels * height, width),
        )

    # -- queries -----------------------------------------------------------------------------

    @property
    def num_panels(self) -> int:
        return len(self.panel_names)

    @property
    def has_gaps(self) -> bool:
        """True when some slab pixels belong to no panel (they are zeroed by assemble)."""
        return bool(self._gaps)

    def describe(self) -> str:
        """``"geometry <file>"`` or ``"the stacked layout (no geometry file)"``, for messages."""
        if self.geom_file is None:
            return "the stacked layout (no geometry file)"
        return f"geometry {self.geom_file}"

    def check(self, num_panels: int, height: int, width: int) -> None:
        """Raise GeometryMismatch unless the data's panel stack is ``(C, H_orig, W_orig)``."""
        h, w = self.panel_shape
        if (self.num_panels, h, w) != (num_panels, height, width):
            raise GeometryMismatch(
                f"{self.describe()} has {self.num_panels} panels of {h} x {w} but the data has "
                f"{num_panels} panels of {height} x {width} (C x H_orig x W_orig from "
                f"preprocessing metadata)"
            )

    def same_slab(self, other: SlabLayout) -> bool:
        """True when both layouts map every panel pixel to the same slab pixel (names too)."""
        return (
            self.panel_names == other.panel_names
            and self.panel_shape == other.panel_shape
            and self.slab_shape == other.slab_shape
            and np.array_equal(self.min_ss, other.min_ss)
            and np.array_equal(self.min_fs, other.min_fs)
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SlabLayout):
            return NotImplemented
        return (
            self.same_slab(other)
            and self.geom_file == other.geom_file
            and self.geom_sha256 == other.geom_sha256
        )

    def __hash__(self) -> int:
        return hash((self.panel_names, self.slab_shape, self.geom_sha256))

    def __reduce__(self) -> tuple[Any, ...]:
        # Rebuild through __init__ so that the copy is validated and its arrays read-only again.
        return (
            type(self),
            (
                self.panel_names,
                self.min_ss,
                self.min_fs,
                self.panel_shape,
                self.slab_shape,
                self.geom_file,
                self.geom_sha256,
                self.photon_energy_ev,
            ),
        )

    # -- coordinates -------------------------------------------------------------------------

    def to_slab(self, panel: Any, row: Any, col: Any) -> tuple[np.ndarray, np.ndarray]:
        """Slab (ss, fs) float64 of panel pixel positions (row, col); vectorised, broadcasts."""
        c = self._panel_index(panel)
        ss = self.min_ss[c] + np.asarray(row, dtype=np.float64)
        fs = self.min_fs[c] + np.asarray(col, dtype=np.float64)
        return ss, fs

    def to_panel(self, ss: Any, fs: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Inverse of to_slab: (panel int64, row, col float64) of slab positions.

        A position belongs to the panel holding the pixel whose centre is nearest (pixel
        (r, f) covers [r - 0.5, r + 0.5)). Positions on no panel raise ValueError.
        """
        ss, fs = np.broadcast_arrays(
            np.asarray(ss, dtype=np.float64), np.asarray(fs, dtype=np.float64)
        )
        r = np.floor(ss + 0.5)[..., None]
        f = np.floor(fs + 0.5)[..., None]
        h, w = self.panel_shape
        inside = (
            (r >= self.min_ss) & (r < self.min_ss + h) & (f >= self.min_fs) & (f < self.min_fs + w)
        )
        found = inside.any(axis=-1)
        if not found.all():
            bad = int(np.count_nonzero(~found))
            i = np.unravel_index(int(np.argmin(found)), found.shape)
            raise ValueError(
                f"{bad} of {found.size} slab positions lie on no panel of {self.describe()} "
                f"(first: ss={ss[i]}, fs={fs[i]}; slab is {self.slab_shape[0]} x "
                f"{self.slab_shape[1]})"
            )
        c = np.argmax(inside, axis=-1).astype(np.int64)
        return c, ss - self.min_ss[c], fs - self.min_fs[c]

    def _panel_index(self, panel: Any) -> np.ndarray:
        c = np.asarray(panel)
        if c.dtype.kind not in "iu":
            raise TypeError(f"panel indices must be integers, got dtype {c.dtype}")
        if c.size and (c.min() < 0 or c.max() >= self.num_panels):
            raise ValueError(
                f"panel indices must be in 0..{self.num_panels - 1} for {self.describe()}, "
                f"got {c.min()}..{c.max()}"
            )
        return c

    # -- images ------------------------------------------------------------------------------

    def assemble(self, panels: np.ndarray, out: np.ndarray) -> np.ndarray:
        """Copy each panel's real pixels ``panels[c, :H_orig, :W_orig]`` into its slab rectangle.

        ``panels`` may be padded (bottom/right) and read-only, e.g. ``image[b*C:(b+1)*C, 0]``;
        ``out`` is the (SS, FS) slab buffer, typically the one that goes to HDF5. One copy per
        panel and no temporaries; slab pixels outside every panel are set to 0 (only when the
        layout has such gaps). Returns ``out``.
        """
        h, w = self.panel_shape
        short = panels.ndim != 3 or panels.shape[1] < h or panels.shape[2] < w
        if short or panels.shape[0] != self.num_panels:
            raise GeometryMismatch(
                f"assemble() needs panels of shape ({self.num_panels}, >={h}, >={w}) for "
                f"{self.describe()}, got {panels.shape}"
            )
        if out.shape != self.slab_shape:
            raise GeometryMismatch(
                f"assemble() needs an output slab of shape {self.slab_shape} for "
                f"{self.describe()}, got {out.shape}"
            )
        for c, dst in enumerate(self._dst):
            np.copyto(out[dst], panels[c, :h, :w], casting="same_kind")
        for gap in self._gaps:
            out[gap] = 0
        return out


def _readonly_int64(values: Any) -> np.ndarray:
    arr = np.array(values, dtype=np.int64)
    arr.setflags(write=False)
    return arr


def _first_overlap(rects: np.ndarray) -> tuple[int, int] | None:
    """First pair (a, b), a < b, of overlapping [ss0, ss1) x [fs0, fs1) rectangles, or None."""
    s0, s1, f0, f1 = (rects[:, k] for k in range(4))
    hit = (
        (s0[:, None] < s1[None, :])
        & (s0[None, :] < s1[:, None])
        & (f0[:, None] < f1[None, :])
        & (f0[None, :] < f1[:, None])
    )
    hit = np.triu(hit, k=1)
    if not hit.any():
        return None
    a, b = np.argwhere(hit)[0]
    return int(a), int(b)


def _gap_rectangles(
    rects: np.ndarray, slab_shape: tuple[int, int]
) -> tuple[tuple[slice, slice], ...]:
    """Slab rectangles no panel covers, as few (ss, fs) slice pairs (bands of equal gaps merged)."""
    ss, fs = slab_shape
    edges = np.unique(np.concatenate([[0, ss], rects[:, 0], rects[:, 1]]))
    bands: list[tuple[int, int, tuple[tuple[int, int], ...]]] = []
    for lo, hi in itertools.pairwise(edges.tolist()):
        covering = rects[(rects[:, 0] <= lo) & (rects[:, 1] >= hi)]
        holes, pos = [], 0
        for f0, f1 in sorted(zip(covering[:, 2].tolist(), covering[:, 3].tolist(), strict=True)):
            if f0 > pos:
                holes.append((pos, f0))
            pos = max(pos, f1)
        if pos < fs:
            holes.append((pos, fs))
        if bands and bands[-1][1] == lo and bands[-1][2] == tuple(holes):
            bands[-1] = (bands[-1][0], int(hi), bands[-1][2])
        else:
            bands.append((int(lo), int(hi), tuple(holes)))
    return tuple((slice(lo, hi), slice(f0, f1)) for lo, hi, holes in bands for f0, f1 in holes)


# -- loading -----------------------------------------------------------------------------------


def load_layout(geom_file: str | os.PathLike) -> SlabLayout:
    """Slab layout of a CrystFEL geometry file, one panel per detector module (see module doc)."""
    return _load(geom_file)[0]


def _load(geom_file: str | os.PathLike) -> tuple[SlabLayout, str]:
    """Layout and text of a geometry file, read once so that the sha256 matches both."""
    path = Path(geom_file)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise GeometryError(
            f"geometry file {path} does not exist; give a CrystFEL .geom file, or no geometry "
            f"to stack the panels along the slow scan"
        ) from None
    except OSError as exc:
        raise GeometryError(f"cannot read geometry file {path}: {exc.strerror or exc}") from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise GeometryError(
            f"geometry file {path} is not a text file (a CrystFEL .geom is plain text)"
        ) from None
    try:
        layout = _layout_from_text(text)
    except GeometryError as exc:
        raise GeometryError(f"geometry file {path}: {exc}") from exc
    sha256 = hashlib.sha256(raw).hexdigest()
    energy = literal_photon_energy_ev(text)
    return replace(layout, geom_file=str(path), geom_sha256=sha256, photon_energy_ev=energy), text


def normalise_units(text: str) -> str:
    """The geometry text with every value in the unit cfelpyutils reads, units removed.

    CrystFEL 0.12 accepts ``photon_energy = 9.5 keV``, ``clen = 100 mm`` and the like (see
    ``_UNITS``) and ignores text after an atof() number (``coffset = 0.01 m``); cfelpyutils 2.2
    fails on the first and misreads or fails on the others. Only the text handed to
    cfelpyutils changes: comments and every other line are dropped or kept as they are. A unit
    CrystFEL rejects raises GeometryError naming the line.
    """
    out: list[str] = []
    for line in text.splitlines():
        m = None if line.lstrip().startswith(";") else _VALUE_LINE.match(line)
        if m is None:
            out.append(line)
            continue
        key, value = m["key"], m["value"]
        name = key.rsplit("/", 1)[-1]
        if name in _UNITS:
            number, unit = _split_unit(value)
            if unit is not None:
                factors = _UNITS[name]
                if unit not in factors:
                    raise GeometryError(
                        f"line '{line.strip()}' has the unit '{unit}', which CrystFEL does not "
                        f"accept for {name}: use {' or '.join(factors)}"
                    )
                value = _scaled(number, factors[unit])
        elif name in _ATOF_KEYS and not _is_number(value):
            lead = _LEADING_NUMBER.match(value)
            value = lead[0] if lead else value
        out.append(f"{key} = {value}")
    return "\n".join(out) + "\n"


def literal_photon_energy_ev(text: str) -> float | None:
    """Photon energy in eV that a geometry text gives as a number, or None.

    Reads the last top-level ``photon_energy`` (bare: eV, or ``eV``/``keV``) or ``wavelength``
    (``m``/``A``) line, as CrystFEL does (the last one wins). None when that line names a data
    location (``/LCLS/photon_energy_eV``), has an unknown unit, or is not a positive number.
    """
    energy: float | None = None
    for line in text.splitlines():
        m = None if line.lstrip().startswith(";") else _VALUE_LINE.match(line)
        if m is None or m["key"] not in ("photon_energy", "wavelength"):
            continue
        number, unit = _split_unit(m["value"])
        energy = _energy_ev(m["key"], number, unit)
    return energy


def _energy_ev(key: str, number: str, unit: str | None) -> float | None:
    if not _is_number(number):
        return None
    value = float(number)
    if not (math.isfinite(value) and value > 0):
        return None
    if key == "photon_energy":
        factor = {None: 1.0, "eV": 1.0, "keV": 1e3}.get(unit)
        return None if factor is None else float(Decimal(number) * Decimal(repr(factor)))
    angstrom = {"A": value, "m": value * 1e10}.get(unit or "")  # CrystFEL needs the unit here
    return None if angstrom is None else HC_EV_ANGSTROM / angstrom


def _split_unit(value: str) -> tuple[str, str | None]:
    """``"100 mm"`` -> ``("100", "mm")``; ``"0.1"`` -> ``("0.1", None)`` (CrystFEL splits at the
    first space and compares the rest with the unit names)."""
    parts = value.split(None, 1)
    if len(parts) < 2:
        return value, None
    return parts[0], parts[1]


def _scaled(number: str, factor: float) -> str:
    """A literal scaled by ``factor`` (repr keeps every digit); a data location as it is."""
    if factor == 1.0 or not _is_number(number):
        return number
    return repr(float(Decimal(number) * Decimal(repr(factor))))  # 100 mm is 0.1, not 0.1000..01


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _layout_from_text(text: str) -> SlabLayout:
    """Parse with cfelpyutils, check the panels form a 2-D slab, group ASICs into modules."""
    try:
        detector = load_crystfel_geometry(io.StringIO(normalise_units(text))).detector
    except _PARSE_ERRORS as exc:
        reason = " ".join(str(a) for a in exc.args) or type(exc).__name__
        raise GeometryError(f"not a valid CrystFEL geometry ({reason})") from exc
    rects: dict[str, tuple[int, int, int, int]] = {}
    for name, panel in detector["panels"].items():
        if panel["dim_structure"] not in (["ss", "fs"], ["%", "ss", "fs"]):
            raise GeometryError(
                f"panel {name} has dims {panel['dim_structure']}; cxi_async writes a 2-D slab "
                f"per frame and needs dim0 = %, dim1 = ss, dim2 = fs (no fixed panel index)"
            )
        s0, s1 = panel["orig_min_ss"], panel["orig_max_ss"] + 1
        f0, f1 = panel["orig_min_fs"], panel["orig_max_fs"] + 1
        if s1 <= s0 or f1 <= f0:
            raise GeometryError(
                f"panel {name} is empty (min_ss {s0}, max_ss {s1 - 1}, min_fs {f0}, "
                f"max_fs {f1 - 1})"
            )
        rects[name] = (s0, s1, f0, f1)
    return _layout_from_rects(rects)


def _layout_from_rects(rects: dict[str, tuple[int, int, int, int]]) -> SlabLayout:
    """Group [ss0, ss1) x [fs0, fs1) panel rectangles by module and order modules by number."""
    modules: dict[str, list[str]] = {}
    for name in rects:
        m = _ASIC_NAME.match(name)
        modules.setdefault(m["module"] if m else name, []).append(name)
    boxes: dict[str, tuple[int, int, int, int]] = {}
    for module, members in modules.items():
        parts = np.array([rects[n] for n in members], dtype=np.int64)
        box = (parts[:, 0].min(), parts[:, 1].max(), parts[:, 2].min(), parts[:, 3].max())
        overlap = _first_overlap(parts)
        if overlap is not None:
            a, b = overlap
            raise GeometryError(
                f"ASICs {members[a]} and {members[b]} of module {module} overlap; the ASICs of "
                f"a module must tile a rectangle"
            )
        area = int(((parts[:, 1] - parts[:, 0]) * (parts[:, 3] - parts[:, 2])).sum())
        box_area = int((box[1] - box[0]) * (box[3] - box[2]))
        if area != box_area:
            raise GeometryError(
                f"the ASICs of module {module} ({', '.join(members)}) leave {box_area - area} "
                f"pixels of its rectangle ss {box[0]}..{box[1] - 1}, fs {box[2]}..{box[3] - 1} "
                f"uncovered; the ASICs of a module must tile a rectangle"
            )
        boxes[module] = tuple(int(v) for v in box)  # type: ignore[assignment]
    order = sorted(boxes, key=_natural_key)
    shapes = {m: (boxes[m][1] - boxes[m][0], boxes[m][3] - boxes[m][2]) for m in order}
    first = order[0]
    for m in order:
        if shapes[m] != shapes[first]:
            raise GeometryError(
                f"module {m} is {shapes[m][0]} x {shapes[m][1]} but module {first} is "
                f"{shapes[first][0]} x {shapes[first][1]}; all modules must have the same size"
            )
    return SlabLayout(
        panel_names=tuple(order),
        min_ss=np.array([boxes[m][0] for m in order], dtype=np.int64),
        min_fs=np.array([boxes[m][2] for m in order], dtype=np.int64),
        panel_shape=shapes[first],
        slab_shape=(max(b[1] for b in boxes.values()), max(b[3] for b in boxes.values())),
    )


def _natural_key(name: str) -> tuple[str | int, ...]:
    # re.split with a group alternates text, number, text, ...: positions always compare alike.
    return tuple(int(t) if i % 2 else t for i, t in enumerate(re.split(r"(\d+)", name)))


# -- writing -----------------------------------------------------------------------------------


def write_slab_geom(
    path: str | os.PathLike,
    layout: SlabLayout,
    source_geom: str | os.PathLike | None = None,
    constants: Mapping[str, Any] | None = None,
) -> Path:
    """Write the CrystFEL geometry that indexes the CXI files as they are; atomic; returns path.

    With ``source_geom`` (the file ``layout`` was loaded from) its text is kept and only the
    keys in ``SLAB_GEOM_KEYS`` are set: global ones replaced in place, missing ones added before
    the first panel line (cfelpyutils and CrystFEL apply a global key only to panels that come
    after it), and per-panel overrides of them commented out. ``wavelength`` and
    ``electron_voltage`` are commented out too: the photon energy dataset replaces them.
    Without a source, each layout panel is written with a *placeholder* lab geometry (see
    ``_placeholder_geom``). ``constants`` (``[metadata.constants]``) that are CrystFEL global
    geometry keys (``GEOM_CONSTANT_KEYS``) are set the same way; the others are ignored here.
    """
    keys = dict(SLAB_GEOM_KEYS)
    keys.update(
        (k, _geom_value(v)) for k, v in (constants or {}).items() if k in GEOM_CONSTANT_KEYS
    )
    if source_geom is None:
        text = _set_slab_keys(_placeholder_geom(layout), keys)
    else:
        source, source_text = _load(source_geom)
        if not source.same_slab(layout):
            raise GeometryError(
                f"source geometry {source_geom} does not describe this slab layout "
                f"({source.num_panels} panels of {source.panel_shape[0]} x "
                f"{source.panel_shape[1]} in a {source.slab_shape[0]} x {source.slab_shape[1]} "
                f"slab vs {layout.num_panels} of {layout.panel_shape[0]} x "
                f"{layout.panel_shape[1]} in {layout.slab_shape[0]} x {layout.slab_shape[1]})"
            )
        header = (
            f"; Slab geometry for the CXI files written by cxi_async, from {source_geom}\n"
            f"; (source sha256 {source.geom_sha256}).\n"
            f"; cxi_async set {', '.join(keys)} for these files;\n"
            f"; the rest is the source as it was.\n"
        )
        text = header + _set_slab_keys(source_text, keys)
    # Refuse to write a file that would not read back as this layout.
    written = _layout_from_text(text)
    if not written.same_slab(layout):
        raise GeometryError(f"the slab geometry for {path} would not read back as its layout")
    return atomic_write(path, text, fsync=True)


def _geom_value(value: Any) -> str:
    return repr(value) if isinstance(value, float) else str(value)


def _set_slab_keys(text: str, keys: Mapping[str, str] = SLAB_GEOM_KEYS) -> str:
    """Set ``keys`` in a geometry text; every value it replaces stays as a comment."""
    out: list[str] = []
    done: set[str] = set()
    in_panels = False
    for line in text.splitlines():
        m = None if line.lstrip().startswith(";") else _KEY_LINE.match(line)
        key = m["key"] if m else ""
        if "/" in key and not in_panels:
            missing = [f"{k} = {v}" for k, v in keys.items() if k not in done]
            if missing:
                out += ["; added by cxi_async for its CXI files:", *missing, ""]
            done.update(keys)
            in_panels = True
        name = key.rsplit("/", 1)[-1]
        if name in _ENERGY_ALTERNATIVES:
            out.append(f"; cxi_async dropped (photon_energy is set): {line.strip()}")
            continue
        if name not in keys and not _DIM_KEY.match(name):
            out.append(line)
            continue
        new = f"{key} = {keys.get(key)}"
        if key in keys and key not in done:
            if line.split(";")[0].split() != new.split():
                out.append(f"; cxi_async replaced: {line.strip()}")
            out.append(new)
            done.add(key)
        else:
            out.append(f"; cxi_async dropped (the slab keys above apply): {line.strip()}")
    out += [f"{k} = {v}" for k, v in keys.items() if k not in done]  # no panels
    return "\n".join(out) + "\n"


def _placeholder_geom(layout: SlabLayout, clen: float = 0.1, res: float = 10000.0) -> str:
    """Slab geometry with a made-up lab layout: panels in a grid, 8 pixels apart, beam centred.

    Peaks are right in slab coordinates, but corner_x/corner_y, clen and res are placeholders,
    not the real detector: replace them before indexing real data.
    """
    h, w = layout.panel_shape
    ncols = math.ceil(math.sqrt(layout.num_panels))
    nrows = math.ceil(layout.num_panels / ncols)
    gap = 8
    x0 = -(ncols * (w + gap) - gap) // 2
    y0 = -(nrows * (h + gap) - gap) // 2
    lines = [
        f"; Slab geometry written by cxi_async for its CXI files: {layout.num_panels} panels of "
        f"{h} x {w} in a {layout.slab_shape[0]} x {layout.slab_shape[1]} slab.",
        "; PLACEHOLDER detector layout: no geometry file was given, so corner_x/corner_y lay",
        "; the panels out in a simple grid and clen, res and adu_per_photon are made up. Peak",
        "; positions in the CXI files are right in slab coordinates, but the lab geometry is not",
        "; the real detector: put in the real corners, clen and res before indexing real data.",
        *(f"{k} = {v}" for k, v in SLAB_GEOM_KEYS.items()),
        "adu_per_photon = 1",
        f"clen = {clen}",
        f"res = {res:g}",
    ]
    for c, name in enumerate(layout.panel_names):
        s, f = int(layout.min_ss[c]), int(layout.min_fs[c])
        lines += [
            "",
            f"{name}/min_fs = {f}",
            f"{name}/max_fs = {f + w - 1}",
            f"{name}/min_ss = {s}",
            f"{name}/max_ss = {s + h - 1}",
            f"{name}/fs = +1.0x +0.0y",
            f"{name}/ss = +0.0x +1.0y",
            f"{name}/corner_x = {x0 + (c % ncols) * (w + gap)}",
            f"{name}/corner_y = {y0 + (c // ncols) * (h + gap)}",
        ]
    return "\n".join(lines) + "\n"
