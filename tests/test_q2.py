"""q2.py: shard names and contract, decoding PipelineOutput items, every malformed case."""

from __future__ import annotations

import pickle
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch

from cxi_async.core.q2 import (
    HC_EV_ANGSTROM,
    DecodedBatch,
    FifoShard,
    MalformedItem,
    Padding,
    check_image,
    decode_item,
    shard_names,
)


@dataclass
class PreprocessingMetadata:
    """Look-alike of the producer's (same attribute names)."""

    original_shape: Any
    preprocessed_shape: Any


@dataclass
class PipelineOutput:
    """Look-alike of the producer's PipelineOutput (same attribute names, no validation)."""

    predictions: Any = None
    predictions_ref: Any = None
    metadata: Any = None
    batch_id: Any = None
    original_image_ref: Any = None
    preprocessing_metadata: Any = None


B, C, H0, W0, H, W = 2, 3, 5, 6, 8, 8


def logits_tensor(dtype=torch.float32, n: int = B * C, h: int = H, w: int = W) -> torch.Tensor:
    values = torch.arange(n * 2 * h * w, dtype=torch.float32).reshape(n, 2, h, w) / 7 - 20
    return values.to(dtype)


def pm(b=B, c=C, h0=H0, w0=W0, h=H, w=W) -> PreprocessingMetadata:
    return PreprocessingMetadata((b, c, h0, w0), (b * c, 1, h, w))


def item(**kw) -> PipelineOutput:
    kw.setdefault("batch_id", "b-7")
    if "predictions_ref" not in kw:
        kw.setdefault("predictions", logits_tensor())
    kw.setdefault("preprocessing_metadata", pm())
    kw.setdefault("metadata", {})
    return PipelineOutput(**kw)


def malformed(it: Any, fetch=None, padding: Padding | None = None) -> MalformedItem:
    with pytest.raises(MalformedItem) as info:
        decode_item(it, fetch, padding=padding)
    return info.value


# ------------------------------------------------------------------ shards


def test_shard_names():
    assert shard_names("peaknet_q2", 3) == [
        "peaknet_q2_shard_0",
        "peaknet_q2_shard_1",
        "peaknet_q2_shard_2",
    ]
    with pytest.raises(ValueError, match="num_shards = 0"):
        shard_names("q", 0)


def test_fifo_shard_contract():
    shard = FifoShard(maxsize=2)
    assert shard.is_empty() and not shard.is_full() and shard.size() == 0
    assert shard.get() is None
    assert shard.put("a") and shard.put("b")
    assert shard.is_full() and shard.size() == 2
    assert shard.put("c") is False  # full: refuse, never block
    assert [shard.get(), shard.get(), shard.get()] == ["a", "b", None]
    with pytest.raises(ValueError):
        FifoShard(0)


# ------------------------------------------------------------------ good items


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_inline_float_tensor_is_a_read_only_zero_copy_view(dtype):
    t = logits_tensor(dtype)
    batch = decode_item(item(predictions=t))
    assert batch.batch_id == "b-7"
    assert batch.logits_kind == str(dtype).removeprefix("torch.")
    assert batch.logits.dtype == t.numpy().dtype
    assert batch.logits.shape == (B * C, 2, H, W)
    np.testing.assert_array_equal(batch.logits, t.numpy())
    assert np.shares_memory(batch.logits, t.numpy())
    assert not batch.logits.flags.writeable
    assert t.numpy().flags.writeable  # the tensor itself is left alone
    assert batch.original_shape == (B, C, H0, W0)
    assert batch.padded_shape == (H, W)
    assert (batch.num_events, batch.num_panels, batch.panel_shape) == (B, C, (H0, W0))


def test_inline_bfloat16_is_int16_bits():
    t = logits_tensor(torch.bfloat16)
    batch = decode_item(item(predictions=t))
    assert batch.logits_kind == "bfloat16"
    assert batch.logits.dtype == np.int16
    bits = t.view(torch.int16).numpy()
    np.testing.assert_array_equal(batch.logits, bits)
    assert np.shares_memory(batch.logits, bits)
    assert not batch.logits.flags.writeable
    # The bits are bfloat16: shifted into the top of a float32 they give the values back.
    as_f32 = (batch.logits.astype(np.int32) << 16).view(np.float32)
    np.testing.assert_array_equal(as_f32, t.float().numpy())


def test_tensor_requiring_grad_is_decoded_without_copy():
    t = logits_tensor().requires_grad_(True)
    batch = decode_item(item(predictions=t))
    assert np.shares_memory(batch.logits, t.detach().numpy())


def test_predictions_ref_numpy_via_fetch():
    arr = logits_tensor().numpy().copy()
    store = {"ref-1": arr}
    batch = decode_item(item(predictions_ref="ref-1"), fetch=store.__getitem__)
    assert np.shares_memory(batch.logits, arr)
    assert not batch.logits.flags.writeable
    assert batch.logits_kind == "float32"


def test_predictions_ref_read_only_array_stays_as_is():
    arr = logits_tensor(torch.float16).numpy().copy()
    arr.flags.writeable = False  # what Ray's object store returns
    batch = decode_item(item(predictions_ref=1), fetch={1: arr}.__getitem__)
    assert batch.logits is arr
    assert batch.logits_kind == "float16"


def test_predictions_ref_tensor_via_fetch():
    t = logits_tensor(torch.bfloat16)
    batch = decode_item(item(predictions_ref="r"), fetch={"r": t}.__getitem__)
    assert batch.logits_kind == "bfloat16"
    np.testing.assert_array_equal(batch.logits, t.view(torch.int16).numpy())


def test_predictions_ref_without_fetch_is_a_caller_error():
    with pytest.raises(TypeError, match="fetch"):
        decode_item(item(predictions_ref="r"))


def test_fetch_errors_propagate():
    class OwnerDied(Exception):
        pass

    def fetch(ref):
        raise OwnerDied(ref)

    with pytest.raises(OwnerDied):
        decode_item(item(predictions_ref="r"), fetch)


def test_image_ref_is_passed_through_untouched():
    sentinel = object()
    assert decode_item(item(original_image_ref=sentinel)).image_ref is sentinel
    assert decode_item(item()).image_ref is None


def test_no_preprocessing_metadata_means_one_panel_no_padding():
    batch = decode_item(item(preprocessing_metadata=None))
    assert batch.original_shape == (B * C, 1, H, W)
    assert batch.padded_shape == (H, W)
    assert batch.num_events == B * C


def test_item_without_preprocessing_metadata_attribute():
    @dataclass
    class OldOutput:  # producer versions before preprocessing_metadata existed
        predictions: Any
        predictions_ref: Any
        metadata: Any
        batch_id: str

    batch = decode_item(OldOutput(logits_tensor(), None, {}, "old"))
    assert batch.original_shape == (B * C, 1, H, W)
    assert batch.image_ref is None


def test_preprocessing_metadata_as_dict():
    batch = decode_item(
        item(preprocessing_metadata={"original_shape": [B, C, H0, W0], "preprocessed_shape": None})
    )
    assert batch.original_shape == (B, C, H0, W0)


def test_no_padding_and_numpy_int_shapes():
    t = logits_tensor(h=H0, w=W0)
    meta = PreprocessingMetadata(np.array([B, C, H0, W0]), (np.int64(B * C), 1, H0, W0))
    batch = decode_item(item(predictions=t, preprocessing_metadata=meta))
    assert batch.original_shape == (B, C, H0, W0)
    assert all(type(v) is int for v in batch.original_shape)


# ------------------------------------------------------------------ metadata (see test_metadata)


def test_missing_metadata_is_unknown_never_rejected():
    for md in (None, {}, {"photon_energy": None, "timestamp": None}, [1, 2]):
        batch = decode_item(item(metadata=md))
        assert batch.photon_energy_ev.shape == (B,) and np.isnan(batch.photon_energy_ev).all()
        assert batch.timestamp.dtype == np.uint64
        np.testing.assert_array_equal(batch.timestamp, [0, 0])
        assert batch.meta.timestamp_missing.all()


def test_scalar_wavelength_to_energy_broadcast():
    batch = decode_item(item(metadata={"photon_wavelength": 1.3}))
    assert batch.photon_energy_ev.dtype == np.float64
    np.testing.assert_array_equal(batch.photon_energy_ev, [HC_EV_ANGSTROM / 1.3] * B)
    assert HC_EV_ANGSTROM == 12398.4193


def test_per_event_wavelength_array_and_tensor():
    lam = np.array([1.0, 2.0], np.float32)
    expected = HC_EV_ANGSTROM / lam.astype(np.float64)
    for value in (
        lam,
        torch.from_numpy(lam),
        lam.tolist(),
        torch.tensor(lam, dtype=torch.bfloat16),
    ):
        batch = decode_item(item(metadata={"photon_wavelength": value}))
        np.testing.assert_allclose(batch.photon_energy_ev, expected, rtol=1e-7)


def test_energy_wins_over_wavelength():
    batch = decode_item(item(metadata={"photon_energy": [9000, 9100], "photon_wavelength": 1.0}))
    np.testing.assert_array_equal(batch.photon_energy_ev, [9000.0, 9100.0])


def test_timestamps_above_2_63_are_exact():
    stamps = [2**63 + 12345, 2**64 - 1]
    for value in (stamps, np.array(stamps, np.uint64), tuple(stamps)):
        batch = decode_item(item(metadata={"timestamp": value}))
        assert batch.timestamp.dtype == np.uint64
        assert [int(v) for v in batch.timestamp] == stamps


def test_int64_timestamps_keep_their_bits():
    stamps = np.array([2**63 + 5, 7], np.uint64)
    as_tensor = torch.from_numpy(stamps.view(np.int64))  # torch has no general uint64
    batch = decode_item(item(metadata={"timestamp": as_tensor}))
    np.testing.assert_array_equal(batch.timestamp, stamps)


@pytest.mark.parametrize(
    "md",
    [
        {"photon_wavelength": [1.0, 1.1, 1.2]},
        {"photon_energy": np.ones((B, 1))},
        {"timestamp": [1, 2, 3]},
        {"timestamp": [True, False]},
        {"photon_energy": ["a", "b"]},
        {"photon_energy": {"value": 9500}},
        {"random": np.zeros((4, 4, 4)), "run_info": {"run": 1}, "detector_distance": "far"},
    ],
)
def test_metadata_of_a_form_not_read_never_rejects(md):
    batch = decode_item(item(metadata=md))
    assert np.isnan(batch.photon_energy_ev).all()
    used = {"photon_wavelength", "photon_energy", "timestamp"}
    if used & md.keys():  # a key cxi_async uses gets one sentence naming it
        assert any(next(iter(md)) in n.text for n in batch.meta.notices)


def test_assembled_centre_padded_layout():
    # lclstreamer: one image per event padded to 6 x 7 with floor(dH/2) rows on top.
    logits = np.zeros((B, 2, 6, 7), np.float32)
    assembled = item(predictions_ref="r", preprocessing_metadata=None)
    batch = decode_item(assembled, {"r": logits}.__getitem__, padding=Padding((3, 4), "center"))
    assert batch.original_shape == (B, 1, 3, 4)
    assert batch.pad_offset == (1, 1)
    assert batch.unpadded(logits).shape == (B, 2, 5, 6)
    assert np.shares_memory(batch.unpadded(logits), logits)
    err = malformed(assembled, {"r": logits}.__getitem__, Padding((8, 4)))
    assert "(8, 4)" in str(err) and "(6, 7)" in str(err)


@pytest.mark.parametrize("style", ["center", "bottom-right"])
def test_preprocessing_metadata_is_bottom_right_whatever_pad_style_says(style):
    # queue.pad_style is for lclstreamer's assembled images; the socket path's
    # preprocessing_metadata always means [b*C + c, :, :H_orig, :W_orig].
    batch = decode_item(item(), padding=Padding(None, style))
    assert batch.original_shape == (B, C, H0, W0)
    assert batch.pad_offset == (0, 0)


# ------------------------------------------------------------------ malformed items


@pytest.mark.parametrize("thing", [5, {"predictions": 1, "batch_id": "x"}, "text", None])
def test_not_a_pipeline_output(thing):
    err = malformed(thing)
    assert err.batch_id is None
    assert str(err).startswith(f"batch unknown: item of type {type(thing).__name__} ")
    assert "not a PipelineOutput" in str(err)


def test_batch_id_not_a_str():
    err = malformed(item(batch_id=42))
    assert err.batch_id is None and "batch_id = 42" in str(err) and "int" in str(err)


def test_no_predictions():
    err = malformed(item(predictions=None))
    assert str(err) == "batch b-7: both predictions and predictions_ref are None"
    assert err.batch_id == "b-7" and err.reason == "both predictions and predictions_ref are None"


def test_both_predictions():
    err = malformed(item(predictions=logits_tensor(), predictions_ref="r"), {"r": 1}.__getitem__)
    assert str(err).startswith("batch b-7: both predictions and predictions_ref are set")


def test_wrong_rank():
    err = malformed(item(predictions=torch.zeros(B * C, 2, H)))
    assert str(err).startswith("batch b-7: ") and "expected 4-D" in str(err)


def test_wrong_number_of_classes():
    err = malformed(item(predictions=torch.zeros(B * C, 3, H, W)))
    assert "3 classes" in str(err) and "expected 2" in str(err) and "b-7" in str(err)


def test_panel_count_mismatch():
    err = malformed(item(preprocessing_metadata=pm(b=4)))
    assert "b-7" in str(err) and "B*C = 12" in str(err) and "6 panels" in str(err)


def test_preprocessed_shape_disagrees():
    meta = PreprocessingMetadata((B, C, H0, W0), (B * C, 1, 16, 16))
    err = malformed(item(preprocessing_metadata=meta))
    assert "b-7" in str(err) and "preprocessed_shape" in str(err) and "(6, 1, 16, 16)" in str(err)


@pytest.mark.parametrize(("h0", "w0"), [(H + 1, W0), (H0, W + 1)])
def test_original_larger_than_padded(h0, w0):
    err = malformed(item(preprocessing_metadata=pm(h0=h0, w0=w0)))
    assert "b-7" in str(err) and "larger than the padded" in str(err)


@pytest.mark.parametrize("shape", [(B, C, H0), (B, C, H0, 0), (B, C, H0, 2.5), "abcd", 5])
def test_original_shape_not_four_positive_ints(shape):
    meta = PreprocessingMetadata(shape, None)
    err = malformed(item(preprocessing_metadata=meta))
    assert "b-7" in str(err) and "original_shape" in str(err)


def test_preprocessing_metadata_without_original_shape():
    err = malformed(item(preprocessing_metadata=PreprocessingMetadata(None, None)))
    assert "b-7" in str(err) and "original_shape" in str(err)


@pytest.mark.parametrize("dtype", [torch.float64, torch.int32, torch.bool])
def test_unsupported_tensor_dtype(dtype):
    err = malformed(item(predictions=torch.zeros(B * C, 2, H, W, dtype=dtype)))
    assert "b-7" in str(err) and str(dtype) in str(err)


def test_unsupported_array_dtype_via_ref():
    arr = np.zeros((B * C, 2, H, W), np.float64)
    err = malformed(item(predictions_ref="r"), {"r": arr}.__getitem__)
    assert "b-7" in str(err) and "float64" in str(err)


def test_big_endian_array_is_unsupported():
    arr = np.zeros((B * C, 2, H, W), ">f4")
    err = malformed(item(predictions_ref="r"), {"r": arr}.__getitem__)
    assert "b-7" in str(err) and "dtype" in str(err)


def test_predictions_not_an_array():
    err = malformed(item(predictions=[[1.0]]))
    assert "b-7" in str(err) and "predictions is a list" in str(err)


def test_non_contiguous_tensor():
    t = logits_tensor().transpose(2, 3)
    err = malformed(item(predictions=t))
    assert "b-7" in str(err) and "not contiguous" in str(err)


def test_non_contiguous_array():
    arr = np.zeros((B * C, 2, W, H), np.float32).transpose(0, 1, 3, 2)
    err = malformed(item(predictions_ref="r"), {"r": arr}.__getitem__)
    assert "b-7" in str(err) and "C-contiguous" in str(err)


def test_malformed_item_pickles():
    err = pickle.loads(pickle.dumps(MalformedItem("b-1", "no logits")))
    assert (err.batch_id, err.reason, str(err)) == ("b-1", "no logits", "batch b-1: no logits")
    assert isinstance(err, ValueError)


# ------------------------------------------------------------------ image and finiteness


def decoded(**kw) -> DecodedBatch:
    return decode_item(item(**kw))


def test_check_image_ok_and_read_only():
    batch = decoded()
    image = np.zeros((B * C, 1, H, W), np.float32)
    out = check_image(batch, image)
    assert np.shares_memory(out, image) and not out.flags.writeable
    assert check_image(batch, np.zeros((B * C, 1, H, W), np.uint16)).dtype == np.uint16


def test_check_image_tensor():
    batch = decoded()
    t = torch.ones(B * C, 1, H, W)
    assert np.shares_memory(check_image(batch, t), t.numpy())


@pytest.mark.parametrize(
    ("image", "words"),
    [
        (np.zeros((B * C, H, W), np.float32), "shape"),
        (np.zeros((B * C, 1, H0, W0), np.float32), "shape"),
        (np.zeros((B * C, 1, H, W), np.complex64), "dtype"),
        (np.zeros((B * C, 1, H, W), bool), "dtype"),
        ([1.0], "list"),
    ],
)
def test_check_image_rejects(image, words):
    with pytest.raises(MalformedItem) as info:
        check_image(decoded(), image)
    assert str(info.value).startswith("batch b-7: image") and words in str(info.value)


def test_importing_q2_does_not_import_torch_or_ray():
    code = (
        "import sys, cxi_async.core.q2, cxi_async.config; "
        "assert 'torch' not in sys.modules and 'ray' not in sys.modules, sorted(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ------------------------------------------------------------------ runs from metadata


@pytest.mark.parametrize(
    ("value", "labels"),
    [
        (42, ("r0042", "r0042")),
        (np.int64(7), ("r0007", "r0007")),
        (np.array([3, 4]), ("r0003", "r0004")),
        (torch.tensor([12345, 1]), ("r12345", "r0001")),
        ("mfxp1234_run9", ("mfxp1234_run9", "mfxp1234_run9")),
        (["a", b"b-2"], ("a", "b-2")),
    ],
)
def test_run_labels_from_metadata(value, labels):
    batch = decode_item(item(metadata={"run": value}), run_key="run")
    assert batch.run == labels


def test_runs_are_read_only_when_asked_for():
    assert decode_item(item(metadata={"run": 5})).run is None
    assert decode_item(item(metadata={}), run_key="run").run is None  # absent: no run


@pytest.mark.parametrize(
    ("value", "why"),
    [
        (-1, "negative"),
        (1.5, "neither a run number nor a name"),
        (True, "neither a run number nor a name"),
        ("../escape", "not a run name"),
        ("", "not a run name"),
        ([1, 2, 3], f"expected a scalar or ({B},)"),
        (np.ones((B, 1), np.int64), f"expected a scalar or ({B},)"),
    ],
)
def test_bad_runs_name_the_batch_and_key(value, why):
    with pytest.raises(MalformedItem) as info:
        decode_item(item(metadata={"run": value}), run_key="run")
    assert str(info.value).startswith("batch b-7: metadata['run']")
    assert why in str(info.value)
