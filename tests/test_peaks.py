"""Peak finding: exact ground truth from hand-built blobs, and the straightforward reference."""

from __future__ import annotations

from dataclasses import fields

import numpy as np
import pytest

from bench.reference import reference_find_peaks
from cxi_async.core import peaks
from cxi_async.core.peaks import (
    PeakFindingError,
    PeakTable,
    find_peaks,
    peak_mask,
    select_events,
)

# ----------------------------------------------------------------------------- helpers


def readonly(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False
    return a


def logits_from_mask(mask: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
    """float32 (N, 2, H, W) logits whose ``l1 > l0`` is exactly ``mask`` (N, H, W).

    Quarter-integers, so float16 and bfloat16 hold the same values exactly.
    """
    rng = rng or np.random.default_rng(0)
    base = rng.integers(-12, 13, mask.shape) / 4
    margin = rng.integers(1, 9, mask.shape) / 4
    l1 = np.where(mask, base + margin, base - margin)
    return readonly(np.stack([base, l1], axis=1).astype(np.float32))


def as_kind(logits: np.ndarray, kind: str) -> tuple[np.ndarray, bool]:
    """The same values as float16 or as bfloat16 bits (values must be representable)."""
    if kind == "float32":
        return logits, False
    if kind == "float16":
        out = logits.astype(np.float16)
        assert np.array_equal(out.astype(np.float32), logits, equal_nan=True)
        return readonly(out), False
    bits = logits.view(np.int32)
    assert not (bits & 0xFFFF).any(), "value not exactly representable in bfloat16"
    return readonly((bits >> 16).astype(np.int16)), True


def table_rows(t: PeakTable) -> list[tuple]:
    return list(zip(t.event.tolist(), t.panel.tolist(), t.row.tolist(), t.col.tolist(),
                    t.npix.tolist(), strict=True))  # fmt: skip


def assert_tables_equal(a: PeakTable, b: PeakTable, *, approx_intensity: bool = False) -> None:
    for f in fields(PeakTable):
        x, y = getattr(a, f.name), getattr(b, f.name)
        assert x.dtype == y.dtype, f.name
        assert x.shape == y.shape, f.name
        if approx_intensity and f.name in ("total_intensity", "weighted_row", "weighted_col"):
            np.testing.assert_allclose(x, y, rtol=1e-6, err_msg=f.name)
        else:
            np.testing.assert_array_equal(x, y, err_msg=f.name)


def grow_blob(rng: np.random.Generator, size: int, box: int = 5) -> list[tuple[int, int]]:
    """A 4-connected random shape of ``size`` pixels inside a ``box`` x ``box`` square."""
    pix = {(box // 2, box // 2)}
    while len(pix) < size:
        r, c = list(pix)[rng.integers(len(pix))]
        dr, dc = [(0, 1), (1, 0), (0, -1), (-1, 0)][rng.integers(4)]
        if 0 <= r + dr < box and 0 <= c + dc < box:
            pix.add((r + dr, c + dc))
    return sorted(pix)


def blob_batch(rng, nb, nc, ho, wo, h, w, cell=7):
    """Disjoint blobs (>= 2 px apart) on a grid of cells; returns mask and the truth rows."""
    mask = np.zeros((nb * nc, h, w), bool)
    truth = []
    for n in range(nb * nc):
        for r0 in range(0, ho - cell + 1, cell):
            for c0 in range(0, wo - cell + 1, cell):
                if rng.random() < 0.4:
                    continue
                pix = np.add(grow_blob(rng, int(rng.integers(1, 15))), (r0 + 1, c0 + 1))
                mask[n, pix[:, 0], pix[:, 1]] = True
                first = min(map(tuple, pix.tolist()))
                truth.append((n, first, pix))
    truth.sort(key=lambda t: (t[0], t[1]))
    return mask, truth


@pytest.fixture(params=["graph", "dense"])
def labelling(request, monkeypatch):
    """Run a test through both labelling paths (pixel graph, dense ndimage.label)."""
    monkeypatch.setattr(peaks, "_DENSE_FRACTION", np.inf if request.param == "graph" else 0.0)
    return request.param


# ----------------------------------------------------------------------------- exact truth


@pytest.mark.parametrize("h_pad, w_pad", [(0, 0), (5, 9), (40, 100)])
@pytest.mark.parametrize("kind", ["float32", "float16", "bfloat16"])
def test_blobs_exact_centroids_and_order(h_pad, w_pad, kind, labelling):
    rng = np.random.default_rng(1)
    nb, nc, ho, wo = 3, 2, 36, 43
    mask, truth = blob_batch(rng, nb, nc, ho, wo, ho + h_pad, wo + w_pad)
    logits, bf = as_kind(logits_from_mask(mask, rng), kind)
    t = find_peaks(logits, (nb, nc, ho, wo), bfloat16=bf)
    expected = [
        (n // nc, n % nc, pix[:, 0].mean(), pix[:, 1].mean(), len(pix)) for n, _, pix in truth
    ]
    assert table_rows(t) == expected
    np.testing.assert_array_equal(t.counts, np.bincount([e[0] for e in expected], minlength=nb))
    assert t.counts.dtype == np.int64
    np.testing.assert_array_equal(t.weighted_row, t.row)
    np.testing.assert_array_equal(t.total_intensity, np.zeros(len(t), np.float32))


def test_intensities_max_and_weighted_centre():
    rng = np.random.default_rng(2)
    nb, nc, ho, wo, h, w = 2, 2, 30, 30, 32, 40
    mask, truth = blob_batch(rng, nb, nc, ho, wo, h, w)
    image = rng.integers(-5, 50, (nb * nc, 1, h, w)).astype(np.float32)  # exact sums
    t = find_peaks(logits_from_mask(mask, rng), (nb, nc, ho, wo), image=readonly(image))
    assert len(t) == len(truth)
    for i, (n, _, pix) in enumerate(truth):
        v = image[n, 0, pix[:, 0], pix[:, 1]].astype(np.float64)
        assert t.total_intensity[i] == np.float32(v.sum())
        assert t.max_value[i] == np.float32(v.max())
        if v.sum() > 0:
            assert t.weighted_row[i] == (v * pix[:, 0]).sum() / v.sum()
            assert t.weighted_col[i] == (v * pix[:, 1]).sum() / v.sum()
        else:
            assert (t.weighted_row[i], t.weighted_col[i]) == (t.row[i], t.col[i])
    assert t.total_intensity.dtype == t.max_value.dtype == np.float32


def test_weighted_centre_falls_back_when_sum_not_positive():
    mask = np.zeros((1, 8, 8), bool)
    mask[0, 2, 2:4] = True
    image = np.zeros((1, 1, 8, 8), np.float32)
    image[0, 0, 2, 2], image[0, 0, 2, 3] = 3.0, -3.0
    t = find_peaks(logits_from_mask(mask), (1, 1, 8, 8), image=readonly(image))
    assert t.total_intensity.tolist() == [0.0]
    assert t.max_value.tolist() == [3.0]
    assert (t.weighted_row[0], t.weighted_col[0]) == (2.0, 2.5)


def test_padding_never_leaks_into_peaks(labelling):
    ho, wo, h, w = 10, 12, 16, 20
    mask = np.zeros((1, h, w), bool)
    mask[0, ho - 2 :, wo - 2 :] = True  # a blob over the corner, padding says "peak" too
    mask[0, ho + 2 :, :3] = True  # a blob in the padding rows only
    mask[0, :3, wo + 2 :] = True  # a blob in the padding columns only
    image = np.ones((1, 1, h, w), np.float32)
    t = find_peaks(logits_from_mask(mask), (1, 1, ho, wo), image=readonly(image))
    assert table_rows(t) == [(0, 0, ho - 1.5, wo - 1.5, 4)]
    assert t.total_intensity.tolist() == [4.0]
    pm = peak_mask(logits_from_mask(mask), (1, 1, ho, wo))
    assert pm.shape == (1, ho, wo)
    np.testing.assert_array_equal(pm, mask[:, :ho, :wo])


def test_blob_only_in_padding_gives_nothing():
    mask = np.zeros((2, 12, 12), bool)
    mask[:, 8:, 8:] = True
    t = find_peaks(logits_from_mask(mask), (1, 2, 8, 8))
    assert len(t) == 0
    assert t.counts.tolist() == [0]


def test_empty_panels_and_events(labelling):
    mask = np.zeros((3 * 2, 6, 6), bool)
    mask[2 * 1 + 1, 0, 0] = True  # event 1, panel 1 only
    t = find_peaks(logits_from_mask(mask), (3, 2, 6, 6))
    assert table_rows(t) == [(1, 1, 0.0, 0.0, 1)]
    assert t.counts.tolist() == [0, 1, 0]
    empty = find_peaks(logits_from_mask(np.zeros((4, 6, 6), bool)), (2, 2, 6, 6))
    assert len(empty) == 0 and empty.counts.tolist() == [0, 0]
    assert_tables_equal(empty, PeakTable.empty(2))


def test_one_pixel_peaks_in_every_corner(labelling):
    ho, wo = 5, 7
    mask = np.zeros((1, ho, wo), bool)
    for r, c in [(0, 0), (0, wo - 1), (ho - 1, 0), (ho - 1, wo - 1), (2, 3)]:
        mask[0, r, c] = True
    t = find_peaks(logits_from_mask(mask), (1, 1, ho, wo))
    assert [(r, c, n) for _, _, r, c, n in table_rows(t)] == [
        (0.0, 0.0, 1),
        (0.0, wo - 1.0, 1),
        (2.0, 3.0, 1),
        (ho - 1.0, 0.0, 1),
        (ho - 1.0, wo - 1.0, 1),
    ]


@pytest.mark.parametrize("w_pad", [0, 3])
def test_4_vs_8_connectivity(w_pad, labelling):
    mask = np.zeros((1, 6, 6 + w_pad), bool)
    mask[0, 1, 1] = mask[0, 2, 2] = True  # diagonal down-right
    mask[0, 1, 5] = mask[0, 2, 4] = True  # diagonal down-left, from the last column
    logits = logits_from_mask(mask)
    t8 = find_peaks(logits, (1, 1, 6, 6), connectivity=8)
    t4 = find_peaks(logits, (1, 1, 6, 6), connectivity=4)
    assert [(r, c, n) for *_, r, c, n in table_rows(t8)] == [(1.5, 1.5, 2), (1.5, 4.5, 2)]
    assert [(r, c) for *_, r, c, _ in table_rows(t4)] == [(1, 1), (1, 5), (2, 2), (2, 4)]


@pytest.mark.parametrize("w_pad", [0, 1, 4])
def test_no_connection_across_panels_or_row_wrap(w_pad, labelling):
    ho, wo = 4, 5
    mask = np.zeros((2, ho, wo + w_pad), bool)
    mask[0, ho - 1, 1:3] = True  # bottom row of panel 0 ...
    mask[1, 0, 1:3] = True  # ... touches the top row of panel 1 in stacking order
    mask[0, 0, wo - 1] = mask[0, 1, 0] = True  # end of a row, start of the next
    t = find_peaks(logits_from_mask(mask), (1, 2, ho, wo))
    assert table_rows(t) == [
        (0, 0, 0.0, wo - 1.0, 1),
        (0, 0, 1.0, 0.0, 1),
        (0, 0, ho - 1.0, 1.5, 2),
        (0, 1, 0.0, 1.5, 2),
    ]


def test_whole_panel_is_one_peak(labelling):
    mask = np.ones((2, 9, 11), bool)
    t = find_peaks(logits_from_mask(mask), (2, 1, 7, 8))
    assert table_rows(t) == [(0, 0, 3.0, 3.5, 56), (1, 0, 3.0, 3.5, 56)]


# ----------------------------------------------------------------------------- dtypes


SPECIAL = np.array([0.0, -0.0, 1.0, -1.0, 0.5, -2.0, np.inf, -np.inf, np.nan, -np.nan], np.float32)


@pytest.mark.parametrize("connectivity", [4, 8])
def test_dtypes_give_identical_results_with_ties_nan_inf(connectivity, labelling):
    rng = np.random.default_rng(3)
    nb, nc, ho, wo = 2, 3, 17, 23
    logits = readonly(rng.choice(SPECIAL, (nb * nc, 2, 20, 26)))
    shape = (nb, nc, ho, wo)
    with np.errstate(invalid="ignore"):
        expected = logits[:, 1, :ho, :wo] > logits[:, 0, :ho, :wo]
    # -0 vs +0 is a tie, NaN is background, inf beats everything finite.
    assert not (expected & (logits[:, 1, :ho, :wo] == 0) & (logits[:, 0, :ho, :wo] == 0)).any()
    image = readonly(rng.integers(0, 9, (nb * nc, 1, 20, 26)).astype(np.float32))
    tables = {}
    for kind in ("float32", "float16", "bfloat16"):
        x, bf = as_kind(logits, kind)
        np.testing.assert_array_equal(peak_mask(x, shape, bfloat16=bf), expected, err_msg=kind)
        tables[kind] = find_peaks(
            x, shape, bfloat16=bf, image=image, connectivity=connectivity, reject_nonfinite=False
        )
        ref = reference_find_peaks(x, shape, bfloat16=bf, image=image, connectivity=connectivity)
        assert_tables_equal(tables[kind], ref)
    assert_tables_equal(tables["float16"], tables["float32"])
    assert_tables_equal(tables["bfloat16"], tables["float32"])
    assert len(tables["float32"]) > 10


def test_specific_ties_and_nan_pairs():
    # (l0, l1) pairs in one row, each separated by a background pixel.
    pairs = [
        (0.0, -0.0, False),
        (-0.0, 0.0, False),
        (1.0, 1.0, False),
        (np.nan, 1.0, False),
        (1.0, np.nan, False),
        (-np.nan, 1.0, False),
        (1.0, -np.nan, False),
        (np.inf, np.inf, False),
        (-np.inf, -3.0, True),
        (3.0, np.inf, True),
        (-2.0, -1.0, True),
        (-1.0, -2.0, False),
        (-0.0, 0.5, True),
        (-0.5, -0.0, True),
    ]
    w = 2 * len(pairs)
    logits = np.full((1, 2, 1, w), 0.0, np.float32)
    logits[0, 1, 0, 1::2] = -1.0
    for i, (l0, l1, _) in enumerate(pairs):
        logits[0, 0, 0, 2 * i], logits[0, 1, 0, 2 * i] = l0, l1
    readonly(logits)
    expected = [2.0 * i for i, p in enumerate(pairs) if p[2]]
    for kind in ("float32", "float16", "bfloat16"):
        x, bf = as_kind(logits, kind)
        t = find_peaks(x, (1, 1, 1, w), bfloat16=bf, reject_nonfinite=False)
        assert t.col.tolist() == expected, kind


def test_bfloat16_bits_as_uint16_are_accepted():
    rng = np.random.default_rng(4)
    logits = readonly(rng.choice(SPECIAL, (2, 2, 9, 12)))
    bits, _ = as_kind(logits, "bfloat16")
    a = find_peaks(bits, (1, 2, 9, 10), bfloat16=True, reject_nonfinite=False)
    b = find_peaks(
        readonly(bits.view(np.uint16)), (1, 2, 9, 10), bfloat16=True, reject_nonfinite=False
    )
    assert_tables_equal(a, b)
    with pytest.raises(PeakFindingError, match="NaN or infinite"):  # both ways counted
        find_peaks(readonly(bits.view(np.uint16)), (1, 2, 9, 10), bfloat16=True)


# ----------------------------------------------------------------------------- reference


@pytest.mark.parametrize("seed", range(6))
def test_matches_reference_on_random_masks(seed, labelling):
    rng = np.random.default_rng(seed)
    nb, nc = int(rng.integers(1, 4)), int(rng.integers(1, 5))
    ho, wo = int(rng.integers(1, 40)), int(rng.integers(1, 40))
    h, w = ho + int(rng.integers(0, 10)), wo + int(rng.integers(0, 3 * wo))
    density = rng.uniform(0.02, 0.6)
    mask = rng.random((nb * nc, h, w)) < density
    logits = logits_from_mask(mask, rng)
    image = readonly(rng.uniform(-1, 10, (nb * nc, 1, h, w)).astype(np.float32))
    for connectivity in (4, 8):
        for kind in ("float32", "float16", "bfloat16"):
            x, bf = as_kind(logits, kind)
            args = dict(bfloat16=bf, image=image, connectivity=connectivity)
            ours = find_peaks(x, (nb, nc, ho, wo), **args)
            ref = reference_find_peaks(x, (nb, nc, ho, wo), **args)
            assert_tables_equal(ours, ref, approx_intensity=True)


def test_full_epix_event_matches_reference():
    rng = np.random.default_rng(5)
    mask = rng.random((16, 512, 512)) < 0.003
    logits = logits_from_mask(mask, rng)
    image = readonly(rng.exponential(1, (16, 1, 512, 512)).astype(np.float32))
    shape = (1, 16, 352, 384)
    ours = find_peaks(logits, shape, image=image)
    assert_tables_equal(
        ours, reference_find_peaks(logits, shape, image=image), approx_intensity=True
    )
    assert len(ours) > 1000


def test_inputs_are_not_written():
    rng = np.random.default_rng(6)
    logits = logits_from_mask(rng.random((4, 12, 16)) < 0.2, rng)
    image = readonly(rng.random((4, 1, 12, 16)).astype(np.float32))
    before = logits.copy(), image.copy()
    for kind in ("float32", "float16", "bfloat16"):
        x, bf = as_kind(logits, kind)
        find_peaks(x, (2, 2, 10, 12), bfloat16=bf, image=image)
    np.testing.assert_array_equal(logits, before[0])
    np.testing.assert_array_equal(image, before[1])


# ----------------------------------------------------------------------------- table helpers


def test_offsets_and_per_event_views():
    mask = np.zeros((3, 5, 5), bool)
    mask[0, 0, 0] = mask[0, 4, 4] = mask[2, 2, 2] = True
    t = find_peaks(logits_from_mask(mask), (3, 1, 5, 5))
    assert t.offsets.tolist() == [0, 2, 2, 3]
    assert t.event_slice(1) == slice(2, 2)
    e2 = t.for_event(2)
    assert table_rows(e2) == [(2, 0, 2.0, 2.0, 1)]
    assert e2.counts.tolist() == [1]
    assert len(t.for_event(1)) == 0
    with pytest.raises(IndexError):
        t.event_slice(3)


# ----------------------------------------------------------------------------- select_events


def table_with(npix_per_event: list[list[int]]) -> PeakTable:
    """A table whose peaks have the given pixel counts (other columns are placeholders)."""
    npix = np.array([n for ev in npix_per_event for n in ev], np.int32)
    event = np.repeat(np.arange(len(npix_per_event)), [len(ev) for ev in npix_per_event])
    f = np.arange(npix.size, dtype=np.float64)
    return PeakTable(
        event=event.astype(np.int32),
        panel=np.zeros(npix.size, np.int32),
        row=f,
        col=f,
        npix=npix,
        total_intensity=f.astype(np.float32),
        max_value=f.astype(np.float32),
        weighted_row=f,
        weighted_col=f,
        counts=np.array([len(ev) for ev in npix_per_event], np.int64),
    )


def test_select_events_filters_and_truncates():
    t = table_with([[3, 1], [], [5, 2, 9, 2, 2, 7], [1, 1, 1], [4]])
    s = select_events(t, min_num_peak=2, max_num_peak=4)
    assert s.kept.tolist() == [0, 2, 3]
    assert s.filtered.tolist() == [1, 4]
    # Event 2 (rows 2..7): keep 9, 7, 5 and the first of the tied 2s (row 3), in table order.
    assert s.peaks_of(0).tolist() == [0, 1]
    assert s.peaks_of(1).tolist() == [2, 3, 4, 7]
    assert s.peaks_of(2).tolist() == [8, 9, 10]
    assert s.num_truncated.tolist() == [0, 2, 0]
    assert s.total_truncated == 2
    assert s.peak_offsets.tolist() == [0, 2, 6, 9]


def test_select_events_without_truncation_and_min_zero():
    t = table_with([[1], [], [2, 2]])
    s = select_events(t, min_num_peak=0, max_num_peak=10)
    assert s.kept.tolist() == [0, 1, 2]
    assert s.filtered.tolist() == []
    assert s.peak_index.tolist() == [0, 1, 2]
    assert s.num_truncated.tolist() == [0, 0, 0]
    s = select_events(PeakTable.empty(2), 1, 5)
    assert s.kept.tolist() == [] and s.filtered.tolist() == [0, 1]


def test_select_events_ties_keep_table_order_when_all_equal():
    t = table_with([[2, 2, 2, 2, 2]])
    s = select_events(t, 1, 3)
    assert s.peak_index.tolist() == [0, 1, 2]
    assert s.num_truncated.tolist() == [2]


@pytest.mark.parametrize("lo, hi", [(-1, 5), (3, 2), (0, 0)])
def test_select_events_rejects_bad_settings(lo, hi):
    with pytest.raises(PeakFindingError, match="min_num_peak"):
        select_events(PeakTable.empty(1), lo, hi)


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "logits, shape, kwargs, match",
    [
        (np.zeros((2, 2, 8, 8), np.float32), (1, 2, 9, 8), {}, "do not hold"),
        (np.zeros((3, 2, 8, 8), np.float32), (1, 2, 8, 8), {}, "do not hold"),
        (np.zeros((2, 3, 8, 8), np.float32), (1, 2, 8, 8), {}, "2 classes"),
        (np.zeros((2, 2, 8, 8), np.float32), (1, 2, 8), {}, "original_shape"),
        (np.zeros((2, 2, 8, 8), np.float32), (1, 2, 0, 8), {}, "positive"),
        (np.zeros((2, 2, 8, 8), np.int32), (1, 2, 8, 8), {}, "dtype"),
        (np.zeros((2, 2, 8, 8), np.int16), (1, 2, 8, 8), {}, "dtype"),
        (np.zeros((2, 2, 8, 8), np.float32), (1, 2, 8, 8), {"bfloat16": True}, "int16"),
        (np.zeros((2, 2, 8, 8), np.float32), (1, 2, 8, 8), {"connectivity": 6}, "connectivity"),
        (np.zeros((2, 2, 8, 16), np.float32)[..., ::2], (1, 2, 8, 8), {}, "contiguous"),
        (
            np.zeros((2, 2, 8, 8), np.float32),
            (1, 2, 8, 8),
            {"image": np.zeros((2, 1, 4, 8), np.float32)},
            "image",
        ),
    ],
)
def test_bad_inputs_raise_clear_errors(logits, shape, kwargs, match):
    with pytest.raises(PeakFindingError, match=match):
        find_peaks(logits, shape, **kwargs)


@pytest.mark.parametrize("method", ["xorsign", "key", "convert"])
@pytest.mark.parametrize("kind", ["float16", "bfloat16"])
def test_every_16bit_compare_method_is_exact(method, kind):
    """The bench picks among these by speed; all must give the float32 mask."""
    rng = np.random.default_rng(7)
    logits = readonly(rng.choice(SPECIAL, (4, 2, 11, 30)))
    x, _ = as_kind(logits, kind)
    scan = peaks._MaskScanner(x, kind, 9, 20, method)
    got = np.zeros((4, 9, 20), bool)
    got[scan.coords(scan.foreground())] = True
    with np.errstate(invalid="ignore"):
        np.testing.assert_array_equal(got, logits[:, 1, :9, :20] > logits[:, 0, :9, :20])


# ------------------------------------------------------------------ NaN and infinite logits


@pytest.mark.parametrize("kind", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_real_logits_are_counted_and_refused(kind, bad):
    logits = logits_from_mask(np.zeros((6, 20, 26), bool)).copy()
    x, bf = as_kind(readonly(logits.copy()), kind)
    find_peaks(x, (2, 3, 17, 23), bfloat16=bf)  # all finite: fine
    logits[1, 1, 2, 3] = logits[4, 0, 16, 22] = bad  # two real pixels
    logits[5, 0, 19, 25] = bad  # padding: not a real pixel, never counted
    x, bf = as_kind(readonly(logits), kind)
    with pytest.raises(PeakFindingError) as info:
        find_peaks(x, (2, 3, 17, 23), bfloat16=bf)
    assert str(info.value) == f"2 of {6 * 2 * 17 * 23} logits are NaN or infinite ({kind})"


def test_an_overflowing_sum_of_finite_logits_is_fine():
    find_peaks(np.full((2, 2, 4, 4), 3e38, np.float32), (2, 1, 4, 4))


def test_the_largest_finite_16_bit_values_are_fine():
    find_peaks(np.full((2, 2, 4, 4), -65504.0, np.float16), (2, 1, 4, 4))
    big = (np.full((2, 2, 4, 4), -3.3895e38, np.float32).view(np.int32) >> 16).astype(np.int16)
    find_peaks(big, (2, 1, 4, 4), bfloat16=True)


@pytest.mark.parametrize("kind", ["float16", "bfloat16"])
def test_a_nan_in_the_last_chunk_is_found(kind):
    logits = np.zeros((16, 2, 160, 160), np.float32)  # more panels than one chunk holds
    logits[-1, -1, 149, 149] = np.nan
    x, bf = as_kind(logits, kind)
    with pytest.raises(PeakFindingError, match=f"1 of {16 * 2 * 150 * 150} logits"):
        find_peaks(x, (16, 1, 150, 150), bfloat16=bf)
