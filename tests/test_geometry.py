"""CrystFEL geometry -> slab layout: loading, checks, coordinate mapping, assembly, slab .geom."""

from __future__ import annotations

import hashlib
import io
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
from cfelpyutils.geometry import load_crystfel_geometry

from cxi_async.core.geometry import (
    SLAB_GEOM_KEYS,
    GeometryError,
    GeometryMismatch,
    SlabLayout,
    literal_photon_energy_ev,
    load_layout,
    normalise_units,
    write_slab_geom,
)

DATA = Path(__file__).parent / "data"
MODULE_GEOM = DATA / "epix10k2m-module.geom"
ASIC_GEOM = DATA / "epix10k2m-asic.geom"
C, H, W = 16, 352, 384
EPIX_NAMES = tuple(f"p{c}" for c in range(C))

HEADER = """\
; test geometry
adu_per_photon = 1
clen = 0.1
res = 10000
"""


def geom_text(rects: dict[str, tuple[int, int, int, int]], header: str = HEADER) -> str:
    """Geometry text with one block per panel; rects are (min_ss, max_ss, min_fs, max_fs)."""
    blocks = [header]
    for name, (s0, s1, f0, f1) in rects.items():
        blocks.append(
            f"{name}/min_ss = {s0}\n{name}/max_ss = {s1}\n{name}/min_fs = {f0}\n"
            f"{name}/max_fs = {f1}\n{name}/fs = +1.0x\n{name}/ss = +1.0y\n"
            f"{name}/corner_x = 0\n{name}/corner_y = 0\n"
        )
    return "\n".join(blocks)


def asic_rects(**changes: tuple[int, int, int, int]) -> dict[str, tuple[int, int, int, int]]:
    """The ePix10k2M ASIC rectangles (p<m>a<k>, 2 x 2 per module), with some replaced."""
    rects = {}
    for m in range(C):
        for k in range(4):
            s0 = m * H + (k // 2) * 176
            f0 = (k % 2) * 192
            rects[f"p{m}a{k}"] = (s0, s0 + 175, f0, f0 + 191)
    rects.update(changes)
    return rects


def split_blocks(text: str) -> tuple[list[str], dict[str, str]]:
    """Header blocks and panel blocks (keyed by panel name) of a blank-line separated .geom."""
    header, panels = [], {}
    for block in text.strip().split("\n\n"):
        first = block.strip().splitlines()[0]
        if "/" in first.split("=")[0]:
            panels[first.split("/")[0]] = block
        else:
            header.append(block)
    return header, panels


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def cfel_layout_keys(path: Path) -> dict[str, str]:
    """Global key = value lines of a geometry file (comments stripped), last one wins."""
    keys = {}
    for line in path.read_text().splitlines():
        line = line.split(";")[0].strip()
        if "=" in line and "/" not in line.split("=")[0]:
            key, value = (t.strip() for t in line.split("=", 1))
            keys[key] = value
    return keys


# -- loading --------------------------------------------------------------------------------


def test_module_and_asic_geometries_give_the_same_layout():
    module = load_layout(MODULE_GEOM)
    asic = load_layout(ASIC_GEOM)
    for layout in (module, asic):
        assert layout.panel_names == EPIX_NAMES
        np.testing.assert_array_equal(layout.min_ss, np.arange(C) * H)
        np.testing.assert_array_equal(layout.min_fs, np.zeros(C))
        assert layout.min_ss.dtype == np.int64 and layout.min_fs.dtype == np.int64
        assert layout.panel_shape == (H, W)
        assert layout.slab_shape == (C * H, W)
        assert not layout.has_gaps
    assert module.same_slab(asic)
    assert module != asic  # different source files
    assert asic.geom_file == str(ASIC_GEOM)
    assert asic.geom_sha256 == hashlib.sha256(ASIC_GEOM.read_bytes()).hexdigest()


@pytest.mark.parametrize("source", [MODULE_GEOM, ASIC_GEOM])
def test_shuffled_panel_blocks_give_numeric_module_order(tmp_path, source):
    header, panels = split_blocks(source.read_text())
    names = list(panels)
    rng = np.random.default_rng(7)
    order = [names[i] for i in rng.permutation(len(names))]
    # Make sure text order (p10 < p2) would differ from numeric order.
    first_p10 = next(n for n in order if n.startswith("p10"))
    order.remove(first_p10)
    order.insert(0, first_p10)
    shuffled = write(tmp_path / "shuffled.geom", "\n\n".join(header + [panels[n] for n in order]))
    layout = load_layout(shuffled)
    assert layout.panel_names == EPIX_NAMES
    assert layout.same_slab(load_layout(source))


def test_other_naming_schemes(tmp_path):
    # panel<k>: one module per panel, numeric order, in a slab with gaps (fs offsets).
    rects = {f"panel{k}": (k * 10, k * 10 + 9, k, k + 19) for k in (11, 2, 0, 1, 10)}
    layout = load_layout(write(tmp_path / "panel.geom", geom_text(rects)))
    assert layout.panel_names == ("panel0", "panel1", "panel2", "panel10", "panel11")
    np.testing.assert_array_equal(layout.min_ss, [0, 10, 20, 100, 110])
    np.testing.assert_array_equal(layout.min_fs, [0, 1, 2, 10, 11])
    assert layout.panel_shape == (10, 20)
    assert layout.slab_shape == (120, 31)
    assert layout.has_gaps
    # q<k>a<j> (CSPAD-like): ASICs grouped into quadrants q0..q3, side by side along fs.
    rects = {
        f"q{q}a{a}": ((a // 2) * 5, (a // 2) * 5 + 4, q * 6 + (a % 2) * 3, q * 6 + (a % 2) * 3 + 2)
        for q in (3, 1, 0, 2)
        for a in range(4)
    }
    layout = load_layout(write(tmp_path / "quad.geom", geom_text(rects)))
    assert layout.panel_names == ("q0", "q1", "q2", "q3")
    np.testing.assert_array_equal(layout.min_fs, [0, 6, 12, 18])
    assert layout.panel_shape == (10, 6)
    assert layout.slab_shape == (10, 24)


# -- errors ---------------------------------------------------------------------------------


def test_mismatched_data_shape_names_both_shapes():
    layout = load_layout(MODULE_GEOM)
    layout.check(C, H, W)
    with pytest.raises(GeometryMismatch) as err:
        layout.check(8, 512, 512)
    msg = str(err.value)
    assert str(MODULE_GEOM) in msg
    assert "16 panels of 352 x 384" in msg
    assert "8 panels of 512 x 512" in msg
    with pytest.raises(GeometryMismatch, match="16 panels of 352 x 384 but the data has 16 panels"):
        layout.check(16, 352, 383)
    with pytest.raises(GeometryMismatch, match=r"stacked layout \(no geometry file\) has 4 panels"):
        SlabLayout.stacked(4, 8, 8).check(4, 8, 9)


@pytest.mark.parametrize(
    ("case", "changes", "pattern"),
    [
        ("gap", {"p3a1": (1056, 1231, 193, 384)}, r"ASICs of module p3 .* leave 352 pixels"),
        ("overlap", {"p3a3": (1231, 1406, 192, 383)}, r"ASICs p3a1 and p3a3 of module p3 overlap"),
        (
            "size",
            {"p3a1": (1056, 1231, 192, 381), "p3a3": (1232, 1407, 192, 381)},
            r"module p3 is 352 x 382 but module p0 is 352 x 384",
        ),
    ],
)
def test_asics_that_do_not_tile_name_the_module(tmp_path, case, changes, pattern):
    path = write(tmp_path / f"{case}.geom", geom_text(asic_rects(**changes)))
    with pytest.raises(GeometryError, match=pattern) as err:
        load_layout(path)
    assert str(path) in str(err.value)
    assert not isinstance(err.value, GeometryMismatch)


def test_overlapping_modules_are_refused(tmp_path):
    rects = {"p0": (0, 9, 0, 9), "p1": (5, 14, 0, 9)}
    path = write(tmp_path / "overlap.geom", geom_text(rects))
    with pytest.raises(GeometryError, match="panels p0 and p1 overlap"):
        load_layout(path)


def test_unusable_files_name_the_path(tmp_path):
    binary = tmp_path / "binary.geom"
    binary.write_bytes(bytes(range(256)))
    cases = {
        tmp_path / "missing.geom": "does not exist",
        tmp_path: "cannot read geometry file",
        binary: "not a text file",
        write(tmp_path / "notes.txt", "just some notes\nnothing = here\n"): "No panel descriptions",
        write(tmp_path / "badint.geom", geom_text({"p0": (0, 9, 0, 9)}).replace("= 9", "= x")): (
            "not a valid CrystFEL geometry"
        ),
        write(
            tmp_path / "fixed_dim.geom",
            geom_text({"p0": (0, 9, 0, 9)}, HEADER + "dim0 = %\ndim1 = 0\ndim2 = ss\ndim3 = fs\n"),
        ): "needs dim0 = %, dim1 = ss, dim2 = fs",
        write(
            tmp_path / "transposed.geom",
            geom_text({"p0": (0, 9, 0, 9)}, HEADER + "dim0 = %\ndim1 = fs\ndim2 = ss\n"),
        ): "needs dim0 = %, dim1 = ss, dim2 = fs",
    }
    for path, reason in cases.items():
        with pytest.raises(GeometryError) as err:
            load_layout(path)
        assert str(path) in str(err.value), err.value
        assert reason in str(err.value), err.value


# -- coordinates ----------------------------------------------------------------------------


def gapped_layout() -> SlabLayout:
    return SlabLayout(
        panel_names=("a", "b", "c", "d"),
        min_ss=np.array([0, 0, 5, 9]),
        min_fs=np.array([0, 6, 2, 9]),
        panel_shape=(3, 4),
        slab_shape=(12, 13),
    )


def test_to_slab_known_values():
    layout = load_layout(ASIC_GEOM)
    ss, fs = layout.to_slab(np.array([0, 3, 15]), np.array([0.0, 10.25, 351.5]), [0.0, 20.5, 383])
    np.testing.assert_array_equal(ss, [0.0, 1066.25, 5631.5])
    np.testing.assert_array_equal(fs, [0.0, 20.5, 383.0])
    assert ss.dtype == np.float64 and fs.dtype == np.float64
    with pytest.raises(ValueError, match=r"panel indices must be in 0\.\.15"):
        layout.to_slab(np.array([16]), [0.0], [0.0])
    with pytest.raises(ValueError, match=r"0\.\.15"):
        layout.to_slab(np.array([-1]), [0.0], [0.0])


@pytest.mark.parametrize(
    "layout", [load_layout(MODULE_GEOM), gapped_layout()], ids=["epix", "gaps"]
)
def test_to_slab_to_panel_round_trip(layout):
    rng = np.random.default_rng(1)
    n = 2000
    h, w = layout.panel_shape
    panel = rng.integers(0, layout.num_panels, n)
    row = rng.uniform(-0.5, h - 0.5, n)
    col = rng.uniform(-0.5, w - 0.5, n)
    ss, fs = layout.to_slab(panel, row, col)
    back_panel, back_row, back_col = layout.to_panel(ss, fs)
    np.testing.assert_array_equal(back_panel, panel)
    np.testing.assert_allclose(back_row, row, rtol=0, atol=1e-9)
    np.testing.assert_allclose(back_col, col, rtol=0, atol=1e-9)


def test_to_panel_outside_every_panel():
    with pytest.raises(ValueError, match=r"1 of 2 slab positions lie on no panel"):
        gapped_layout().to_panel([1.0, 4.0], [1.0, 1.0])  # slab row 4 is a gap


# -- assembly -------------------------------------------------------------------------------


def test_assemble_padded_read_only_input():
    layout = load_layout(ASIC_GEOM)
    batch, hp, wp = 2, 512, 512
    c, r, x = np.meshgrid(np.arange(C), np.arange(hp), np.arange(wp), indexing="ij")
    values = (c * 1_000_000 + r * 1000 + x).astype(np.float32)  # exact in float32
    values[:, H:, :] = -1  # padding must never reach the slab
    values[:, :, W:] = -1
    image = np.zeros((batch * C, 1, hp, wp), dtype=np.float32)
    image[C:, 0] = values
    image.setflags(write=False)
    out = np.full(layout.slab_shape, np.nan, dtype=np.float32)
    assert layout.assemble(image[C : 2 * C, 0], out) is out
    np.testing.assert_array_equal(out, values[:, :H, :W].reshape(C * H, W))
    assert out[1066, 20] == 3_000_000 + 10 * 1000 + 20  # panel 3, row 10, col 20


def test_assemble_zeroes_gaps_only():
    layout = gapped_layout()
    rng = np.random.default_rng(2)
    panels = rng.uniform(1, 2, (4, 5, 6))
    expected = np.zeros(layout.slab_shape)
    for c in range(4):
        s, f = layout.min_ss[c], layout.min_fs[c]
        expected[s : s + 3, f : f + 4] = panels[c, :3, :4]
    out = np.full(layout.slab_shape, 7.0)
    layout.assemble(panels, out)
    np.testing.assert_array_equal(out, expected)
    assert layout.has_gaps


def test_assemble_rejects_wrong_shapes():
    layout = gapped_layout()
    with pytest.raises(GeometryMismatch, match=r"panels of shape \(4, >=3, >=4\)"):
        layout.assemble(np.zeros((4, 3, 3)), np.zeros((12, 13)))
    with pytest.raises(GeometryMismatch, match=r"panels of shape"):
        layout.assemble(np.zeros((3, 3, 4)), np.zeros((12, 13)))
    with pytest.raises(GeometryMismatch, match=r"output slab of shape \(12, 13\)"):
        layout.assemble(np.zeros((4, 3, 4)), np.zeros((12, 12)))


# -- the layout object ----------------------------------------------------------------------


def test_stacked_layout():
    layout = SlabLayout.stacked(3, 5, 7)
    assert layout.panel_names == ("panel0", "panel1", "panel2")
    np.testing.assert_array_equal(layout.min_ss, [0, 5, 10])
    np.testing.assert_array_equal(layout.min_fs, [0, 0, 0])
    assert layout.panel_shape == (5, 7)
    assert layout.slab_shape == (15, 7)
    assert layout.geom_file is None and layout.geom_sha256 is None
    assert not layout.has_gaps
    layout.check(3, 5, 7)
    assert SlabLayout.stacked(C, H, W).same_slab(load_layout(MODULE_GEOM)) is False  # names
    with pytest.raises(GeometryError, match="positive"):
        SlabLayout.stacked(0, 5, 7)


def test_layout_is_immutable_and_picklable():
    layout = load_layout(ASIC_GEOM)
    with pytest.raises(ValueError, match="read-only"):
        layout.min_ss[0] = 5
    copy = pickle.loads(pickle.dumps(layout))
    assert copy == layout
    assert not copy.min_ss.flags.writeable
    assert hash(copy) == hash(layout)


def test_layout_validation():
    with pytest.raises(GeometryError, match="outside the 10 x 10 slab"):
        SlabLayout(("a",), np.array([8]), np.array([0]), (3, 3), (10, 10))
    with pytest.raises(GeometryError, match="panels a and b overlap"):
        SlabLayout(("a", "b"), np.array([0, 2]), np.array([0, 0]), (3, 3), (10, 10))


# -- the slab geometry written next to the CXI files ----------------------------------------


def assert_slab_keys(path: Path) -> None:
    """The required global keys are set before the first panel line and read by cfelpyutils."""
    lines = [ln.split(";")[0].strip() for ln in path.read_text().splitlines()]
    first_panel = next(i for i, ln in enumerate(lines) if "/" in ln.split("=")[0])
    head = lines[:first_panel]
    for key, value in SLAB_GEOM_KEYS.items():
        assert f"{key} = {value}" in head, key
    assert cfel_layout_keys(path) == cfel_layout_keys(path) | SLAB_GEOM_KEYS
    geometry = load_crystfel_geometry(str(path))
    assert geometry.beam["photon_energy_from"] == "/LCLS/photon_energy_eV"
    for panel in geometry.detector["panels"].values():
        assert panel["data"] == "/entry_1/data_1/data"
        assert panel["dim_structure"] == ["%", "ss", "fs"]


@pytest.mark.parametrize("source", [MODULE_GEOM, ASIC_GEOM])
def test_write_slab_geom_from_source(tmp_path, source):
    layout = load_layout(source)
    out = write_slab_geom(tmp_path / "slab.geom", layout, source)
    assert out == tmp_path / "slab.geom"
    assert load_layout(out).same_slab(layout)
    assert_slab_keys(out)
    text = out.read_text()
    for line in source.read_text().splitlines():  # nothing of the source was lost
        assert line in text
    assert layout.geom_sha256 in text
    assert [p.name for p in tmp_path.iterdir()] == ["slab.geom"]  # no temporary left


def test_write_slab_geom_replaces_conflicting_keys(tmp_path):
    rects = {"p1": (10, 19, 0, 9), "p0": (0, 9, 0, 9)}
    header = HEADER + "data = /data/data\nphoton_energy = 9500 ; eV\ndim0 = %\ndim1 = ss\n"
    header += "dim2 = fs\n"
    text = geom_text(rects, header)
    text = text.replace("p0/min_ss", "p0/dim0 = %\np0/data = /other\np0/min_ss")
    text += "\npeak_list_type = auto\n"  # a global after the panels would not apply to them
    source = write(tmp_path / "user.geom", text)
    layout = load_layout(source)
    out = write_slab_geom(tmp_path / "slab.geom", layout, source)
    assert load_layout(out).same_slab(layout)
    assert_slab_keys(out)
    written = out.read_text()
    assert "9500" not in "".join(ln.split(";")[0] for ln in written.splitlines())
    assert re.search(r"^; cxi_async replaced: photon_energy = 9500 ; eV$", written, re.M)
    assert re.search(r"^; cxi_async .*: p0/data = /other$", written, re.M)
    assert re.search(r"^; cxi_async .*: peak_list_type = auto$", written, re.M)
    assert "clen = 0.1" in written and "p1/corner_x = 0" in written


def test_constants_and_energy_alternatives_in_the_written_geom(tmp_path):
    rects = {"p0": (0, 9, 0, 9)}
    header = HEADER + "wavelength = 1.3 A\nelectron_voltage = 12 kV\ncoffset = 0.5\n"
    source = write(tmp_path / "user.geom", geom_text(rects, header))
    layout = load_layout(source)
    constants = {"coffset": 0.01, "adu_per_photon": 3, "beamline": "MFX"}
    out = write_slab_geom(tmp_path / "slab.geom", layout, source, constants)
    live = [ln.split(";")[0].strip() for ln in out.read_text().splitlines()]
    live = [ln for ln in live if ln]
    assert "coffset = 0.01" in live and "adu_per_photon = 3" in live
    assert not any(ln.startswith(("wavelength", "electron_voltage", "beamline")) for ln in live)
    assert "coffset = 0.5" not in live
    geometry = load_crystfel_geometry(str(out))
    assert geometry.beam["photon_energy_from"] == "/LCLS/photon_energy_eV"
    assert next(iter(geometry.detector["panels"].values()))["coffset"] == 0.01
    placeholder = write_slab_geom(tmp_path / "p.geom", SlabLayout.stacked(C, H, W), None, constants)
    assert "coffset = 0.01" in placeholder.read_text()


def test_write_slab_geom_without_source(tmp_path):
    layout = SlabLayout.stacked(C, H, W)
    out = write_slab_geom(tmp_path / "slab.geom", layout)
    back = load_layout(out)
    assert back.same_slab(layout)
    assert back.panel_names == tuple(f"panel{c}" for c in range(C))
    assert_slab_keys(out)
    text = out.read_text()
    assert "PLACEHOLDER" in text
    for key in ("clen", "res", "adu_per_photon"):
        assert key in cfel_layout_keys(out)
    # The placeholder lab layout is a grid: no two panels share a corner.
    panels = load_crystfel_geometry(str(out)).detector["panels"].values()
    assert len({(p["cnx"], p["cny"]) for p in panels}) == C
    # Overwriting is atomic and leaves no temporary behind.
    write_slab_geom(out, gapped_layout())
    assert load_layout(out).same_slab(gapped_layout())
    assert [p.name for p in tmp_path.iterdir()] == ["slab.geom"]


def test_write_slab_geom_refuses_a_source_of_another_layout(tmp_path):
    with pytest.raises(GeometryError, match=r"does not describe this slab layout"):
        write_slab_geom(tmp_path / "slab.geom", SlabLayout.stacked(8, H, W), MODULE_GEOM)
    assert not (tmp_path / "slab.geom").exists()


# -- units (CrystFEL 0.12 accepts them; cfelpyutils 2.2 does not) ---------------------------------

TWO_PANELS = {"p0": (0, 9, 0, 19), "p1": (10, 19, 0, 19)}


def unit_header(*lines: str) -> str:
    return "; units\nadu_per_photon = 1\nres = 10000\n" + "\n".join(lines) + "\n"


@pytest.mark.parametrize(
    ("lines", "energy"),
    [
        (["photon_energy = 9500 eV", "clen = 0.1 m"], 9500.0),
        (["photon_energy = 9.5 keV", "clen = 100 mm"], 9500.0),
        (["photon_energy = 9500", "clen = 0.1"], 9500.0),
        (["photon_energy = 12.4 keV ; comment", "clen = 100 mm ; from the logbook"], 12400.0),
        (["wavelength = 1.0 A", "clen = /LCLS/detector_1/EncoderValue mm"], 12398.4193),
        (["wavelength = 1e-10 m", "detector_shift_x = 1.5 mm", "coffset = 0.01 m"], 12398.4193),
        (["photon_energy = /LCLS/photon_energy_eV", "clen = 0.1"], None),
        (["photon_energy = /LCLS/photon_energy_keV keV", "clen = 0.1"], None),
        (["electron_voltage = 200 kV", "clen = 0.1"], None),
        (["clen = 0.1"], None),
        (["photon_energy = 9500 eV", "photon_energy = 7000 eV"], 7000.0),  # the last one wins
    ],
)
def test_geometries_with_units_load(tmp_path, lines, energy):
    path = write(tmp_path / "u.geom", geom_text(TWO_PANELS, unit_header(*lines)))
    layout = load_layout(path)
    assert layout.same_slab(load_layout(write(tmp_path / "plain.geom", geom_text(TWO_PANELS))))
    assert layout.photon_energy_ev == energy
    assert pickle.loads(pickle.dumps(layout)).photon_energy_ev == energy


def test_cfelpyutils_alone_fails_on_an_energy_unit():
    # Why normalise_units exists: if this starts passing, cfelpyutils learnt units.
    text = geom_text(TWO_PANELS, unit_header("photon_energy = 9500 eV"))
    with pytest.raises(ValueError):
        load_crystfel_geometry(io.StringIO(text))


def test_normalise_units_exact_values():
    text = "\n".join(
        [
            "photon_energy = 9.5 keV",
            "photon_energy = 9500 eV ; c",
            "clen = 100 mm",
            "clen = 0.1 m",
            "clen = 0.25",
            "clen = /LCLS/detector_1/EncoderValue mm",
            "p0/coffset = 0.01 m",
            "p0/corner_x = -12.5 px",
            "detector_shift_y = 2 mm",
            "; clen = 5 mm",
            "p0/min_fs = 0",
        ]
    )
    assert normalise_units(text).splitlines() == [
        "photon_energy = 9500.0",
        "photon_energy = 9500",
        "clen = 0.1",
        "clen = 0.1",
        "clen = 0.25",
        "clen = /LCLS/detector_1/EncoderValue",
        "p0/coffset = 0.01",
        "p0/corner_x = -12.5",
        "detector_shift_y = 0.002",
        "; clen = 5 mm",
        "p0/min_fs = 0",
    ]


def test_cfelpyutils_reads_the_normalised_values():
    text = geom_text(TWO_PANELS, unit_header("photon_energy = 9.5 keV", "clen = 100 mm"))
    parsed = load_crystfel_geometry(io.StringIO(normalise_units(text)))
    assert parsed.beam["photon_energy"] == 9500.0
    assert {p["clen"] for p in parsed.detector["panels"].values()} == {0.1}


@pytest.mark.parametrize(
    ("line", "accepted"),
    [
        ("photon_energy = 9500 ev", "eV or keV"),
        ("clen = 10 cm", "m or mm"),
        ("photon_energy = 9500 eV extra", "eV or keV"),
    ],
)
def test_a_unit_crystfel_refuses_names_the_line(tmp_path, line, accepted):
    path = write(tmp_path / "bad.geom", geom_text(TWO_PANELS, unit_header(line)))
    with pytest.raises(GeometryError) as info:
        load_layout(path)
    message = str(info.value)
    assert str(path) in message and line in message and accepted in message


@pytest.mark.parametrize(
    ("text", "energy"),
    [
        ("photon_energy = 9500", 9500.0),
        ("photon_energy = 9.5 keV", 9500.0),
        ("photon_energy = 0.5 keV", 500.0),
        ("  photon_energy=8000 eV", 8000.0),
        ("photon_energy = /LCLS/photon_energy_eV", None),
        ("photon_energy = 9500 EV", None),
        ("photon_energy = 0", None),
        ("photon_energy = nan", None),
        ("wavelength = 2 A", 12398.4193 / 2),
        ("wavelength = 1.3", None),  # CrystFEL needs the unit of a wavelength
        ("; photon_energy = 9500", None),
        ("p0/photon_energy = 9500", None),  # not a top-level line
        ("", None),
    ],
)
def test_literal_photon_energy_ev(text, energy):
    assert literal_photon_energy_ev(text) == energy


def test_slab_geom_of_a_source_with_units_keeps_its_lines(tmp_path):
    header = unit_header("photon_energy = 9.5 keV", "clen = 100 mm", "p0/coffset = 0.01 m")
    source = write(tmp_path / "u.geom", geom_text(TWO_PANELS, header))
    layout = load_layout(source)
    out = write_slab_geom(tmp_path / "slab.geom", layout, source)
    text = out.read_text()
    assert "clen = 100 mm" in text.splitlines()
    assert "; cxi_async replaced: photon_energy = 9.5 keV" in text.splitlines()
    assert "photon_energy = /LCLS/photon_energy_eV" in text.splitlines()
    assert load_layout(out).photon_energy_ev is None  # the slab .geom reads the files' energies
