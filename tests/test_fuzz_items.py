"""Fuzzing BatchFinder.run with decoded Q2 items: never a crash, never a silent drop.

Whatever arrives, `run` returns a Found or a Rejected: accepted, with every event accounted for
(kept + filtered == num_events), or rejected with one sentence that names the batch. Each item
is well-formed except for the faults drawn for it, and the generator records what it actually
made, so the check goes both ways: a good item is never rejected, a bad one never accepted.

Inputs that once broke `run` are pinned by the regression tests at the end and, with
`KNOWN_BUGS = True` (fixed), drawn by the fuzz as well.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cxi_async.config import load_config
from cxi_async.core.finding import BatchFinder, RefUnavailable
from cxi_async.core.messages import Found, Rejected
from cxi_async.replay.synthetic import PipelineOutput, PreprocessingMetadata

# Inputs that once broke run(), pinned by the regression tests below: ragged metadata lists, inf in
# original_shape, a bfloat16 image tensor, W = 1 logits with a column stride != 1, a denormal
# wavelength. True puts them into the fuzz.
KNOWN_BUGS = True

TORCH = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
    "int32": torch.int32,
    "bool": torch.bool,
}
GOOD_LOGITS = [
    ("torch", "float32"),
    ("torch", "float16"),
    ("torch", "bfloat16"),
    ("numpy", "float32"),
    ("numpy", "float16"),
]
FAULTS = [
    "not_an_item",
    "batch_id",
    "rank",
    "classes",
    "zero_size",
    "b_times_c",
    "orig_too_big",
    "dtype",
    "layout",
    "nonfinite",
    "preprocessing",
    "metadata",
    "metadata_value",
    "transport",
    "image",
]


class Ref:
    """Stands for an ObjectRef (hashable by identity)."""


@dataclass
class Case:
    """One generated item, what `fetch` can resolve, and what `run` must make of it."""

    item: Any
    faults: frozenset[str] = frozenset()  # what the generator was asked to break
    bad: list[str] = field(default_factory=list)  # what it did break; [] = well-formed
    unsure: bool = False  # the generator cannot tell (a known-bug input)
    num_events: int = 0  # when well-formed
    policy: str = "reject"  # processing.on_missing_image
    objects: dict[Ref, Any] = field(default_factory=dict)
    lost: set[Ref] = field(default_factory=set)

    def fetch(self, ref: Any) -> Any:
        if ref in self.lost:
            raise RefUnavailable("the owner of the object has exited")
        return self.objects[ref]

    def put(self, value: Any) -> Ref:
        ref = Ref()
        self.objects[ref] = value
        return ref


# ------------------------------------------------------------------ arrays


def make_array(
    rng: np.random.Generator,
    shape: tuple[int, ...],
    dtype: str,
    container: str,
    layout: str = "contiguous",
    nonfinite: int = 0,
) -> Any:
    """Random values of `shape` as a numpy array or torch tensor.

    layout: "contiguous", "strided" (every other column of a wider array) or "transposed"
    (the last two axes swapped on a contiguous array).
    """
    values = rng.normal(0.0, 2.0, size=shape).astype(np.float32)
    if nonfinite and values.size:
        flat = values.reshape(-1)
        bad = rng.choice([np.nan, np.inf, -np.inf], nonfinite)
        flat[rng.integers(0, flat.size, nonfinite)] = bad
    if layout == "strided" and values.ndim >= 1:
        base = np.zeros((*shape[:-1], 2 * shape[-1]), np.float32)
        base[..., ::2] = values
    elif layout == "transposed" and values.ndim >= 2:
        base = np.ascontiguousarray(values.swapaxes(-1, -2))
    else:
        base, layout = values, "contiguous"
    if container == "torch":
        out: Any = torch.from_numpy(base).to(TORCH[dtype])
    else:
        with np.errstate(invalid="ignore"):
            out = base.astype(dtype)
    if layout == "strided":
        return out[..., ::2]
    if layout == "transposed":
        return out.transpose(-1, -2) if container == "torch" else out.swapaxes(-1, -2)
    return out


def is_contiguous(x: Any) -> bool:
    if isinstance(x, torch.Tensor):
        return x.is_contiguous()
    return bool(x.flags.c_contiguous)


# ------------------------------------------------------------------ logits


NONFINITE = "logits hold NaN or inf"


def only_in_padding(logits: Any, h0: int, w0: int) -> bool:
    """Every NaN/inf of (N, 1, H, W) logits lies outside the real [:h0, :w0] pixels."""
    values = logits.float().numpy() if hasattr(logits, "numpy") else np.asarray(logits)
    return values.ndim == 4 and bool(np.isfinite(values[..., :h0, :w0]).all())


@st.composite
def logits_for(draw, case: Case, rng: np.random.Generator, shape: tuple[int, ...]) -> Any:
    """Logits of `shape`: a good container/dtype/layout unless a fault asks otherwise."""
    if "dtype" in case.faults:
        container = draw(st.sampled_from(["torch", "numpy"]))
        dtype = draw(st.sampled_from(["float64", "int32", "bool"]))
        case.bad.append(f"logits are {container} {dtype}")
    else:
        container, dtype = draw(st.sampled_from(GOOD_LOGITS))
    if "layout" in case.faults:
        layout = draw(st.sampled_from(["strided", "transposed"]))
    else:  # transposed is still contiguous when H = 1
        layout = "transposed" if len(shape) == 4 and shape[2] == 1 and draw(st.booleans()) else ""
    if layout == "transposed" and not KNOWN_BUGS and len(shape) == 4 and shape[3] == 1:
        layout = "contiguous"  # W = 1: contiguous by numpy's rules, yet a column stride != 1
    nonfinite = draw(st.sampled_from([1, 2, 5])) if "nonfinite" in case.faults else 0
    logits = make_array(rng, shape, dtype, container, layout, nonfinite)
    if not is_contiguous(logits):
        case.bad.append("logits are not contiguous")
    if nonfinite and 0 not in shape:
        case.bad.append(NONFINITE)
    return logits


# ------------------------------------------------------------------ preprocessing metadata


@st.composite
def preprocessing(
    draw, case: Case, original: tuple[int, int, int, int], n: int, h: int, w: int
) -> tuple[Any, bool]:
    """(preprocessing_metadata, whether it states the original shape)."""
    b, c, h0, w0 = original
    if "preprocessing" not in case.faults:
        kind = draw(st.sampled_from(["right", "right", "none", "dict", "no_preprocessed"]))
        if kind == "none":
            return None, False
        if kind == "dict":
            return {"original_shape": list(original), "preprocessed_shape": (n, 1, h, w)}, True
        pre = (n, 1, h, w) if kind == "right" else None
        return PreprocessingMetadata(original, pre), True
    garbage = [
        42,
        "original_shape",
        {},
        {"original_shape": "abc"},
        PreprocessingMetadata(None, None),
        PreprocessingMetadata((b, c, h0), (n, 1, h, w)),
        PreprocessingMetadata([[b], c, h0, w0], (n, 1, h, w)),
        PreprocessingMetadata((b, c, math.nan, w0), (n, 1, h, w)),
        PreprocessingMetadata((b, c, 0, w0), (n, 1, h, w)),
        PreprocessingMetadata((b, c, h0 + 0.5, w0), (n, 1, h, w)),
        PreprocessingMetadata((b, c, -h0, w0), (n, 1, h, w)),
        PreprocessingMetadata(original, (n, 1, h + 1, w)),
        PreprocessingMetadata(original, (n, 2, h, w)),
    ]
    if KNOWN_BUGS:
        garbage.append(PreprocessingMetadata((b, c, math.inf, w0), (n, 1, h, w)))
    choice = draw(st.sampled_from(garbage))
    case.bad.append(f"preprocessing_metadata is garbage: {choice!r}")
    return choice, False


# ------------------------------------------------------------------ metadata


def good_values(key: str, b: int) -> list[Any]:
    """Values of a metadata key that decode: scalars, arrays, tensors, lists, None."""
    if key == "run":
        return [
            3,
            np.int64(4),
            np.arange(b),
            torch.arange(b),
            "mfx_run1",
            [f"r{i}" for i in range(b)],
            None,
        ]
    if key == "timestamp":
        return [
            0,
            2**63 + 1,
            np.uint64(7),
            np.arange(b, dtype=np.uint64) << np.uint64(32),
            torch.arange(b, dtype=torch.int64),
            list(range(b)),
            1_700_000_000.25,  # time.time()
            np.full(b, float(2**62)),  # psana2's float64 of the packed value
            "1700000000.5",  # psana1
            np.array(["1700000000.5"] * b),
            None,
        ]
    return [
        1.3,
        9000.0,
        7,
        0.0,  # unknown: falls back
        -2.0,
        math.nan,
        math.inf,
        np.linspace(1.0, 2.0, b),
        torch.linspace(1.0, 2.0, b, dtype=torch.float32),
        torch.full((b,), 1.5, dtype=torch.bfloat16),
        [1.0 + i for i in range(b)],
        None,
    ]


def bad_values(key: str, b: int) -> list[Any]:
    if key == "run":
        return [
            -1,
            1.5,
            "../x",
            "",
            np.ones(b + 1, np.int64),
            [[1] * b],
            True,
            {"a": 1},
            [None] * b,
        ]
    dtype = np.uint64 if key == "timestamp" else np.float64
    values = [np.ones(b + 1, dtype), "abc", [[1] * b], True, {"a": 1}, [None] * b]
    if key == "timestamp":
        values += [[-1] * b, 1.5, [2**64] * b]
    if KNOWN_BUGS and key != "timestamp":
        values.append([[1.0], [1.0, 2.0]])  # ragged
    return values


@st.composite
def metadata(draw, case: Case, b: int) -> Any:
    if "metadata" in case.faults:  # not a dict: ignored, never a rejection
        return draw(st.sampled_from([[1, 2], "photon_energy=9000", 3.0]))
    if draw(st.integers(0, 5)) == 0:
        return None
    keys = ("photon_energy", "photon_wavelength", "timestamp", "run")
    md = {k: draw(st.sampled_from(good_values(k, b))) for k in keys if draw(st.booleans())}
    if "metadata_value" in case.faults:
        key = draw(st.sampled_from(keys))
        md[key] = draw(st.sampled_from(bad_values(key, b)))
        # Only the run can reject a batch: a bad energy or timestamp is unknown (fallback, 0).
        if key == "run":
            case.bad.append(f"metadata[{key!r}] = {md[key]!r}")
            if isinstance(md[key], list) and md[key] and isinstance(md[key][0], list):
                case.unsure |= len({len(v) for v in md[key]}) > 1  # ragged
    if KNOWN_BUGS and md.get("photon_energy") is None and draw(st.integers(0, 9)) == 0:
        md["photon_wavelength"] = 1e-320  # a denormal: 1/lambda overflows to inf
    return md


# ------------------------------------------------------------------ image


@st.composite
def image_for(draw, case: Case, rng: np.random.Generator, logits_shape: tuple[int, ...]) -> Any:
    """The item's original_image_ref (a Ref or None); `case` holds the object behind it."""
    if len(logits_shape) != 4 or 0 in logits_shape:
        return None
    n, _, h, w = logits_shape
    shape = (n, 1, h, w)
    if "image" in case.faults:
        kind = draw(st.sampled_from(["wrong_shape", "none_value", "bool", "list", "lost"]))
    else:
        good = ["absent", "float32", "torch", "int", "float16_strided", "float64", "lost"]
        kind = draw(st.sampled_from(good + (["bfloat16"] if KNOWN_BUGS else [])))
    value: Any = None
    if kind == "absent":
        return None
    if kind in ("float32", "lost"):
        value = make_array(rng, shape, "float32", "numpy")
    elif kind == "torch":
        value = make_array(rng, shape, "float32", "torch")
    elif kind in ("int", "float64"):
        value = make_array(rng, shape, {"int": "int32"}.get(kind, kind), "numpy")
    elif kind == "float16_strided":
        value = make_array(rng, shape, "float16", "torch", "strided")
    elif kind == "bfloat16":
        value = make_array(rng, shape, "bfloat16", "torch")
        case.unsure = True
    elif kind == "wrong_shape":
        value = make_array(rng, (n, 1, h, w + 1), "float32", "numpy")
    elif kind == "bool":
        value = make_array(rng, shape, "bool", "numpy")
    elif kind == "list":
        value = [[0.0] * w] * h
    ref = case.put(value)
    if kind == "lost":
        case.lost.add(ref)
        if case.policy == "reject":
            case.bad.append("the image is gone")
    elif "image" in case.faults:
        case.bad.append(f"image: {kind}")
    return ref


# ------------------------------------------------------------------ items

NOT_ITEMS = [0, {}, None, "an item", {"batch_id": "x", "predictions": None}, 3.5, [1, 2]]
IDS = st.text("abcXYZ-_.019", min_size=1, max_size=8)


@st.composite
def cases(draw) -> Case:
    num_faults = draw(st.sampled_from([0, 0, 0, 1, 1, 2]))
    faults = frozenset(
        draw(
            st.lists(st.sampled_from(FAULTS), min_size=num_faults, max_size=num_faults, unique=True)
        )
    )
    if "not_an_item" in faults:
        return Case(item=draw(st.sampled_from(NOT_ITEMS)), faults=faults, bad=["not an item"])
    case = Case(item=None, faults=faults)
    case.policy = draw(st.sampled_from(["reject", "write_without_image"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    batch_id: Any = draw(IDS)
    if "batch_id" in faults:
        batch_id = draw(st.sampled_from([None, 17, b"bytes", ["b"]]))
        case.bad.append(f"batch_id = {batch_id!r}")

    b, c = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    h, w = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    h0, w0 = draw(st.integers(1, h)), draw(st.integers(1, w))
    n = b * c
    if "b_times_c" in faults:
        n += draw(st.sampled_from([-1, 1] if n > 1 else [1]))
    if "orig_too_big" in faults:
        h0, w0 = (h + 1, w0) if draw(st.booleans()) else (h0, w + 1)
    shape: tuple[int, ...] = (n, 2, h, w)
    if "rank" in faults:
        rank = draw(st.sampled_from([0, 1, 2, 3, 5]))
        shape = tuple(draw(st.integers(1, 3)) for _ in range(rank))
        case.bad.append(f"logits of rank {rank}")
    elif "classes" in faults:
        shape = (n, draw(st.sampled_from([1, 3])), h, w)
        case.bad.append(f"logits with {shape[1]} classes")
    elif "zero_size" in faults:
        axis = draw(st.integers(0, 3))
        shape = tuple(0 if i == axis else d for i, d in enumerate(shape))
        case.bad.append("logits with no pixels")
    logits = draw(logits_for(case, rng, shape))

    pm, states_shape = draw(preprocessing(case, (b, c, h0, w0), n, h, w))
    if NONFINITE in case.bad and states_shape and only_in_padding(logits, h0, w0):
        case.bad.remove(NONFINITE)  # the finder checks the real pixels only (bottom-right pad)
    if states_shape and "b_times_c" in faults:
        case.bad.append("B*C does not match the logits")
    if states_shape and "orig_too_big" in faults:
        case.bad.append("original panel larger than the padded logits")
    case.num_events = b if pm is not None else (shape[0] if shape else 0)

    item = PipelineOutput(batch_id=batch_id, preprocessing_metadata=pm)
    item.metadata = draw(metadata(case, case.num_events))
    transport = draw(st.sampled_from(["inline", "inline", "ref"]))
    if "transport" in faults:
        transport = draw(st.sampled_from(["lost_ref", "both", "neither", "ref_to_list"]))
        case.bad.append(f"transport {transport}")
    if transport in ("inline", "both"):
        item.predictions = logits
    if transport in ("ref", "lost_ref", "both"):
        item.predictions_ref = case.put(logits)
    if transport == "ref_to_list":
        item.predictions_ref = case.put([1.0, 2.0])
    if transport == "lost_ref":
        case.lost.add(item.predictions_ref)
    item.original_image_ref = draw(image_for(case, rng, shape))
    case.item = item
    return case


# ------------------------------------------------------------------ the property


@functools.cache
def finder(policy: str, min_num_peak: int, max_num_peak: int) -> BatchFinder:
    overrides = [
        f"processing.on_missing_image='{policy}'",
        f"peak_finding.min_num_peak={min_num_peak}",
        f"peak_finding.max_num_peak={max_num_peak}",
        "output.photon_energy_ev=9500",
        "output.run_from_metadata='run'",
    ]
    return BatchFinder(load_config(None, overrides, check_paths=False))


DELIVERY = 77


def check(case: Case, res: Any, min_num_peak: int, max_num_peak: int) -> None:
    """Accepted with every event accounted for, or rejected naming the batch."""
    assert isinstance(res, Found | Rejected)
    assert res.delivery_id == DELIVERY
    bid = getattr(case.item, "batch_id", None)
    if isinstance(res, Rejected):
        assert res.reason.strip()
        if isinstance(bid, str):
            assert bid in res.reason, res.reason
        assert case.unsure or case.bad, f"a well-formed item was rejected: {res.reason}"
        return
    assert case.unsure or not case.bad, f"accepted although {case.bad}"
    assert res.batch_id == bid
    if not case.unsure:
        assert res.num_events == case.num_events
    assert res.num_events >= 1
    index = [e.event_index for e in res.kept]
    assert index == sorted(set(index)), "event indices repeat or are out of order"
    assert all(0 <= i < res.num_events for i in index)
    assert len(res.kept) + res.filtered == res.num_events, "events silently dropped"
    assert res.images_missing == (res.image == [])
    for e in res.kept:
        n = len(e.fs)
        assert min_num_peak <= n <= max_num_peak
        for name in ("ss", "total_intensity", "npix", "max_value", "panel"):
            assert len(getattr(e, name)) == n, name
        assert math.isfinite(e.photon_energy_ev) and e.photon_energy_ev > 0
        assert 0 <= e.timestamp < 2**64
        assert e.run is None or (isinstance(e.run, str) and "/" not in e.run and e.run)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(case=cases(), min_num_peak=st.integers(0, 3), extra=st.integers(0, 2))
def test_run_never_raises_and_accounts_for_every_event(case, min_num_peak, extra):
    max_num_peak = max(1, min_num_peak + extra)
    res = finder(case.policy, min_num_peak, max_num_peak).run(case.item, DELIVERY, case.fetch)
    check(case, res, min_num_peak, max_num_peak)


# ------------------------------------------------------------------ known bugs, pinned


def small_item(**kw: Any) -> PipelineOutput:
    """A well-formed 2-event item with a 3 x 3 real area in 4 x 4 panels, and 2 peaks."""
    logits = torch.zeros(2, 2, 4, 4)
    logits[:, 1, 1, 1] = 1.0  # one single-pixel peak per event
    fields_ = {
        "predictions": logits,
        "batch_id": "bX",
        "metadata": {},
        "preprocessing_metadata": PreprocessingMetadata((2, 1, 3, 3), (2, 1, 4, 4)),
    }
    fields_.update(kw)
    return PipelineOutput(**fields_)


def run_small(item: PipelineOutput, objects: dict | None = None) -> Found | Rejected:
    objects = objects or {}
    return finder("reject", 0, 4).run(item, DELIVERY, objects.__getitem__)


def test_small_item_is_accepted():
    res = run_small(small_item())
    assert isinstance(res, Found)
    assert [len(e.fs) for e in res.kept] == [1, 1]


@pytest.mark.parametrize("key", ["photon_energy", "photon_wavelength"])
def test_ragged_metadata_list_is_named_and_falls_back(key):
    res = run_small(small_item(metadata={key: [[1.0], [1.0, 2.0]]}))
    assert isinstance(res, Found)
    assert [e.photon_energy_ev for e in res.kept] == [9500.0, 9500.0]
    assert any(key in text for _, _, text in res.notices)


def test_infinite_original_shape_is_rejected():
    pm = PreprocessingMetadata((2, 1, math.inf, 3), (2, 1, 4, 4))
    res = run_small(small_item(preprocessing_metadata=pm))
    assert isinstance(res, Rejected) and "bX" in res.reason and "original_shape" in res.reason


def test_bfloat16_image_tensor_does_not_crash():
    image = torch.arange(2 * 16, dtype=torch.float32).reshape(2, 1, 4, 4)
    ref = Ref()
    res = run_small(small_item(original_image_ref=ref), {ref: image.to(torch.bfloat16)})
    if isinstance(res, Rejected):
        assert "bX" in res.reason
    else:  # the values are exact in bfloat16
        assert [float(e.total_intensity[0]) for e in res.kept] == [5.0, 21.0]


@pytest.mark.parametrize("container", ["torch", "numpy"])
def test_single_column_logits_with_a_column_stride_do_not_crash(container):
    logits = np.zeros((2, 2, 1, 4), np.float32)
    logits[:, 1, 0, 1] = 1.0
    view = (
        torch.from_numpy(logits).transpose(2, 3) if container == "torch" else logits.swapaxes(2, 3)
    )
    assert view.shape == (2, 2, 4, 1)
    pm = PreprocessingMetadata((2, 1, 4, 1), (2, 1, 4, 1))
    try:
        res = run_small(small_item(predictions=view, preprocessing_metadata=pm))
    except Exception as exc:
        pytest.fail(f"run() raised {type(exc).__name__}: {exc}")
    if isinstance(res, Rejected):
        assert "bX" in res.reason
    else:
        assert [len(e.fs) for e in res.kept] == [1, 1]
        assert [float(e.ss[0]) for e in res.kept] == [1.0, 1.0]


def test_denormal_wavelength_falls_back_to_the_configured_energy():
    with np.errstate(over="ignore"):
        res = run_small(small_item(metadata={"photon_wavelength": 1e-320}))
    assert [e.photon_energy_ev for e in res.kept] == [9500.0, 9500.0]
