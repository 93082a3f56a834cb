"""Lattice stills: the spots are where the reflections meet the detector, and exactly what
peak finding recovers; the lab model inverts; orientations compare up to symmetry."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from cxi_async.config import ConfigError, load_config
from cxi_async.core.detector import LabDetector
from cxi_async.replay.lattice import (
    UnitCell,
    cell_file_text,
    orientation_error_deg,
    random_rotation,
    write_cell_file,
)
from cxi_async.replay.synthetic import HC_EV_ANGSTROM, SyntheticSpec, SyntheticSpecError, make_batch
from tests.test_synthetic import check_truth_against_labelling

DATA = Path(__file__).parent / "data"
ASIC = DATA / "epix10k2m-lab-asic.geom"
MODULE = DATA / "epix10k2m-lab-module.geom"

SPEC = SyntheticSpec(
    pattern="lattice",
    geom_file=str(ASIC),
    batch_size=3,
    padded_shape=(360, 392),  # some padding, so the decoys there are exercised too
    hit_fraction=1.0,
    seed=5,
)


@pytest.fixture(scope="module")
def batch():
    return make_batch(SPEC, 0)


def axis_rotation(axis: np.ndarray, degrees: float) -> np.ndarray:
    axis = axis / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    a = math.radians(degrees)
    return np.eye(3) + math.sin(a) * k + (1 - math.cos(a)) * k @ k


def test_spots_are_exactly_what_peak_finding_recovers(batch) -> None:
    check_truth_against_labelling(batch)
    assert all(t.kept and t.num_peaks > 60 for t in batch.truth)


def test_each_spot_is_its_reflection_on_the_ewald_sphere(batch) -> None:
    """Reflection hkl at the event's wavelength meets the detector at the spot (< 0.5 px)."""
    cell = UnitCell()
    detector = LabDetector.load(ASIC)
    for t, xtal in zip(batch.truth, batch.crystals, strict=True):
        wavelength = HC_EV_ANGSTROM / t.photon_energy_ev
        assert xtal.wavelength_a == pytest.approx(wavelength, rel=1e-12)
        q = xtal.hkl @ xtal.reciprocal
        np.testing.assert_allclose(xtal.reciprocal, cell.reciprocal_basis() @ xtal.rotation.T)
        excitation = np.linalg.norm(q + np.array([0, 0, 1 / wavelength]), axis=1) - 1 / wavelength
        assert np.abs(excitation).max() < 4e-4
        # The predicted position has the reflection's resolution, and points along k_out.
        inv_d = detector.inverse_d(xtal.predicted_ss, xtal.predicted_fs, wavelength)
        np.testing.assert_allclose(inv_d, np.linalg.norm(q, axis=1), rtol=2e-3)
        xyz = detector.lab_xyz(xtal.predicted_ss, xtal.predicted_fs)
        kout = q + np.array([0, 0, 1 / wavelength])
        cos = np.einsum("ij,ij->i", xyz, kout) / (
            np.linalg.norm(xyz, axis=1) * np.linalg.norm(kout, axis=1)
        )
        assert np.degrees(np.arccos(np.minimum(cos, 1))).max() < 0.01
        # What is written (the centroid) is within half a pixel of the prediction.
        assert np.abs(xtal.slab_ss - xtal.predicted_ss).max() <= 0.5
        assert np.abs(xtal.slab_fs - xtal.predicted_fs).max() <= 0.5
        ss = t.panel * SPEC.panel_shape[0] + t.row
        np.testing.assert_allclose(xtal.slab_ss, ss)
        np.testing.assert_allclose(xtal.slab_fs, t.col)


def test_project_inverts_lab_xyz_on_rotated_asics() -> None:
    detector = LabDetector.load(ASIC)
    rng = np.random.default_rng(1)
    p = rng.integers(0, detector.num_panels, 500)
    ss = rng.uniform(detector.min_ss[p] - 0.49, detector.max_ss[p] + 0.49)
    fs = rng.uniform(detector.min_fs[p] - 0.49, detector.max_fs[p] + 0.49)
    xyz = detector.lab_xyz(ss, fs)
    panel, ss2, fs2 = detector.project(xyz)
    np.testing.assert_array_equal(panel, p)
    np.testing.assert_allclose(ss2, ss, atol=1e-9)
    np.testing.assert_allclose(fs2, fs, atol=1e-9)
    # Between panels (the hole at the beam) nothing is hit.
    assert detector.project(np.array([[0.0, 0.0, 1.0]]))[0][0] == -1


def test_quadrants_are_turned_like_the_real_detector() -> None:
    """Pixel (0, 0) of module p4 (quadrant 1): its fs runs along +y, its ss along -x."""
    detector = LabDetector.load(MODULE)
    k = detector.names.index("p4")
    np.testing.assert_allclose(detector.fs_vec[k], [0, 1, 0], atol=1e-9)
    np.testing.assert_allclose(detector.ss_vec[k], [-1, 0, 0], atol=1e-9)
    xyz = detector.lab_xyz(np.array([detector.min_ss[k]]), np.array([0.0]))[0]
    corner = detector.corner[k]
    np.testing.assert_allclose(xyz * 10000, corner + 0.5 * np.array([0, 1, 0]) - [0.5, 0, 0])
    assert xyz[2] == pytest.approx(0.1)


def test_cell_file_is_replaced_whole(tmp_path: Path) -> None:
    path = tmp_path / "replay.cell"
    path.write_text("an older cell\n")
    assert write_cell_file(path, UnitCell()) == path
    assert path.read_text() == cell_file_text(UnitCell())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["replay.cell"]  # no temporary left


def test_orientation_error_ignores_lattice_symmetry_only() -> None:
    cell = UnitCell()
    rng = np.random.default_rng(2)
    truth = (random_rotation(rng) @ cell.reciprocal_basis().T).T
    swap = np.array([[0, 1, 0], [-1, 0, 0], [0, 0, 1]])  # a* -> b*, b* -> -a*: 4-fold about c
    assert orientation_error_deg(swap @ truth, truth, cell) < 1e-6
    tilt = axis_rotation(np.array([1.0, 2.0, 0.5]), 1.5)
    assert orientation_error_deg(truth @ tilt.T, truth, cell) == pytest.approx(1.5, abs=1e-6)
    # An orthorhombic cell of the same size has no 4-fold: the swap is a real 90 deg turn.
    ortho = UnitCell(79.1, 80.5, 37.9, lattice_type="orthorhombic")
    truth = (random_rotation(rng) @ ortho.reciprocal_basis().T).T
    assert orientation_error_deg(swap @ truth, truth, ortho) > 80


def test_cell_file_is_what_crystfel_reads() -> None:
    assert cell_file_text(UnitCell()) == (
        "CrystFEL unit cell file version 1.0\n\nlattice_type = tetragonal\ncenturing = P\n"
        "unique_axis = c\n\na = 79.1 A\nb = 79.1 A\nc = 37.9 A\nal = 90 deg\nbe = 90 deg\n"
        "ga = 90 deg\n"
    ).replace("centuring", "centering")


def test_same_seed_same_crystal_other_seed_other_orientation(batch) -> None:
    again = make_batch(SPEC, 0)
    for a, b in zip(batch.crystals, again.crystals, strict=True):
        np.testing.assert_array_equal(a.rotation, b.rotation)
        np.testing.assert_array_equal(a.hkl, b.hkl)
    np.testing.assert_array_equal(batch.logits, again.logits)
    other = make_batch(SyntheticSpec(**{**SPEC.__dict__, "seed": 6, "batch_size": 1}), 0)
    assert (
        orientation_error_deg(
            other.crystals[0].reciprocal, batch.crystals[0].reciprocal, UnitCell()
        )
        > 1.0
    )


def test_non_hits_have_fewer_spots_than_min_num_peak() -> None:
    spec = SyntheticSpec(
        pattern="lattice", batch_size=4, hit_fraction=0.0, min_num_peak=10, seed=1
    )  # no geometry: the placeholder layout the run writes
    truth = make_batch(spec, 0).truth
    assert all(t.num_peaks < 10 and not t.kept for t in truth)


def test_pattern_and_cell_are_validated(tmp_path) -> None:
    with pytest.raises(SyntheticSpecError, match="pattern"):
        SyntheticSpec(pattern="powder")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"replay\.pattern"):
        load_config(None, ["replay.pattern=powder"])
    with pytest.raises(ConfigError, match=r"replay\.cell"):
        load_config(None, ["replay.cell=[79.1, 79.1, 37.9, 90, 90]"])
    cfg = load_config(None, ["replay.pattern=lattice", "replay.centering=I"])
    assert cfg.replay.pattern == "lattice" and cfg.replay.centering == "I"
