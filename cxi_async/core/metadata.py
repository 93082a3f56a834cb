"""Q2 metadata, in every form the real sources send, as the per-event values cxi_async writes.

The producer passes its source's metadata through unchanged (q2-protocol.md, "Metadata as the
real sources send it"), so one key arrives in many forms:

- ``timestamp``: integers (psana's packed ``seconds << 32 | nanoseconds``); float64 holding the
  packed value (lclstreamer's ``Psana2Timestamp``, values >= 2**32); float seconds
  (``time.time()``, values < 2**32); strings ``"<seconds>.<nanoseconds>"`` with the nanoseconds
  as a plain integer (``Psana1Timestamp``: ``"1700000000.5"`` is 5 ns), as str, bytes or numpy
  string arrays. Each is one value per batch or one per event.
- photon energy: ``photon_energy`` (eV), ``photon_energies`` (eV, one per event), or
  ``photon_wavelength`` in Angstrom or nanometres (the LCLS PV ``SIOC:SYS0:ML00:AO192`` is nm).

Nothing here rejects a batch: a value that cannot be read becomes "unknown" for its events
(NaN energy, timestamp 0 with ``timestamp_missing``) plus a notice, one sentence that the
pipeline says once per run. Keys cxi_async does not use are never looked at. No Ray here.
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

__all__ = [
    "AUTO_NM_BELOW",
    "ENERGY_RANGE_EV",
    "HC_EV_ANGSTROM",
    "EventMetadata",
    "MetadataRules",
    "Notice",
    "WavelengthUnit",
    "read_metadata",
    "read_timestamps",
]

HC_EV_ANGSTROM = 12398.4193
"""E[eV] = HC_EV_ANGSTROM / lambda[Angstrom] = (HC_EV_ANGSTROM / 10) / lambda[nm]."""

AUTO_NM_BELOW = 0.4
"""Under ``wavelength_unit = "auto"`` a wavelength below this is nm (0.4 nm = 3.1 keV; hard
X-ray crystallography spans 0.05-0.3 nm = 0.5-3 A), others are Angstrom."""

ENERGY_RANGE_EV = (1_000.0, 50_000.0)
"""Photon energies outside this range after conversion get a warning (a unit mix-up, most
likely: a nanometre wavelength read as Angstrom gives ten times the energy)."""

WavelengthUnit = Literal["auto", "angstrom", "nm"]
ENERGY_KEYS = ("photon_energy", "photon_energies")  # eV, in this order, before the wavelength
WAVELENGTH_KEY = "photon_wavelength"
TIMESTAMP_KEY = "timestamp"

_SECONDS_NS = re.compile(r"\s*(\d+)(?:\.(\d{1,9}))?\s*")
_TWO_32 = 2**32


@dataclass(frozen=True)
class Notice:
    """One sentence to say once per run; ``kind`` is what makes two notices the same."""

    kind: str
    text: str
    level: Literal["info", "warning"] = "warning"


@dataclass(frozen=True)
class MetadataRules:
    """What the configuration says about metadata (config ``[metadata]``)."""

    wavelength_unit: WavelengthUnit = "auto"
    datasets: Mapping[str, str] = field(default_factory=dict)  # CXI dataset path -> metadata key


@dataclass(frozen=True)
class EventMetadata:
    """The values of one batch of B events that end up in the CXI files."""

    photon_energy_ev: np.ndarray  # (B,) float64, NaN where unknown
    timestamp: np.ndarray  # (B,) uint64 psana value, 0 where unknown
    timestamp_missing: np.ndarray  # (B,) bool
    datasets: dict[str, np.ndarray]  # CXI dataset path -> (B,) float64, NaN where missing
    notices: tuple[Notice, ...] = ()


class _Unreadable(ValueError):
    """A value of a form this module does not read; ``str()`` describes the form."""


def read_metadata(md: Any, b: int, rules: MetadataRules | None = None) -> EventMetadata:
    """Read timestamps, photon energies and the configured datasets of one batch."""
    rules = rules or MetadataRules()
    notices: list[Notice] = []
    if not isinstance(md, Mapping):
        if md is not None:
            notices.append(
                Notice("metadata-type", f"metadata is a {type(md).__name__}, not a dict: ignored")
            )
        md = {}
    energy = _energy(md, b, rules.wavelength_unit, notices)
    stamps, missing = _timestamp(md, b, notices)
    datasets = {path: _dataset(md, key, b, notices) for path, key in rules.datasets.items()}
    return EventMetadata(energy, stamps, missing, datasets, tuple(notices))


# --------------------------------------------------------------------------- values


def _as_array(value: Any) -> np.ndarray:
    """numpy of a scalar, sequence, numpy array or torch tensor (no torch import needed)."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(value, torch.Tensor):
        t = value.detach().cpu()
        return (t.double() if t.dtype == torch.bfloat16 else t).numpy()
    try:
        return np.asarray(value)
    except (ValueError, TypeError) as exc:  # ragged lists
        raise _Unreadable(f"a {type(value).__name__} that is not an array") from exc


def _per_event(value: Any, b: int) -> np.ndarray:
    """A scalar broadcast to (b,), or an array of length b; anything else is _Unreadable."""
    arr = _as_array(value)
    if arr.ndim == 0:
        return np.full(b, arr)
    if arr.shape != (b,):
        raise _Unreadable(f"shape {arr.shape} for {b} events")
    return arr


def _describe(value: Any) -> str:
    """How a value looks, for a notice: 'a dict', 'float64 array of shape (8,)'."""
    if isinstance(value, np.ndarray):
        return f"a {value.dtype} array of shape {value.shape}"
    return f"a {type(value).__name__}"


def _numbers(value: Any, b: int) -> np.ndarray:
    """float64 (b,), NaN where a value is not a positive finite number."""
    arr = _per_event(value, b)
    if arr.dtype.kind not in "iuf":
        raise _Unreadable(f"{arr.dtype} values")
    out = arr.astype(np.float64)
    out[~(out > 0) | ~np.isfinite(out)] = np.nan
    return out


# --------------------------------------------------------------------------- photon energy


def _energy(md: Mapping, b: int, unit: WavelengthUnit, notices: list[Notice]) -> np.ndarray:
    for key in (*ENERGY_KEYS, WAVELENGTH_KEY):
        value = md.get(key)
        if value is None:
            continue
        try:
            numbers = _numbers(value, b)
        except _Unreadable as exc:
            notices.append(
                Notice(
                    f"unreadable:{key}",
                    f"metadata[{key!r}] is {_describe(value)} ({exc}), not a number per batch "
                    "or per event: it is ignored",
                )
            )
            continue
        if key == WAVELENGTH_KEY:
            ev, words = _from_wavelength(numbers, unit)
        else:
            ev, words = numbers, "eV"
        _check_range(ev, key, words, notices)
        known = ev[np.isfinite(ev)]
        if known.size:
            notices.append(
                Notice(
                    "energy-source",
                    f"photon energy from metadata[{key!r}] read as {words}: "
                    f"{numbers[np.isfinite(ev)][0]:g} -> {known[0]:.1f} eV",
                    level="info",
                )
            )
        return ev
    return np.full(b, np.nan)


def _from_wavelength(lam: np.ndarray, unit: WavelengthUnit) -> tuple[np.ndarray, str]:
    """eV from a wavelength; the words say which unit was used."""
    nm = lam < AUTO_NM_BELOW if unit == "auto" else np.full(lam.shape, unit == "nm")
    angstrom = np.where(nm, lam * 10.0, lam)
    with np.errstate(over="ignore", divide="ignore"):
        ev = HC_EV_ANGSTROM / angstrom
    ev[~np.isfinite(ev)] = np.nan
    known = np.isfinite(lam)
    if unit != "auto":
        words = "nm" if unit == "nm" else "Angstrom"
    elif known.any() and nm[known].all():
        words = f"nm (wavelength_unit = auto: below {AUTO_NM_BELOW:g})"
    elif known.any() and not nm[known].any():
        words = f"Angstrom (wavelength_unit = auto: {AUTO_NM_BELOW:g} or more)"
    else:
        words = f"nm below {AUTO_NM_BELOW:g}, else Angstrom (wavelength_unit = auto)"
    return ev, words


def _check_range(ev: np.ndarray, key: str, words: str, notices: list[Notice]) -> None:
    lo, hi = ENERGY_RANGE_EV
    bad = np.isfinite(ev) & ((ev < lo) | (ev > hi))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        notices.append(
            Notice(
                f"energy-range:{key}",
                f"metadata[{key!r}] gives {ev[i]:.1f} eV (read as {words}), outside "
                f"{lo / 1e3:g}-{hi / 1e3:g} keV: check the unit (metadata.wavelength_unit)",
            )
        )


# --------------------------------------------------------------------------- timestamps


def _timestamp(md: Mapping, b: int, notices: list[Notice]) -> tuple[np.ndarray, np.ndarray]:
    value = md.get(TIMESTAMP_KEY)
    if value is None:
        return np.zeros(b, np.uint64), np.ones(b, bool)
    try:
        stamps, ok = read_timestamps(value, b)
    except _Unreadable as exc:
        stamps, ok = np.zeros(b, np.uint64), np.zeros(b, bool)
        form = f"{_describe(value)} ({exc})"
    else:
        form = _describe(value)
    if not ok.all():
        notices.append(
            Notice(
                "unreadable:timestamp",
                f"metadata['timestamp'] ({form}) could not be read for {int((~ok).sum())} of "
                f"{b} events: they are written with timestamp 0 and the file attribute "
                "timestamps_missing",
            )
        )
    return stamps, ~ok


def read_timestamps(value: Any, b: int) -> tuple[np.ndarray, np.ndarray]:
    """(uint64 psana timestamps, readable mask) of B events from any form the sources send.

    Raises _Unreadable when the value as a whole has a form that holds no timestamps.
    """
    if isinstance(value, (str, bytes, np.str_, np.bytes_)):
        return _from_strings(np.full(b, _text(value), dtype=object))
    if isinstance(value, bool):
        raise _Unreadable("a bool")
    if isinstance(value, int):
        return _from_ints(np.full(b, value, dtype=object))
    if isinstance(value, (list, tuple)):
        if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value):
            # np.asarray would turn [2**63 + 1, 5] into float64 and lose the nanoseconds.
            return _from_ints(_per_event(np.array(list(value), dtype=object), b))
        if value and all(isinstance(v, (str, bytes, np.str_, np.bytes_)) for v in value):
            return _from_strings(_per_event(np.array(list(value), dtype=object), b))
    arr = _per_event(value, b)
    kind = arr.dtype.kind
    if kind in "US":
        return _from_strings(arr.astype(object))
    if kind == "O":
        if all(isinstance(v, (str, bytes, np.str_, np.bytes_)) for v in arr):
            return _from_strings(arr)
        arr = arr.astype(np.float64) if _all_real(arr) else arr
        kind = arr.dtype.kind
    if kind in "iu":
        return _from_ints(arr)
    if kind == "f":
        return _from_floats(arr.astype(np.float64))
    raise _Unreadable(f"{arr.dtype} values")


def _all_real(arr: np.ndarray) -> bool:
    return all(isinstance(v, (int, float, np.integer, np.floating)) for v in arr)


def _text(value: Any) -> str:
    return value.decode("ascii", "replace") if isinstance(value, (bytes, np.bytes_)) else value


def _from_ints(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Packed integers as they are; signed int64 keeps its bits (psana values exceed 2**63)."""
    if values.dtype.kind == "i":
        return values.astype(np.uint64), np.ones(values.shape, bool)
    if values.dtype.kind == "u":
        return values.astype(np.uint64), np.ones(values.shape, bool)
    ok = np.array([0 <= int(v) < 2**64 for v in values], bool)
    out = np.array([int(v) if good else 0 for v, good in zip(values, ok, strict=True)], np.uint64)
    return out, ok


def _from_floats(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """>= 2**32: the packed value in a float64; below: seconds (``time.time()``)."""
    ok = np.isfinite(values) & (values >= 0) & (values < 2.0**64)
    out = np.zeros(values.shape, np.uint64)
    for i in np.flatnonzero(ok):
        v = float(values[i])
        if v >= _TWO_32:
            out[i] = np.uint64(round(v))  # every float64 below 2**64 rounds below it
        else:
            seconds = math.floor(v)
            ns = round((v - seconds) * 1e9)
            if ns >= 1_000_000_000:
                seconds, ns = seconds + 1, ns - 1_000_000_000
            out[i] = np.uint64((seconds << 32) | ns)
    return out, ok


def _from_strings(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``"<seconds>.<nanoseconds>"``, the nanoseconds a plain integer (psana1's EventId)."""
    out = np.zeros(values.shape, np.uint64)
    ok = np.zeros(values.shape, bool)
    for i, v in enumerate(values):
        match = _SECONDS_NS.fullmatch(_text(v)) if isinstance(v, (str, bytes)) else None
        if match is None:
            continue
        seconds, ns = int(match.group(1)), int(match.group(2) or 0)
        if seconds < _TWO_32:
            out[i], ok[i] = np.uint64((seconds << 32) | ns), True
    return out, ok


# --------------------------------------------------------------------------- datasets


def _dataset(md: Mapping, key: str, b: int, notices: list[Notice]) -> np.ndarray:
    """(b,) float64 of ``md[key]``; NaN and a notice when it is missing or not numbers."""
    value = md.get(key)
    if value is None:
        notices.append(
            Notice(f"dataset-missing:{key}", f"metadata[{key!r}] is missing: NaN is written")
        )
        return np.full(b, np.nan)
    try:
        arr = _per_event(value, b)
        if arr.dtype.kind not in "iuf":
            raise _Unreadable(f"{arr.dtype} values")
    except _Unreadable as exc:
        notices.append(
            Notice(
                f"dataset-unreadable:{key}",
                f"metadata[{key!r}] is {_describe(value)} ({exc}), not a number per batch or "
                "per event: NaN is written",
            )
        )
        return np.full(b, np.nan)
    return arr.astype(np.float64)
