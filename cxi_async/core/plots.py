"""``python -m cxi_async plot <report.json | output dir>``: the pictures of a run, as PNGs.

What a crystallographer looks at to judge a run (OM shows the same live): the hit rate over
time, the peaks per frame, the peakogram (peak intensity against resolution: the strong
low-resolution spots, the fall-off, ice rings as vertical stripes), and the virtual powder
pattern (every kept peak on the assembled lab-frame detector: the beam centre sits in the
middle of the rings; a shifted panel breaks them). They come from the report's
``crystallography`` section (``runstats.report_section``). matplotlib is the optional extra
``plot`` (``pip install -e '.[plot]'``).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cxi_async.core.runstats import decode_grid

__all__ = ["find_report", "main", "plot_report"]


class PlotError(Exception):
    """No report where one was asked for, or a report without what a plot needs."""


def find_report(target: str | Path) -> Path:
    """The report itself, or the newest ``*_report.json`` in a directory (or its runs)."""
    path = Path(target)
    if path.is_file():
        return path
    if not path.is_dir():
        raise PlotError(f"{path} is neither a report (.json) nor an output directory")
    found = sorted(
        [*path.glob("*_report.json"), *path.glob("*/*_report.json")],
        key=lambda p: p.stat().st_mtime,
    )
    if not found:
        raise PlotError(f"{path} holds no *_report.json (it is written when a run stops)")
    return found[-1]


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise PlotError(
            "plotting needs matplotlib: pip install -e '.[plot]' (or pip install matplotlib)"
        ) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_report(report_path: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    """Draw every picture the report has data for; returns the PNG paths written."""
    report_path = Path(report_path)
    report = json.loads(report_path.read_text())
    section = report.get("crystallography")
    if not section:
        raise PlotError(f"{report_path} has no crystallography section (an older report?)")
    plt = _pyplot()
    out = Path(out_dir) if out_dir is not None else report_path.parent
    out.mkdir(parents=True, exist_ok=True)
    stem = report_path.name.removesuffix("_report.json")
    label = f"run {report.get('run_label', '?')}"
    final = report.get("final") or {}
    config = report.get("config") or {}
    written = []
    for name, draw in (
        ("hit_rate", _hit_rate),
        ("peaks_per_frame", _peaks_per_frame),
        ("peakogram", _peakogram),
        ("powder", _powder),
    ):
        fig = draw(plt, section, label, final, config)
        if fig is None:
            continue
        path = out / f"{stem}_{name}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    fig = _pool(plt, report.get("samples") or [], label, config)
    if fig is not None:
        path = out / f"{stem}_pool.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def _pool(plt: Any, samples: list[dict], label: str, config: dict) -> Any:
    """Finders taking work and Q2's depth over time: how an adaptive pool followed the load."""
    if (config.get("processing") or {}).get("max_finders") is None:
        return None  # a fixed pool: nothing to see
    points = [s for s in samples if s.get("pool_size") is not None]
    if not points:
        return None
    t = [s["t"] for s in points]
    fig, ax = plt.subplots(figsize=(7, 3.5), layout="constrained")
    ax.step(t, [s["pool_size"] for s in points], where="post", color="tab:green", label="finders")
    ax.set_xlabel("time since start (s)")
    ax.set_ylabel("finders")
    depth = ax.twinx()
    depth.plot(t, [s.get("q2_depth") or 0 for s in points], color="tab:red", lw=1, label="Q2")
    depth.set_ylabel("Q2 depth (batches)")
    ax.set_title(f"Adaptive finder pool, {label}")
    ax.legend(loc="upper left")
    depth.legend(loc="upper right")
    return fig


def _hit_rate(plt: Any, section: dict, label: str, final: dict, config: dict) -> Any:
    series = section.get("hit_rate_over_time") or {}
    t = [
        a
        for a, r in zip(series.get("t", []), series.get("hit_rate", []), strict=True)
        if r is not None
    ]
    r = [100 * v for v in series.get("hit_rate", []) if v is not None]
    fig, ax = plt.subplots(figsize=(7, 3.5), layout="constrained")
    ax.plot(t, r, "o-", ms=3, color="tab:blue", label="between samples")
    overall = final.get("hit_rate")
    if overall is not None:
        ax.axhline(100 * overall, ls="--", color="grey", label=f"whole run {100 * overall:.1f} %")
    ax.set_xlabel("time since start (s)")
    ax.set_ylabel("hit rate (%)")
    ax.set_ylim(0, 105)
    min_peaks = (config.get("peak_finding") or {}).get("min_num_peak")
    ax.set_title(f"Hit rate over time, {label} (hit: >= {min_peaks} peaks)")
    ax.legend(loc="lower right")
    return fig


def _peaks_per_frame(plt: Any, section: dict, label: str, final: dict, config: dict) -> Any:
    counts = np.asarray(section.get("peaks_per_frame") or [], dtype=np.int64)
    if not counts.sum():
        return None
    n = np.arange(len(counts))
    width = max(1, len(counts) // 60)
    binned = np.add.reduceat(counts, np.arange(0, len(counts), width))
    fig, ax = plt.subplots(figsize=(7, 3.5), layout="constrained")
    ax.bar(n[::width], binned, width=width, align="edge", color="tab:green")
    mean = float((n * counts).sum() / counts.sum())
    ax.axvline(mean, color="k", ls="--", label=f"mean {mean:.0f}")
    min_peaks = (config.get("peak_finding") or {}).get("min_num_peak")
    if min_peaks is not None:
        ax.axvline(min_peaks, color="tab:red", ls=":", label=f"min_num_peak {min_peaks}")
    ax.set_xlabel(f"peaks per kept frame (bins of {width})")
    ax.set_ylabel("frames")
    ax.set_title(f"Peaks per frame, {label}: {int(counts.sum())} kept frames")
    ax.legend()
    return fig


def _peakogram(plt: Any, section: dict, label: str, final: dict, config: dict) -> Any:
    gram = section.get("peakogram")
    if not gram:
        return None  # no real geometry: no resolution
    counts = decode_grid(gram["counts"]).astype(np.float64)
    if not counts.sum():
        return None
    lo, hi = gram["log10_intensity_range"]
    x = np.linspace(0, gram["inv_d_max"], counts.shape[0] + 1)
    y = np.linspace(lo, hi, counts.shape[1] + 1)
    fig, ax = plt.subplots(figsize=(7, 4.5), layout="constrained")
    mesh = ax.pcolormesh(x, y, np.ma.masked_equal(counts.T, 0), cmap="viridis", norm=_norm(counts))
    fig.colorbar(mesh, ax=ax, label="peaks per bin")
    used = np.nonzero(counts.sum(axis=1))[0]
    ax.set_xlim(0, min(gram["inv_d_max"], x[used[-1] + 1] * 1.05))
    ax.set_xlabel("resolution 1/d (1/Å)")
    ax.set_ylabel("log10(peak total intensity)")
    top = ax.secondary_xaxis(
        "top", functions=(lambda s: 1 / np.maximum(s, 1e-3), lambda d: 1 / np.maximum(d, 1e-3))
    )
    top.set_xticks([10, 5, 3, 2, 1.5, 1.2])
    top.set_xlabel("d (Å)")
    ax.set_title(f"Peakogram, {label}")
    return fig


def _powder(plt: Any, section: dict, label: str, final: dict, config: dict) -> Any:
    powder = section.get("powder")
    if not powder:
        return None
    counts = decode_grid(powder["counts"]).astype(np.float64)
    if not counts.sum():
        return None
    b = powder["bin_px"]
    x0, y0 = powder["origin_px"]
    ny, nx = counts.shape
    fig, ax = plt.subplots(figsize=(6.5, 6), layout="constrained")
    image = ax.imshow(
        np.ma.masked_equal(counts, 0),
        origin="lower",
        extent=(x0, x0 + nx * b, y0, y0 + ny * b),
        cmap="inferno",
        norm=_norm(counts),
        interpolation="nearest",
    )
    ax.set_facecolor("black")
    fig.colorbar(image, ax=ax, shrink=0.8, label="peaks per bin")
    ax.plot(0, 0, "+", color="cyan", ms=14, mew=1.5, label="beam (lab x = y = 0)")
    ax.set_xlabel("lab x (pixels)")
    ax.set_ylabel("lab y (pixels)")
    layout = "" if powder.get("real_geometry") else " (placeholder layout: no geometry file)"
    ax.set_title(f"Virtual powder pattern, {label}{layout}\n{int(counts.sum())} peaks, {b}-px bins")
    ax.legend(loc="upper right", fontsize=8)
    return fig


def _norm(counts: np.ndarray) -> Any:
    """Log colours that show a bin with one peak (not the colour of an empty bin)."""
    from matplotlib.colors import LogNorm

    return LogNorm(vmin=0.5, vmax=max(2.0, float(counts.max())))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m cxi_async plot",
        description="Draw a run's hit rate, peaks per frame, peakogram and virtual powder "
        "pattern as PNGs (next to the report unless -o is given).",
    )
    parser.add_argument("target", help="a *_report.json, or an output directory")
    parser.add_argument("-o", "--out-dir", help="directory for the PNGs")
    args = parser.parse_args(argv)
    try:
        report = find_report(args.target)
        paths = plot_report(report, args.out_dir)
    except (PlotError, OSError, ValueError) as exc:
        print(f"cxi_async plot: {exc}", file=sys.stderr)
        return 1
    print(f"{report}:")
    for path in paths:
        print(f"  {path}")
    return 0
