"""Run CrystFEL's indexamajig on cxi_async output and judge its stream against the truth.

CrystFEL exits 0 when it cannot read a file, so nothing here trusts the exit code: a run is
judged by its stderr (every line must be one indexamajig prints on a healthy run) and by
what the stream holds, chunk by chunk.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cxi_async.replay.lattice import UnitCell, orientation_error_deg

ROOT = Path(__file__).resolve().parents[1]
SHARED_BIN = ROOT.parent / "shared" / "tools" / "crystfel" / "bin"

# What indexamajig 0.12 prints on stderr when all is well; any other line is a problem.
_HEALTHY_STDERR = [
    re.compile(p)
    for p in (
        r"^$",
        r"^This is what I understood your unit cell to be:$",
        r"^\w+ \w, (unique axis \w, )?(right|left) handed\.$",
        r"^a\s+b\s+c\s+alpha\s+beta\s+gamma$",
        r"^\s*[\d.]+\s+[\d.]+\s+[\d.]+ A\s+[\d.]+\s+[\d.]+\s+[\d.]+ deg$",
        r"^List of indexing methods:$",
        r"^\s+\d+: \w+\s*$",
        r"^Indexing parameters:$",
        r"^\s*[A-Za-z][A-Za-z ()\"-]*: (on|off)$",
        r"^\d+ images processed, \d+ hits .*images/sec\.$",
        r"^Waiting for the last patterns to be processed\.\.\.$",
        r"^Waiting for data pipes to close\.\.\.$",
        r"^Final: \d+ images processed, .*crystals\.$",
    )
]


def find_indexamajig() -> tuple[str | None, str]:
    """Path of a working indexamajig (PATH first, then ../shared/tools), or None and why not."""
    candidates = [shutil.which("indexamajig"), str(SHARED_BIN / "indexamajig")]
    tried = []
    for exe in candidates:
        if not exe or not Path(exe).is_file():
            continue
        try:
            done = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=60)
        except OSError as exc:
            tried.append(f"{exe}: {exc}")
            continue
        if done.returncode == 0:
            return exe, ""
        tried.append(f"{exe} --version failed ({done.stderr.strip()[:200]})")
    why = "; ".join(tried) or f"not on PATH and not at {SHARED_BIN}"
    return None, f"indexamajig (CrystFEL) is not available: {why}"


@dataclass
class Crystal:
    cell: np.ndarray  # a, b, c in Angstrom, alpha, beta, gamma in degrees
    reciprocal: np.ndarray  # rows a*, b*, c* in 1/Angstrom, lab frame
    reflections: np.ndarray  # (N, 5) h, k, l, fs, ss (CrystFEL corner coordinates)
    reflection_panels: list[str]


@dataclass
class Chunk:
    filename: str
    event: str
    peaks: np.ndarray  # (N, 2) fs, ss as CrystFEL read them
    peak_panels: list[str]
    crystals: list[Crystal] = field(default_factory=list)


def run_indexamajig(
    exe: str, events_lst: Path, geom: Path, cell: Path, stream: Path, extra: tuple[str, ...] = ()
) -> tuple[list[Chunk], list[str]]:
    """indexamajig --peaks=cxi --indexing=asdf; returns the chunks and the unexpected stderr."""
    done = subprocess.run(
        [
            exe,
            "-i",
            str(events_lst),
            "-g",
            str(geom),
            "-p",
            str(cell),
            "--peaks=cxi",
            "--indexing=asdf",
            "--no-revalidate",  # exactly the written peaks (revalidation drops edge peaks)
            "-o",
            str(stream),
            "-j",
            "2",
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=stream.parent,
    )
    bad = [
        line for line in done.stderr.splitlines() if not any(p.match(line) for p in _HEALTHY_STDERR)
    ]
    if done.returncode != 0:
        bad.append(f"exit code {done.returncode}")
    text = stream.read_text() if stream.is_file() else ""
    return parse_stream(text), bad


def parse_stream(text: str) -> list[Chunk]:
    """The chunks of a CrystFEL stream: peaks, and each crystal's cell, basis and reflections."""
    chunks = []
    for body in re.findall(r"----- Begin chunk -----\n(.*?)----- End chunk -----", text, re.S):
        filename = re.search(r"^Image filename: (.*)$", body, re.M)
        event = re.search(r"^Event: (.*)$", body, re.M)
        peaks, peak_panels = _table(body, "Peaks from peak search", "End of peak list", 4)
        chunk = Chunk(
            filename=filename[1] if filename else "",
            event=event[1] if event else "",
            peaks=peaks[:, :2],
            peak_panels=peak_panels,
        )
        for xtal in re.findall(r"--- Begin crystal\n(.*?)--- End crystal", body, re.S):
            m = re.search(
                r"^Cell parameters (\S+) (\S+) (\S+) nm, (\S+) (\S+) (\S+) deg", xtal, re.M
            )
            cell = np.array([float(v) for v in m.groups()]) * [10, 10, 10, 1, 1, 1]
            basis = []
            for axis in ("astar", "bstar", "cstar"):
                v = re.search(rf"^{axis} = (\S+) (\S+) (\S+) nm\^-1", xtal, re.M)
                basis.append([float(x) / 10 for x in v.groups()])  # nm^-1 -> A^-1
            refl, panels = _table(
                xtal, "Reflections measured after indexing", "End of reflections", 9
            )
            chunk.crystals.append(Crystal(cell, np.array(basis), refl[:, [0, 1, 2, 7, 8]], panels))
        chunks.append(chunk)
    return chunks


def _table(text: str, start: str, end: str, ncols: int) -> tuple[np.ndarray, list[str]]:
    """Numeric rows (ncols numbers, then a panel name) between the start and end lines."""
    m = re.search(rf"^{re.escape(start)}\n[^\n]*\n(.*?)^{re.escape(end)}", text, re.S | re.M)
    rows, panels = [], []
    for line in (m[1] if m else "").splitlines():
        parts = line.split()
        rows.append([float(v) for v in parts[:ncols]])
        panels.append(parts[ncols] if len(parts) > ncols else "")
    return np.array(rows, dtype=np.float64).reshape(-1, ncols), panels


@dataclass
class Verdict:
    """What a stream shows against the truth; ``problems`` is empty when indexing is right."""

    frames: int
    hits: int
    indexed: int
    median_cell: np.ndarray | None
    orientation_errors_deg: list[float]
    panel_offsets_px: dict[str, float]
    problems: list[str]

    @property
    def indexed_fraction(self) -> float:
        return self.indexed / self.hits if self.hits else 0.0


def judge(
    chunks: list[Chunk],
    frames: dict[tuple[str, str], dict],
    cell: UnitCell,
    min_indexed: float = 0.9,
    cell_rtol: float = 0.01,
    angle_tol_deg: float = 1.0,
    orientation_tol_deg: float = 1.0,
    panel_tol_px: float = 1.0,
) -> Verdict:
    """Check the stream against ``frames``: {(file, "//i"): {"fs", "ss", "reciprocal"}}.

    - every frame is in the stream once, with exactly its peaks at position + 0.5 px;
    - at least ``min_indexed`` of the frames (all are hits) are indexed;
    - the median cell is within ``cell_rtol`` and ``angle_tol_deg`` of ``cell``;
    - every crystal's orientation is the truth's within ``orientation_tol_deg``, up to the
      lattice's symmetry;
    - on every panel, the median distance between a spot and the nearest reflection CrystFEL
      predicts there is below ``panel_tol_px`` (a panel shifted in the geometry shows here).
    """
    problems: list[str] = []
    by_frame = {}
    for c in chunks:
        key = (c.filename, c.event)
        if key in by_frame:
            problems.append(f"frame {key} is in the stream twice")
        by_frame[key] = c
    missing = [k for k in frames if k not in by_frame]
    if missing:
        problems.append(
            f"{len(missing)} of {len(frames)} frames are not in the stream: {missing[:3]}"
        )
    extra = [k for k in by_frame if k not in frames]
    if extra:
        problems.append(f"the stream has frames that were not written: {extra[:3]}")
    cells, errors = [], []
    distances: dict[str, list[float]] = {}
    indexed = 0
    for key, truth in frames.items():
        c = by_frame.get(key)
        if c is None:
            continue
        want = np.stack([truth["fs"] + 0.5, truth["ss"] + 0.5], axis=1)
        got = c.peaks
        if got.shape != want.shape or not np.allclose(
            _sorted(got), _sorted(want), atol=0.006, rtol=0
        ):
            problems.append(
                f"frame {key}: CrystFEL read {len(got)} peaks, not the {len(want)} written "
                f"at position + 0.5 px"
            )
        if not c.crystals:
            continue
        indexed += 1
        xtal = c.crystals[0]
        cells.append(xtal.cell)
        errors.append(orientation_error_deg(xtal.reciprocal, truth["reciprocal"], cell))
        if len(xtal.reflections):
            pos = xtal.reflections[:, 3:5]
            for (fs, ss), panel in zip(got, c.peak_panels, strict=True):
                d = np.hypot(pos[:, 0] - fs, pos[:, 1] - ss)
                distances.setdefault(panel, []).append(float(d.min()))
    hits = len(frames)
    if hits == 0 or indexed < min_indexed * hits:
        problems.append(f"{indexed} of {hits} hits indexed, fewer than {min_indexed:.0%}")
    median = np.median(np.array(cells), axis=0) if cells else None
    want_cell = np.array([cell.a, cell.b, cell.c, cell.alpha, cell.beta, cell.gamma])
    if median is not None:
        rel = np.abs(median[:3] / want_cell[:3] - 1)
        ang = np.abs(median[3:] - want_cell[3:])
        if rel.max() > cell_rtol or ang.max() > angle_tol_deg:
            problems.append(
                f"median cell {np.round(median, 3).tolist()} is not {want_cell.tolist()}"
            )
    bad = [e for e in errors if not e <= orientation_tol_deg]
    if bad:
        problems.append(
            f"{len(bad)} of {len(errors)} orientations differ from the truth by more than "
            f"{orientation_tol_deg} deg (worst {max(bad):.2f})"
        )
    offsets = {p: float(np.median(d)) for p, d in distances.items() if len(d) >= 3}
    off = {p: round(v, 2) for p, v in offsets.items() if not v < panel_tol_px}
    if off:
        problems.append(f"predicted reflections are off the spots on panels {off} (px)")
    return Verdict(hits, hits, indexed, median, errors, offsets, problems)


def _sorted(points: np.ndarray) -> np.ndarray:
    return points[np.lexsort((points[:, 0], points[:, 1]))] if len(points) else points
