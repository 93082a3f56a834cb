"""The synthetic Q2 load: determinism, exact ground truth, dtype-proof masks, item shape."""

from __future__ import annotations

import dataclasses
import pickle
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import ndimage

from cxi_async.config import Config
from cxi_async.replay.synthetic import (
    HC_EV_ANGSTROM,
    EventTruth,
    PipelineOutput,
    PreprocessingMetadata,
    SyntheticBatch,
    SyntheticSpec,
    SyntheticSpecError,
    iter_batches,
    make_batch,
)

EIGHT = np.ones((3, 3), dtype=bool)

SMALL = SyntheticSpec(
    batch_size=4,
    num_panels=3,
    panel_shape=(40, 48),
    padded_shape=(48, 64),
    peaks_per_event=12,
    min_num_peak=5,
    hit_fraction=0.75,
    seed=3,
)


@pytest.fixture(scope="module")
def batches() -> list[SyntheticBatch]:
    return list(iter_batches(SMALL, 6))


def real_mask(batch: SyntheticBatch) -> np.ndarray:
    *_, h, w = batch.preprocessing_metadata.original_shape
    crop = batch.logits[:, :, :h, :w]
    return crop[:, 1] > crop[:, 0]


def check_truth_against_labelling(batch: SyntheticBatch) -> None:
    """Crop, mask, 8-connected labels per panel: the components are exactly the truth blobs."""
    _, c, h, w = batch.preprocessing_metadata.original_shape
    mask = real_mask(batch)
    expected = np.zeros_like(mask)
    n, r, col = batch.pixels.T
    expected[n, r, col] = True
    np.testing.assert_array_equal(mask, expected)

    image = batch.image[:, 0, :h, :w]
    for t in batch.truth:
        assert len(t.panel) == len(t.row) == len(t.col) == len(t.npix)
        assert len(t.npix) == len(t.total_intensity) == len(t.max_value)
        assert t.panel.dtype == np.int32 and t.npix.dtype == np.int32
        assert t.row.dtype == np.float64 and t.col.dtype == np.float64
        assert t.total_intensity.dtype == np.float32 and t.max_value.dtype == np.float32
        rows, cols, npix, total, vmax, panels = [], [], [], [], [], []
        for p in range(c):
            labels, count = ndimage.label(mask[t.event_index * c + p], structure=EIGHT)
            if count == 0:
                continue
            index = np.arange(1, count + 1)
            # Label numbers follow the first pixel in raster order: the truth's order.
            com = np.array(ndimage.center_of_mass(mask[t.event_index * c + p], labels, index))
            rows.append(com[:, 0])
            cols.append(com[:, 1])
            npix.append(ndimage.sum_labels(np.ones_like(labels), labels, index))
            img = image[t.event_index * c + p]
            total.append(ndimage.sum_labels(img, labels, index))
            vmax.append(ndimage.maximum(img, labels, index))
            panels.append(np.full(count, p))
        if not panels:
            assert t.num_peaks == 0
            continue
        np.testing.assert_array_equal(np.concatenate(panels), t.panel)
        np.testing.assert_array_equal(np.concatenate(npix), t.npix)
        np.testing.assert_allclose(np.concatenate(rows), t.row, rtol=0, atol=1e-9)
        np.testing.assert_allclose(np.concatenate(cols), t.col, rtol=0, atol=1e-9)
        np.testing.assert_allclose(np.concatenate(total), t.total_intensity, rtol=1e-5)
        np.testing.assert_array_equal(np.concatenate(vmax).astype(np.float32), t.max_value)


# ---------------------------------------------------------------------------- determinism


def test_same_seed_and_index_give_identical_batches() -> None:
    a, b = make_batch(SMALL, 2), make_batch(SMALL, 2)
    assert a.batch_id == b.batch_id == "synthetic-3-000002"
    np.testing.assert_array_equal(a.logits, b.logits)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.pixels, b.pixels)
    for key in ("photon_wavelength", "timestamp"):
        np.testing.assert_array_equal(a.metadata[key], b.metadata[key])
    for ta, tb in zip(a.truth, b.truth, strict=True):
        for f in dataclasses.fields(EventTruth):
            np.testing.assert_array_equal(getattr(ta, f.name), getattr(tb, f.name))


def test_iter_batches_equals_make_batch(batches: list[SyntheticBatch]) -> None:
    assert [b.batch_id for b in batches] == [f"synthetic-3-{i:06d}" for i in range(6)]
    np.testing.assert_array_equal(batches[4].logits, make_batch(SMALL, 4).logits)
    later = next(iter_batches(SMALL, 1, start=5))
    np.testing.assert_array_equal(later.image, batches[5].image)


def test_different_index_or_seed_gives_different_batches() -> None:
    a = make_batch(SMALL, 0)
    for other in (make_batch(SMALL, 1), make_batch(dataclasses.replace(SMALL, seed=4), 0)):
        assert other.batch_id != a.batch_id
        assert not np.array_equal(other.logits, a.logits)
        assert not np.array_equal(other.image, a.image)
        assert not np.array_equal(other.metadata["timestamp"], a.metadata["timestamp"])


# ---------------------------------------------------------------------------- ground truth


def test_mask_and_components_equal_the_truth(batches: list[SyntheticBatch]) -> None:
    for batch in batches:
        check_truth_against_labelling(batch)
    assert sum(b.num_peaks for b in batches) > 100


def test_centroid_is_exact_mean_of_blob_pixels(batches: list[SyntheticBatch]) -> None:
    batch = batches[0]
    c = SMALL.num_panels
    n, r, col = batch.pixels.T
    start = 0
    for t in batch.truth:
        for k in range(t.num_peaks):
            sl = slice(start, start + int(t.npix[k]))
            start = sl.stop
            assert set(n[sl]) == {t.event_index * c + int(t.panel[k])}
            assert t.row[k] == np.sum(r[sl]) / t.npix[k]
            assert t.col[k] == np.sum(col[sl]) / t.npix[k]
    assert start == len(n)


def test_blobs_are_small_and_some_touch_every_panel_edge(batches: list[SyntheticBatch]) -> None:
    h, w = SMALL.panel_shape
    npix = np.concatenate([t.npix for b in batches for t in b.truth])
    assert npix.min() >= 1 and npix.max() <= 30
    assert (npix == 1).any() and (npix >= 20).any()
    r = np.concatenate([b.pixels[:, 1] for b in batches])
    c = np.concatenate([b.pixels[:, 2] for b in batches])
    assert (r == 0).any() and (r == h - 1).any() and (c == 0).any() and (c == w - 1).any()


def test_image_has_noise_on_real_pixels_spots_on_blobs_and_zero_padding(
    batches: list[SyntheticBatch],
) -> None:
    h, w = SMALL.panel_shape
    for batch in batches:
        assert batch.image.dtype == np.float32
        assert batch.image.shape == (12, 1, 48, 64)
        assert not batch.image[:, :, h:, :].any() and not batch.image[:, :, :, w:].any()
        real = batch.image[:, 0, :h, :w]
        background = real[~real_mask(batch)]
        assert -10 < np.median(background) < 20
        peaks = np.concatenate([t.max_value for t in batch.truth])
        assert np.median(peaks) > 50


# ---------------------------------------------------------------------------- dtypes


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_mask_is_identical_after_half_precision_casts(
    batches: list[SyntheticBatch], dtype: torch.dtype
) -> None:
    for batch in batches:
        ref = torch.from_numpy(batch.logits)
        cast = batch.predictions_tensor(dtype)
        assert cast.dtype == dtype
        # Everywhere, padding included: the decoys survive the cast too.
        assert torch.equal(cast[:, 1] > cast[:, 0], ref[:, 1] > ref[:, 0])


def test_logits_have_margin_and_bounded_magnitude(batches: list[SyntheticBatch]) -> None:
    for batch in batches:
        assert batch.logits.dtype == np.float32
        assert np.abs(batch.logits).max() < 16
        assert np.abs(batch.logits[:, 1] - batch.logits[:, 0]).min() >= 0.49


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("float32", torch.float32),
        ("float16", torch.float16),
        ("bfloat16", torch.bfloat16),
        (torch.bfloat16, torch.bfloat16),
    ],
)
def test_predictions_tensor_dtype(name: str | torch.dtype, expected: torch.dtype) -> None:
    batch = make_batch(SMALL, 0)
    t = batch.predictions_tensor(name)
    assert t.dtype == expected
    assert tuple(t.shape) == batch.logits.shape == (12, 2, 48, 64)


def test_predictions_tensor_rejects_other_dtypes() -> None:
    batch = make_batch(SMALL, 0)
    with pytest.raises(SyntheticSpecError, match="synthetic-3-000000"):
        batch.predictions_tensor("int8")
    with pytest.raises(SyntheticSpecError, match="allowed"):
        batch.predictions_tensor(torch.float64)


# ---------------------------------------------------------------------------- hits and padding


def test_kept_flags_follow_min_num_peak_and_hit_fraction() -> None:
    events = [t for b in iter_batches(SMALL, 50) for t in b.truth]
    for t in events:
        assert t.kept == (t.num_peaks >= SMALL.min_num_peak)
    fraction = np.mean([t.kept for t in events])
    assert abs(fraction - SMALL.hit_fraction) < 0.1
    hits = [t.num_peaks for t in events if t.kept]
    assert abs(np.mean(hits) - SMALL.peaks_per_event) < 2


def test_non_hits_have_fewer_than_min_num_peak_including_empty_events() -> None:
    spec = dataclasses.replace(SMALL, hit_fraction=0.0)
    events = [t for b in iter_batches(spec, 10) for t in b.truth]
    counts = [t.num_peaks for t in events]
    assert max(counts) < spec.min_num_peak and 0 in counts
    empty = next(t for t in events if t.num_peaks == 0)
    assert empty.row.dtype == np.float64 and empty.panel.dtype == np.int32
    assert not empty.kept


def test_padding_holds_decoys_next_to_edge_blobs(batches: list[SyntheticBatch]) -> None:
    h, w = SMALL.panel_shape
    edge_blobs = 0
    for batch in batches:
        full = batch.logits[:, 1] > batch.logits[:, 0]
        assert full[:, h:, :].any() and full[:, :h, w:].any()
        n, r, c = batch.pixels.T
        bottom, right = r == h - 1, c == w - 1
        assert full[n[bottom], h, c[bottom]].all()
        assert full[n[right], r[right], w].all()
        # Labelling before cropping would merge each edge blob with padding decoys.
        for i in np.flatnonzero(bottom | right):
            labels, _ = ndimage.label(full[n[i]], structure=EIGHT)
            component = labels == labels[r[i], c[i]]
            assert component[h:, :].any() or component[:, w:].any()
            edge_blobs += 1
    assert edge_blobs > 0


def test_no_padding_means_no_decoys() -> None:
    spec = dataclasses.replace(SMALL, padded_shape=SMALL.panel_shape)
    batch = make_batch(spec, 0)
    assert batch.logits.shape == (12, 2, 40, 48)
    check_truth_against_labelling(batch)


# ---------------------------------------------------------------------------- metadata and item


def test_metadata_types_and_lengths(batches: list[SyntheticBatch]) -> None:
    previous = 0
    for batch in batches:
        lam, ts = batch.metadata["photon_wavelength"], batch.metadata["timestamp"]
        assert lam.dtype == np.float64 and lam.shape == (SMALL.batch_size,)
        assert np.all(np.abs(lam - 1.3) < 0.05)
        assert ts.dtype == np.uint64 and ts.shape == (SMALL.batch_size,)
        assert np.all(np.diff(ts.astype(np.float64)) > 0) and int(ts[0]) > previous
        previous = int(ts[-1])
        assert np.all((ts & np.uint64(0xFFFFFFFF)) < 1_000_000_000)
        assert np.all((ts >> np.uint64(32)) > 1_600_000_000)
        for t in batch.truth:
            assert t.batch_id == batch.batch_id
            assert t.timestamp == int(ts[t.event_index])
            assert t.photon_energy_ev == HC_EV_ANGSTROM / lam[t.event_index]


def test_scalar_wavelength_option() -> None:
    batch = make_batch(dataclasses.replace(SMALL, wavelength_per_event=False), 0)
    lam = batch.metadata["photon_wavelength"]
    assert isinstance(lam, float)
    assert all(t.photon_energy_ev == HC_EV_ANGSTROM / lam for t in batch.truth)


def test_runs_number_consecutive_events() -> None:
    spec = dataclasses.replace(SMALL, events_per_run=3)
    runs = [t.run for i in range(3) for t in make_batch(spec, i).truth]
    assert runs == [1 + e // 3 for e in range(3 * SMALL.batch_size)]
    batch = make_batch(spec, 1)
    assert batch.metadata["run"].tolist() == [t.run for t in batch.truth]
    assert "run" not in make_batch(SMALL, 0).metadata
    assert all(t.run is None for t in make_batch(SMALL, 0).truth)


def test_to_item_has_the_producers_attribute_names() -> None:
    names = [f.name for f in dataclasses.fields(PipelineOutput)]
    assert names == [
        "predictions",
        "predictions_ref",
        "metadata",
        "batch_id",
        "original_image_ref",
        "preprocessing_metadata",
    ]
    batch = make_batch(dataclasses.replace(SMALL, dtype="bfloat16"), 1)
    item = batch.to_item(image_ref="image-ref")
    assert item.batch_id == batch.batch_id
    assert item.predictions.dtype == torch.bfloat16
    assert tuple(item.predictions.shape) == (12, 2, 48, 64)
    assert item.predictions_ref is None
    assert item.original_image_ref == "image-ref"
    assert item.metadata.keys() == {"photon_wavelength", "timestamp"}
    pm = item.preprocessing_metadata
    assert isinstance(pm, PreprocessingMetadata)
    assert pm.original_shape == (4, 3, 40, 48)
    assert pm.preprocessed_shape == (12, 1, 48, 64)
    back = pickle.loads(pickle.dumps(item))
    assert torch.equal(back.predictions.view(torch.int16), item.predictions.view(torch.int16))


def test_to_item_by_reference_and_malformed_items() -> None:
    batch = make_batch(SMALL, 0)
    item = batch.to_item(predictions_ref="logits-ref", inline=False)
    assert item.predictions is None and item.predictions_ref == "logits-ref"
    assert item.original_image_ref is None
    bare = batch.to_item(inline=False)
    assert bare.predictions is None and bare.predictions_ref is None
    assert PipelineOutput(batch_id="x").metadata is None  # no validation in the look-alike


# ---------------------------------------------------------------------------- spec


def test_from_replay_reads_attributes_or_keys_by_name() -> None:
    cfg = SimpleNamespace(batch_size=2, panel_shape=[20, 30], padded_shape=[32, 32], other=1)
    spec = SyntheticSpec.from_replay(cfg, min_num_peak=7)
    assert spec.batch_size == 2 and spec.min_num_peak == 7
    assert spec.panel_shape == (20, 30) and spec.padded_shape == (32, 32)
    assert spec.num_panels == 16 and spec.dtype == "float32"
    assert SyntheticSpec.from_replay({"dtype": "float16", "seed": 5}, 3) == SyntheticSpec(
        dtype="float16", seed=5, min_num_peak=3
    )
    assert hash(spec) == hash(SyntheticSpec.from_replay(cfg, min_num_peak=7))


def test_from_replay_accepts_the_config_replay_section() -> None:
    cfg = Config()
    spec = SyntheticSpec.from_replay(cfg.replay, cfg.peak_finding.min_num_peak)
    assert spec == SyntheticSpec(min_num_peak=cfg.peak_finding.min_num_peak)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"padded_shape": (300, 512)}, "padded_shape"),
        ({"panel_shape": (352,)}, "panel_shape"),
        ({"dtype": "float64"}, "dtype"),
        ({"hit_fraction": 1.5}, "hit_fraction"),
        ({"batch_size": 0}, "batch_size"),
        ({"min_num_peak": -1}, "min_num_peak"),
    ],
)
def test_spec_rejects_bad_settings(kwargs: dict, match: str) -> None:
    with pytest.raises(SyntheticSpecError, match=match):
        SyntheticSpec(**kwargs)


def test_overfull_panels_raise_a_clear_error() -> None:
    spec = SyntheticSpec(
        batch_size=1, num_panels=1, panel_shape=(8, 8), padded_shape=(8, 8), peaks_per_event=40
    )
    with pytest.raises(SyntheticSpecError, match="could not place"):
        make_batch(spec, 0)
    with pytest.raises(SyntheticSpecError, match="index"):
        make_batch(SMALL, -1)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**31),
    index=st.integers(0, 10**6),
    shape=st.tuples(st.integers(12, 40), st.integers(12, 40)),
    pad=st.tuples(st.integers(0, 9), st.integers(0, 9)),
)
def test_truth_holds_for_any_seed_and_shape(
    seed: int, index: int, shape: tuple[int, int], pad: tuple[int, int]
) -> None:
    spec = SyntheticSpec(
        batch_size=2,
        num_panels=2,
        panel_shape=shape,
        padded_shape=(shape[0] + pad[0], shape[1] + pad[1]),
        peaks_per_event=6,
        min_num_peak=3,
        seed=seed,
    )
    batch = make_batch(spec, index)
    check_truth_against_labelling(batch)
    for dtype in (torch.float16, torch.bfloat16):
        cast = batch.predictions_tensor(dtype)
        assert torch.equal(cast[:, 1] > cast[:, 0], torch.from_numpy(real_mask_full(batch)))


def real_mask_full(batch: SyntheticBatch) -> np.ndarray:
    return batch.logits[:, 1] > batch.logits[:, 0]


@pytest.mark.slow
def test_full_epix10k2m_batch() -> None:
    batch = make_batch(SyntheticSpec(dtype="bfloat16"), 0)
    assert batch.logits.shape == (128, 2, 512, 512)
    assert batch.image.shape == (128, 1, 512, 512)
    check_truth_against_labelling(batch)
    item = batch.to_item()
    assert item.predictions.dtype == torch.bfloat16
    ref = torch.from_numpy(batch.logits)
    assert torch.equal(item.predictions[:, 1] > item.predictions[:, 0], ref[:, 1] > ref[:, 0])
