"""finding.BatchFinder.run: decode -> peaks -> select -> slab, against synthetic ground truth.

`fetch` resolves stand-in refs from a dict (plain objects as keys), as `ray.get` would resolve
ObjectRefs; nothing of Ray is mocked.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest

from cxi_async.config import Config, load_config
from cxi_async.core.finding import BatchFinder, RefUnavailable
from cxi_async.core.geometry import SlabLayout, load_layout
from cxi_async.core.messages import Found, Rejected
from cxi_async.replay.synthetic import (
    HC_EV_ANGSTROM,
    EventTruth,
    SyntheticBatch,
    SyntheticSpec,
    make_batch,
)

DATA = Path(__file__).parent / "data"
H0, W0 = 32, 40
SPEC = SyntheticSpec(
    batch_size=3,
    num_panels=2,
    panel_shape=(H0, W0),
    padded_shape=(48, 48),
    peaks_per_event=12,
    min_num_peak=5,
    hit_fraction=0.6,
    seed=0,
)
INDEX = 2  # events 0 and 1 are hits (7 and 15 peaks), event 2 is not (2 peaks)


class Ref:
    """Stands for an ObjectRef: a plain object, hashable by identity."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"Ref({self.name})"


class Store:
    """The object store as `fetch` sees it: values by ref, and refs whose object is gone."""

    def __init__(self) -> None:
        self.values: dict[Ref, Any] = {}
        self.lost: set[Ref] = set()

    def put(self, value: Any, name: str = "obj") -> Ref:
        ref = Ref(name)
        self.values[ref] = value
        return ref

    def lose(self, ref: Ref) -> None:
        self.lost.add(ref)

    def fetch(self, ref: Any) -> Any:
        if ref in self.lost:
            raise RefUnavailable(f"{ref!r}: the owner of the object has exited")
        return self.values[ref]


def config(*overrides: str) -> Config:
    return load_config(None, ["peak_finding.min_num_peak=5", *overrides], check_paths=False)


@pytest.fixture(scope="module")
def batch() -> SyntheticBatch:
    b = make_batch(SPEC, INDEX)
    assert [t.kept for t in b.truth] == [True, True, False]
    return b


def run(
    batch: SyntheticBatch,
    cfg: Config | None = None,
    *,
    image: bool = True,
    layout: SlabLayout | None = None,
    delivery_id: int = 11,
    **item_kw: Any,
) -> tuple[Found | Rejected, Store, Ref | None]:
    store = Store()
    ref = store.put(batch.image, "image") if image else None
    item = batch.to_item(image_ref=ref)
    for name, value in item_kw.items():
        setattr(item, name, value)
    finder = BatchFinder(cfg if cfg is not None else config(), layout)
    return finder.run(item, delivery_id, store.fetch), store, ref


def kept_truth(batch: SyntheticBatch) -> list[EventTruth]:
    return [t for t in batch.truth if t.kept]


def assert_matches_truth(
    res: Found | Rejected,
    batch: SyntheticBatch,
    min_ss: np.ndarray,
    min_fs: np.ndarray,
    *,
    with_image: bool = True,
) -> None:
    truth = kept_truth(batch)
    assert isinstance(res, Found)
    assert [e.event_index for e in res.kept] == [t.event_index for t in truth]
    for e, t in zip(res.kept, truth, strict=True):
        assert e.fs.dtype == np.float32 and e.ss.dtype == np.float32
        assert e.panel.dtype == np.int16 and e.npix.dtype == np.int32
        assert e.total_intensity.dtype == np.float32 and e.max_value.dtype == np.float32
        np.testing.assert_array_equal(e.panel, t.panel)
        np.testing.assert_array_equal(e.ss, (min_ss[t.panel] + t.row).astype(np.float32))
        np.testing.assert_array_equal(e.fs, (min_fs[t.panel] + t.col).astype(np.float32))
        np.testing.assert_array_equal(e.npix, t.npix)
        if with_image:
            np.testing.assert_allclose(e.total_intensity, t.total_intensity, rtol=1e-5)
            np.testing.assert_array_equal(e.max_value, t.max_value)
        else:
            assert not e.total_intensity.any() and not e.max_value.any()
        assert e.photon_energy_ev == pytest.approx(t.photon_energy_ev, rel=1e-12)
        assert e.timestamp == t.timestamp


def stacked(num_panels: int = SPEC.num_panels) -> tuple[np.ndarray, np.ndarray]:
    return np.arange(num_panels) * H0, np.zeros(num_panels, np.int64)


# ------------------------------------------------------------------ ground truth


def test_kept_events_equal_truth_in_the_stacked_layout(batch):
    res, _, ref = run(batch)
    assert_matches_truth(res, batch, *stacked())
    assert res.delivery_id == 11
    assert res.batch_id == batch.batch_id
    assert res.num_events == 3
    assert res.filtered == 1
    assert res.num_panels == 2
    assert res.panel_shape == (H0, W0)
    assert res.image == [ref]
    assert res.images_missing is False
    assert res.truncated_peaks == 0
    assert res.find_seconds >= 0.0


def test_min_num_peak_zero_keeps_every_event(batch):
    res, _, _ = run(batch, config("peak_finding.min_num_peak=0"))
    assert [e.event_index for e in res.kept] == [0, 1, 2]
    assert res.filtered == 0
    assert [len(e.fs) for e in res.kept] == [t.num_peaks for t in batch.truth]


def geom_text(rects: dict[str, tuple[int, int, int, int]]) -> str:
    """A CrystFEL geometry; rects are (min_ss, max_ss, min_fs, max_fs)."""
    blocks = ["adu_per_photon = 1\nclen = 0.1\nres = 10000\n"]
    for name, (s0, s1, f0, f1) in rects.items():
        blocks.append(
            f"{name}/min_ss = {s0}\n{name}/max_ss = {s1}\n{name}/min_fs = {f0}\n"
            f"{name}/max_fs = {f1}\n{name}/fs = +1.0x\n{name}/ss = +1.0y\n"
            f"{name}/corner_x = 0\n{name}/corner_y = 0\n"
        )
    return "\n".join(blocks)


@pytest.fixture
def side_by_side(tmp_path) -> Path:
    """Two 32 x 40 panels next to each other along fs, p0 on the right and lower: not stacked."""
    path = tmp_path / "two.geom"
    path.write_text(geom_text({"p0": (10, 41, 45, 84), "p1": (0, 31, 0, 39)}))
    return path


def test_kept_events_equal_truth_with_a_geometry_file(batch, side_by_side):
    res, _, _ = run(batch, config(f"geometry.geom_file='{side_by_side}'"))
    assert_matches_truth(res, batch, np.array([10, 0]), np.array([45, 0]))
    assert res.filtered == 1


@pytest.mark.parametrize(
    ("style", "overrides", "offset"),
    [
        ("center", (), ((48 - H0) // 2, (48 - W0) // 2)),
        ("bottom-right", ("queue.pad_style=bottom-right",), (0, 0)),
    ],
)
def test_assembled_image_of_a_one_panel_geometry(tmp_path, style, overrides, offset):
    """lclstreamer pads its assembled image in the centre unless told otherwise, and so does
    cxi_async's default; the geometry's one panel gives the real size. The decoy peaks in
    the padding are not found."""
    spec = dataclasses.replace(SPEC, num_panels=1, layout="assembled", pad_style=style)
    assembled = make_batch(spec, INDEX)
    assert assembled.preprocessing_metadata is None
    path = tmp_path / "one.geom"
    path.write_text(geom_text({"p0": (0, H0 - 1, 0, W0 - 1)}))
    res, _, _ = run(assembled, config(f"geometry.geom_file='{path}'", *overrides))
    assert isinstance(res, Found) and res.pad_offset == offset
    assert_matches_truth(res, assembled, *stacked(1))


@pytest.fixture(scope="module")
def epix_batch() -> SyntheticBatch:
    spec = SyntheticSpec(
        batch_size=2,
        num_panels=16,
        panel_shape=(352, 384),
        padded_shape=(360, 392),
        peaks_per_event=30,
        min_num_peak=5,
        seed=1,
    )
    b = make_batch(spec, 0)
    assert [t.kept for t in b.truth] == [True, False]
    return b


@pytest.mark.parametrize("name", ["epix10k2m-module.geom", "epix10k2m-asic.geom"])
def test_kept_events_equal_truth_with_the_epix_geometry(epix_batch, name):
    res, _, _ = run(epix_batch, config(f"geometry.geom_file='{DATA / name}'"))
    layout = load_layout(DATA / name)
    assert_matches_truth(res, epix_batch, layout.min_ss, layout.min_fs)
    assert res.filtered == 1
    assert res.panel_shape == (352, 384) and res.num_panels == 16


def test_a_layout_passed_in_wins_over_the_config(batch, side_by_side):
    res, _, _ = run(batch, config(), layout=load_layout(side_by_side))
    assert_matches_truth(res, batch, np.array([10, 0]), np.array([45, 0]))


# ------------------------------------------------------------------ images


@pytest.mark.parametrize("policy", ["reject", "write_without_image"])
def test_no_image_ref_writes_peaks_without_intensities(batch, policy):
    res, _, _ = run(batch, config(f"processing.on_missing_image='{policy}'"), image=False)
    assert_matches_truth(res, batch, *stacked(), with_image=False)
    assert res.images_missing is True
    assert res.image == []
    assert res.filtered == 1


def lost_image(batch: SyntheticBatch, policy: str) -> Found | Rejected:
    store = Store()
    ref = store.put(batch.image, "image")
    store.lose(ref)
    finder = BatchFinder(config(f"processing.on_missing_image='{policy}'"))
    return finder.run(batch.to_item(image_ref=ref), 5, store.fetch)


def test_lost_image_rejects_the_batch_when_asked(batch):
    res = lost_image(batch, "reject")
    assert isinstance(res, Rejected)
    assert batch.batch_id in res.reason and "image is gone" in res.reason
    assert res.delivery_id == 5 and res.batch_id == batch.batch_id
    assert res.num_events == 3


def test_lost_image_with_write_without_image(batch):
    res = lost_image(batch, "write_without_image")
    assert_matches_truth(res, batch, *stacked(), with_image=False)
    assert res.images_missing is True and res.image == []
    assert res.filtered == 1


def test_image_of_the_wrong_shape_is_rejected(batch):
    store = Store()
    ref = store.put(batch.image[:, :, :40], "image")
    res = BatchFinder(config()).run(batch.to_item(image_ref=ref), 1, store.fetch)
    assert isinstance(res, Rejected)
    assert batch.batch_id in res.reason and "(6, 1, 40, 48)" in res.reason
    assert res.num_events == 3


# ------------------------------------------------------------------ logits transport and dtype


def test_predictions_ref_gives_the_same_result(batch):
    inline, _, _ = run(batch)
    store = Store()
    logits = batch.logits.copy()
    logits.flags.writeable = False  # as Ray returns it
    item = batch.to_item(image_ref=store.put(batch.image), inline=False)
    item.predictions_ref = store.put(logits, "logits")
    res = BatchFinder(config()).run(item, 11, store.fetch)
    assert_matches_truth(res, batch, *stacked())
    assert_same_events(res, inline)


def test_lost_predictions_ref_is_rejected(batch):
    store = Store()
    item = batch.to_item(inline=False)
    item.predictions_ref = store.put(batch.logits, "logits")
    store.lose(item.predictions_ref)
    res = BatchFinder(config()).run(item, 3, store.fetch)
    assert isinstance(res, Rejected)
    assert batch.batch_id in res.reason and "predictions_ref is gone" in res.reason


def assert_same_events(a: Found, b: Found) -> None:
    assert (a.filtered, a.truncated_peaks, a.num_events) == (b.filtered, b.truncated_peaks, 3)
    assert len(a.kept) == len(b.kept)
    for x, y in zip(a.kept, b.kept, strict=True):
        for name in x.__struct_fields__:
            vx, vy = getattr(x, name), getattr(y, name)
            if isinstance(vx, np.ndarray):
                assert vx.dtype == vy.dtype
                np.testing.assert_array_equal(vx, vy, err_msg=name)
            else:
                assert vx == vy, name


def test_float16_and_bfloat16_give_identical_results(batch):
    results = {}
    for dtype in ("float32", "float16", "bfloat16"):
        results[dtype], _, _ = run(batch, predictions=batch.predictions_tensor(dtype))
    assert_matches_truth(results["float32"], batch, *stacked())
    assert_same_events(results["float16"], results["float32"])
    assert_same_events(results["bfloat16"], results["float32"])


# ------------------------------------------------------------------ selection


def test_truncation_to_max_num_peak(batch):
    cfg = config("peak_finding.min_num_peak=2", "peak_finding.max_num_peak=4")
    res, _, _ = run(batch, cfg)
    expected_events = [t for t in batch.truth if t.num_peaks >= 2]
    assert [e.event_index for e in res.kept] == [t.event_index for t in expected_events]
    assert res.filtered == 3 - len(expected_events)
    assert res.truncated_peaks == sum(max(0, t.num_peaks - 4) for t in expected_events)
    assert res.truncated_peaks > 0
    for e, t in zip(res.kept, expected_events, strict=True):
        # The 4 peaks with most pixels (ties: earlier first), back in table order.
        order = sorted(range(t.num_peaks), key=lambda i: (-int(t.npix[i]), i))
        keep = sorted(order[:4])
        np.testing.assert_array_equal(e.npix, t.npix[keep])
        np.testing.assert_array_equal(e.panel, t.panel[keep])
        np.testing.assert_array_equal(e.ss, (t.panel[keep] * H0 + t.row[keep]).astype(np.float32))
        np.testing.assert_array_equal(e.fs, t.col[keep].astype(np.float32))


# ------------------------------------------------------------------ geometry that does not fit


def test_geometry_that_does_not_match_the_data_is_rejected(batch):
    res, _, _ = run(batch, config(f"geometry.geom_file='{DATA / 'epix10k2m-module.geom'}'"))
    assert isinstance(res, Rejected)
    assert "16 panels of 352 x 384" in res.reason  # the geometry's
    assert "2 panels of 32 x 40" in res.reason  # the data's
    assert res.batch_id == batch.batch_id


def test_geometry_rejection_names_the_batch(batch, side_by_side):
    data = dataclasses.replace(SPEC, panel_shape=(30, 40))
    other = make_batch(data, 0)
    res, _, _ = run(other, config(f"geometry.geom_file='{side_by_side}'"))
    assert isinstance(res, Rejected)
    assert "2 panels of 32 x 40" in res.reason and "2 panels of 30 x 40" in res.reason
    assert other.batch_id in res.reason


def test_data_shape_picks_its_own_stacked_layout(batch):
    finder = BatchFinder(config())
    store = Store()
    first = finder.run(batch.to_item(image_ref=store.put(batch.image)), 1, store.fetch)
    other = make_batch(dataclasses.replace(SPEC, num_panels=3), 0)
    second = finder.run(other.to_item(image_ref=store.put(other.image)), 2, store.fetch)
    assert isinstance(first, Found) and isinstance(second, Found)
    assert (first.num_panels, second.num_panels) == (2, 3)
    assert_matches_truth(second, other, *stacked(3))


# ------------------------------------------------------------------ photon energy, timestamp


def test_photon_energy_from_a_scalar_wavelength(batch):
    metadata = {**batch.metadata, "photon_wavelength": 1.5}
    res, _, _ = run(batch, metadata=metadata)
    assert [e.photon_energy_ev for e in res.kept] == [HC_EV_ANGSTROM / 1.5] * 2


def test_photon_energy_key_wins_over_wavelength(batch):
    metadata = {**batch.metadata, "photon_energy": np.array([9000.0, 9100.0, 9200.0])}
    res, _, _ = run(batch, metadata=metadata)
    assert [e.photon_energy_ev for e in res.kept] == [9000.0, 9100.0]


@pytest.mark.parametrize("fallback", [None, 9500.0])
def test_missing_energy_falls_back_to_the_output_setting(batch, fallback):
    cfg = config() if fallback is None else config(f"output.photon_energy_ev={fallback}")
    res, _, _ = run(batch, cfg, metadata={"timestamp": batch.metadata["timestamp"]})
    energies = [e.photon_energy_ev for e in res.kept]
    kinds = [kind for kind, _, _ in res.notices]
    if fallback is None:  # never NaN in the dataset CrystFEL reads; said once, with the fix
        assert energies == [0.0, 0.0]
        assert "no-energy" in kinds
        assert "output.photon_energy_ev" in dict((k, t) for k, _, t in res.notices)["no-energy"]
    else:
        assert energies == [fallback, fallback]
        assert "no-energy" not in kinds
    assert [e.timestamp for e in res.kept] == [t.timestamp for t in kept_truth(batch)]


@pytest.mark.parametrize(
    ("overrides", "expected"), [((), 9500.0), (("output.photon_energy_ev=7000",), 7000.0)]
)
def test_missing_energy_falls_back_to_the_geometrys_literal_energy(
    batch, side_by_side, overrides, expected
):
    """No energy in the metadata: the geometry's ``photon_energy = 9.5 keV`` is used, unless
    output.photon_energy_ev says otherwise; CrystFEL can index the frames, so no warning."""
    side_by_side.write_text("photon_energy = 9.5 keV\n" + side_by_side.read_text())
    cfg = config(f"geometry.geom_file='{side_by_side}'", *overrides)
    res, _, _ = run(batch, cfg, metadata={"timestamp": batch.metadata["timestamp"]})
    assert [e.photon_energy_ev for e in res.kept] == [expected, expected]
    assert "no-energy" not in [kind for kind, _, _ in res.notices]


def test_unusable_energy_of_one_event_falls_back_for_that_event(batch):
    wavelength = np.array(batch.metadata["photon_wavelength"], dtype=np.float64)
    wavelength[1] = -1.0
    res, _, _ = run(
        batch, config("output.photon_energy_ev=9500.0"), metadata={"photon_wavelength": wavelength}
    )
    assert res.kept[0].photon_energy_ev == pytest.approx(HC_EV_ANGSTROM / wavelength[0])
    assert res.kept[1].photon_energy_ev == 9500.0
    assert [e.timestamp for e in res.kept] == [0, 0]  # no timestamp in the metadata


def test_config_is_replaceable_with_msgspec(batch):
    cfg = config()
    pf = msgspec.structs.replace(cfg.peak_finding, min_num_peak=16)
    res, _, _ = run(batch, msgspec.structs.replace(cfg, peak_finding=pf))
    assert res.kept == [] and res.filtered == 3


def test_weighted_centre_setting_writes_intensity_weighted_positions(batch):
    res, _, _ = run(batch, config("peak_finding.weighted_centre=true"))
    npix = np.concatenate([t.npix for t in batch.truth])
    blobs = np.split(batch.pixels, np.cumsum(npix)[:-1])
    first_blob = np.cumsum([0] + [t.num_peaks for t in batch.truth])
    for e in res.kept:
        t = batch.truth[e.event_index]
        start = first_blob[e.event_index]
        rows, cols = [], []
        for n, r, c in (blobs[start + k].T for k in range(t.num_peaks)):
            v = batch.image[n, 0, r, c].astype(np.float64)
            rows.append((v * r).sum() / v.sum())
            cols.append((v * c).sum() / v.sum())
        np.testing.assert_allclose(e.ss, t.panel * H0 + np.array(rows), rtol=0, atol=1e-4)
        np.testing.assert_allclose(e.fs, np.array(cols), rtol=0, atol=1e-4)
