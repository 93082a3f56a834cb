"""Run statistics (runstats.py) exactly on known peaks, and end to end: a real run's
status.json and report, and the PNGs ``python -m cxi_async plot`` draws from that report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cxi_async.__main__ import main as cli_main
from cxi_async.core import runstats
from cxi_async.core.detector import LabDetector
from cxi_async.core.geometry import load_layout
from cxi_async.core.runstats import PeakStats, decode_grid, hit_rate_over_time, merge
from cxi_async.pipeline import Pipeline
from cxi_async.replay.producer import truth_for

DATA = Path(__file__).parent / "data"
MODULE = DATA / "epix10k2m-lab-module.geom"
ENERGY = 9537.25  # eV: lambda = 1.3 A


def stats_for(geom: Path = MODULE) -> PeakStats:
    return PeakStats.for_run(str(geom), load_layout(geom))


def test_resolution_peakogram_and_powder_of_known_peaks() -> None:
    """A peak at lab (x, y) in pixels of 100 um, clen 0.1 m: 1/d = 2 sin(theta) / lambda."""
    detector = LabDetector.load(MODULE)
    stats = stats_for()
    k = detector.names.index("p5")  # quadrant 1: fs along +y, ss along -x
    ss = detector.min_ss[k] + np.array([10.0, 100.0, 200.0, 300.0, 340.0, 20.0])
    fs = detector.min_fs[k] + np.array([5.0, 50.0, 150.0, 250.0, 380.0, 200.0])
    intensity = np.array([5.0, 50.0, 500.0, 5000.0, 50000.0, 0.0])
    d = stats.add_frame(ss, fs, intensity, ENERGY)
    # By hand, from the corner and the vectors.
    x = detector.corner[k, 0] - (ss - detector.min_ss[k] + 0.5)
    y = detector.corner[k, 1] + (fs + 0.5)
    two_theta = np.arctan(np.hypot(x, y) / 1000.0)
    inv_d = 2 * np.sin(two_theta / 2) / (12398.4193 / ENERGY)
    np.testing.assert_allclose(detector.inverse_d(ss, fs, 12398.4193 / ENERGY), inv_d)
    assert d == pytest.approx(1 / np.quantile(inv_d, 0.95))
    got = np.argwhere(stats.peakogram)
    want_x = (inv_d * runstats.INV_D_BINS).astype(int)
    lo, hi = runstats.LOG_I_RANGE
    log_i = np.log10(np.maximum(intensity, 10**lo))
    want_y = ((log_i - lo) / (hi - lo) * runstats.LOG_I_BINS).astype(int)
    assert sorted(map(tuple, got)) == sorted(zip(want_x, want_y, strict=True))
    bins = np.argwhere(stats.powder)
    want = sorted(
        zip(
            ((y - stats.y0) // runstats.POWDER_BIN_PX).astype(int),
            ((x - stats.x0) // runstats.POWDER_BIN_PX).astype(int),
            strict=True,
        )
    )
    assert sorted(map(tuple, bins)) == want
    assert stats.powder.sum() == 6 and stats.peaks_per_frame[6] == 1


def test_frames_without_energy_or_peaks_and_the_placeholder_layout() -> None:
    stats = stats_for()
    assert stats.add_frame(np.zeros(0), np.zeros(0), np.zeros(0), ENERGY) is None
    assert stats.add_frame(np.array([5.0] * 6), np.array([5.0] * 6), np.ones(6), None) is None
    assert stats.peakogram.sum() == 0 and stats.powder.sum() == 6
    placeholder = PeakStats.for_run(None, load_layout(MODULE))
    assert not placeholder.resolution
    assert (
        placeholder.add_frame(np.array([5.0] * 6), np.array([5.0] * 6), np.ones(6), ENERGY) is None
    )
    assert placeholder.to_dict()["peakogram"] is None


def test_merge_adds_writers_and_report_grids_round_trip() -> None:
    a, b = stats_for(), stats_for()
    rng = np.random.default_rng(0)
    for s, n in ((a, 7), (b, 12), (b, 7)):
        ss = rng.uniform(0, 5631, n)
        fs = rng.uniform(0, 383, n)
        s.add_frame(ss, fs, rng.uniform(1, 1e4, n), ENERGY)
    merged = merge([a.to_dict(), None, b.to_dict()])
    assert merged["frames"] == 3 and merged["peaks"] == 26
    assert merged["peaks_per_frame"][7] == 2 and merged["peaks_per_frame"][12] == 1
    np.testing.assert_array_equal(merged["powder"], a.powder + b.powder)
    np.testing.assert_array_equal(merged["peakogram"], a.peakogram + b.peakogram)
    writers = [{"index": 0, "peak_stats": a.to_dict()}, {"index": 1, "peak_stats": b.to_dict()}]
    section = runstats.report_section(writers, [])
    np.testing.assert_array_equal(decode_grid(section["powder"]["counts"]), merged["powder"])
    np.testing.assert_array_equal(decode_grid(section["peakogram"]["counts"]), merged["peakogram"])
    assert runstats.strip_peak_stats({"writers": writers})["writers"] == [
        {"index": 0},
        {"index": 1},
    ]
    live_only = merge([a.to_dict(histograms=False), b.to_dict()])  # a writer still running
    assert live_only["frames"] == 3 and "powder" not in live_only
    assert "powder" not in runstats.report_section([{"peak_stats": live_only}], [])
    live = runstats.live_fields(writers)
    assert live["peaks_per_frame_mean"] == pytest.approx(26 / 3)
    assert live["peaks_per_frame_recent_median"] == 9.5  # writer b wrote last: 12 and 7
    assert live["last_frame"]["peaks"] == 7


def test_hit_rate_over_time_between_samples() -> None:
    samples = [
        {"t": 0.0, "events_written": 0, "events_filtered": 0},
        {"t": 2.0, "events_written": 6, "events_filtered": 2},
        {"t": 4.0, "events_written": 6, "events_filtered": 2},
        {"t": 6.0, "events_written": 7, "events_filtered": 5},
    ]
    assert hit_rate_over_time(samples) == {"t": [1.0, 3.0, 5.0], "hit_rate": [0.75, None, 0.25]}


def test_hit_rate_over_time_counts_hits_when_judged_not_when_written() -> None:
    """A batch of 4 hits and 1 miss judged in (0, 2] s is written in (2, 4] s: its hits
    count in the first interval, with its miss, and the second is not a false 0 %."""
    samples = [
        {"t": 0.0, "events_hits": 0, "events_written": 0, "events_filtered": 0},
        {"t": 2.0, "events_hits": 4, "events_written": 0, "events_filtered": 1},
        {"t": 4.0, "events_hits": 4, "events_written": 4, "events_filtered": 1},
        {"t": 6.0, "events_hits": 7, "events_written": 4, "events_filtered": 2},
    ]
    assert hit_rate_over_time(samples) == {"t": [1.0, 3.0, 5.0], "hit_rate": [0.8, None, 0.75]}


@pytest.mark.usefixtures("ray_session")
async def test_a_real_run_reports_and_plots(make_config, tmp_path) -> None:
    """Lattice stills through the rotated ePix10k2M: status.json and the report hold the
    numbers of what was written, and `plot` draws four PNGs from the report."""
    config = make_config(
        "replay.pattern=lattice",
        f"geometry.geom_file={MODULE}",
        "replay.num_panels=16",
        "replay.panel_shape=[352, 384]",
        "replay.padded_shape=[352, 384]",
        "replay.batch_size=4",
        "replay.num_batches=2",
        "replay.hit_fraction=0.75",
        "peak_finding.min_num_peak=10",
    )
    pipeline = await Pipeline.start(config)
    final = await pipeline.wait()
    out = pipeline.output_dir
    kept = [t for b in truth_for(config).values() for t in b.truth if t.kept]
    assert final["events_written"] == len(kept) > 0
    report_path = Path(final["report"])
    report = json.loads(report_path.read_text())
    section = report["crystallography"]
    counts = np.bincount([t.num_peaks for t in kept])
    np.testing.assert_array_equal(section["peaks_per_frame"], counts)
    total = sum(t.num_peaks for t in kept)
    assert section["peaks"] == total == decode_grid(section["powder"]["counts"]).sum()
    assert decode_grid(section["peakogram"]["counts"]).sum() == total
    assert all(1.3 < d < 3.0 for d in section["resolution_a_recent"])
    assert "peak_stats" not in report["stats"]["writers"][0]
    status = json.loads((out / "status.json").read_text())
    assert status["peaks_per_frame_mean"] == pytest.approx(total / len(kept))
    assert 1.3 < status["resolution_a_recent_median"] < 3.0
    assert cli_main(["plot", str(out), "-o", str(tmp_path / "png")]) == 0
    import matplotlib.image

    pngs = sorted((tmp_path / "png").glob("*.png"))
    names = [p.name.rsplit("_", 1)[-1] for p in pngs]
    assert {p.name.removeprefix(report_path.name.removesuffix("report.json")) for p in pngs} == {
        "hit_rate.png",
        "peaks_per_frame.png",
        "peakogram.png",
        "powder.png",
    }, names
    for png in pngs:
        image = matplotlib.image.imread(png)
        assert image.shape[0] > 300 and image.shape[1] > 500
        assert image[..., :3].std() > 0.05  # not a blank canvas
    # Every batch holds a hit, and an interval's events are whole batches (a finder judges a
    # batch at once): no interval with judged events is at 0 %, and the hits add up.
    assert all(any(t.kept for t in b.truth) for b in truth_for(config).values())
    rates = section["hit_rate_over_time"]["hit_rate"]
    assert any(r is not None for r in rates)
    assert all(r is None or 0 < r <= 1 for r in rates), rates
    assert report["samples"][-1]["events_hits"] == len(kept)
    assert report["final"]["hit_rate"] == pytest.approx(len(kept) / 8)


def test_plot_says_what_is_missing(tmp_path, capsys) -> None:
    assert cli_main(["plot", str(tmp_path)]) == 1
    assert "holds no *_report.json" in capsys.readouterr().err
