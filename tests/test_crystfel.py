"""The real indexamajig on the lattice replay, through rotated ePix10k2M geometries.

Runs wherever CrystFEL's ``indexamajig`` is on PATH or in ``../shared/tools/crystfel/bin``
(``.ci/run`` installs its libraries there), and is skipped, saying why, elsewhere. Each
geometry gets one pipeline run of lattice stills; indexamajig then reads the output with
the ``.geom`` and ``replay.cell`` written beside it, and the stream is judged against the
simulation's truth (``tests/crystfel.py``). The same judge must fail on a geometry with a
wrong ``clen`` or a shifted panel, so these tests can fail.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from cxi_async.pipeline import Pipeline
from cxi_async.replay.lattice import REPLAY_CELL_FILE, UnitCell
from cxi_async.replay.producer import truth_for
from tests.crystfel import ROOT, Verdict, find_indexamajig, judge, run_indexamajig

INDEXAMAJIG, WHY_NOT = find_indexamajig()
pytestmark = [
    pytest.mark.usefixtures("ray_session"),
    pytest.mark.skipif(INDEXAMAJIG is None, reason=WHY_NOT),
]

DATA = ROOT / "tests" / "data"
MUTATION_FRAMES = 3  # enough to see a broken geometry; an indexer that fails takes its time


def lattice_overrides(geom: Path) -> list[str]:
    """Full-size ePix10k2M lattice stills, 3 batches of 4 (about 10 hits)."""
    return [
        "replay.pattern=lattice",
        f"geometry.geom_file={geom}",
        "replay.num_panels=16",
        "replay.panel_shape=[352, 384]",
        "replay.padded_shape=[352, 384]",
        "replay.batch_size=4",
        "replay.num_batches=3",
        "replay.hit_fraction=0.85",
        "peak_finding.min_num_peak=10",
        "replay.seed=12",
    ]


def written_frames(config, out: Path) -> dict[tuple[str, str], dict]:
    """Every written frame by its events.lst name, with its peaks and true orientation."""
    truth = truth_for(config)
    frames = {}
    for path in sorted(out.glob("*.cxi")):
        with h5py.File(path, "r") as f:
            r = f["/entry_1/result_1"]
            n = r["nPeaks"][()]
            for i, (bid, ev) in enumerate(zip(r["batchId"][()], r["eventIndex"][()], strict=True)):
                batch = truth[bid.decode() if isinstance(bid, bytes) else bid]
                frames[(str(path.resolve()), f"//{i}")] = {
                    "fs": r["peakXPosRaw"][i, : n[i]].astype(np.float64),
                    "ss": r["peakYPosRaw"][i, : n[i]].astype(np.float64),
                    "reciprocal": batch.crystals[int(ev)].reciprocal,
                }
    return frames


async def index_run(make_config, geom: Path) -> tuple[object, Path, dict]:
    config = make_config(*lattice_overrides(geom))
    t0 = time.perf_counter()
    pipeline = await Pipeline.start(config)
    final = await pipeline.wait()
    print(f"pipeline: {final['events_seen']} events in {time.perf_counter() - t0:.1f} s")
    out = pipeline.output_dir
    frames = written_frames(config, out)
    assert len(frames) == final["events_written"] >= 8
    return config, out, frames


def index(
    out: Path, geom: Path, frames: dict, cell: UnitCell, name: str, extra: tuple[str, ...] = ()
) -> Verdict:
    """indexamajig on ``frames`` (all of events.lst, or the first few) through ``geom``."""
    events = out / "events.lst"
    lines = events.read_text().splitlines()
    if len(frames) < len(lines):  # a short list of its own: failing to index is slow
        events = out / f"{name}.lst"
        events.write_text("".join(f"{line}\n" for line in lines[: len(frames)]))
    t0 = time.perf_counter()
    chunks, stderr = run_indexamajig(
        INDEXAMAJIG, events, geom, out / REPLAY_CELL_FILE, out / f"{name}.stream", extra
    )
    print(f"indexamajig {name}: {len(frames)} frames in {time.perf_counter() - t0:.1f} s")
    verdict = judge(chunks, frames, cell)
    if stderr:
        verdict.problems.append(f"indexamajig stderr: {stderr[:5]}")
    return verdict


def mutate(geom: Path, out: Path, name: str, pattern: str, change) -> Path:
    """A copy of the written geometry with the lines matching ``pattern`` changed."""
    lines = []
    changed = 0
    for line in geom.read_text().splitlines():
        m = re.match(pattern, line)
        if m:
            line = change(m)
            changed += 1
        lines.append(line)
    assert changed, f"{pattern} matches no line of {geom}"
    path = out / name
    path.write_text("\n".join(lines) + "\n")
    return path


def report(name: str, v: Verdict) -> None:
    print(
        f"{name}: {v.indexed}/{v.hits} indexed, median cell "
        f"{None if v.median_cell is None else np.round(v.median_cell, 3).tolist()}, "
        f"orientation error max {max(v.orientation_errors_deg, default=float('nan')):.3f} deg"
    )


@pytest.mark.parametrize(
    ("geom_name", "mutation"),
    [("epix10k2m-lab-module.geom", "clen"), ("epix10k2m-lab-asic.geom", "panel")],
)
async def test_indexamajig_indexes_the_lattice_replay(make_config, geom_name, mutation):
    """All frames read with their exact peaks, >= 90 % indexed, cell within 1 % / 1 deg,
    orientations within 1 deg of the truth; a corrupted geometry is caught."""
    config, out, frames = await index_run(make_config, DATA / geom_name)
    rp = config.replay
    cell = UnitCell.from_values(rp.cell, rp.lattice_type, rp.centering)
    assert (out / REPLAY_CELL_FILE).read_text().startswith("CrystFEL unit cell file")
    geom = out / "peaknet.geom"
    verdict = index(out, geom, frames, cell, "good")
    report(geom_name, verdict)
    assert verdict.problems == []
    assert verdict.indexed_fraction >= 0.9
    shifted_panels = {f"p1a{i}" for i in range(4)} if mutation == "panel" else set()
    assert shifted_panels <= set(verdict.panel_offsets_px)  # the shift below can show there

    if mutation == "clen":  # 5 % longer camera: every spot maps to the wrong q
        bad = mutate(geom, out, "clen.geom", r"^clen = (\S+)$", lambda m: "clen = 0.105")
    else:  # the four ASICs of module p1 moved by 4 pixels in x
        bad = mutate(
            geom,
            out,
            "shifted.geom",
            r"^(p1a\d)/corner_x = (\S+)$",
            lambda m: f"{m[1]}/corner_x = {float(m[2]) + 4:.2f}",
        )
    first = sorted(frames, key=lambda k: (k[0], int(k[1][2:])))[:MUTATION_FRAMES]
    # No retries: asdf retrying on a broken geometry costs ~10 s per frame, and proves nothing.
    broken = index(out, bad, {k: frames[k] for k in first}, cell, "mutated", ("--no-retry",))
    report(f"{geom_name}, {mutation} corrupted", broken)
    print("\n".join(broken.problems))
    assert broken.problems, f"indexing through {bad.name} was judged correct"
    # Caught for the geometry's sake, not for some other noise (stderr, unread frames).
    if mutation == "clen":
        assert any(
            k in p for p in broken.problems for k in ("hits indexed", "median cell", "orientat")
        ), broken.problems
    else:
        off = {p for p, v in broken.panel_offsets_px.items() if not v < 1.0}
        assert off & shifted_panels or broken.indexed < MUTATION_FRAMES, broken.problems
