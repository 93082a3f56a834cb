"""The Q2 protocol of peaknet-pipeline-ray, spoken without importing it (or Ray).

Q2 is ``num_shards`` detached FIFO actors named ``<queue_name>_shard_<i>`` holding
``PipelineOutput`` items (see /work/shared/design/q2-protocol.md). This module knows

- the shard names and the shard's method contract (:class:`FifoShard`, which the actor layer
  wraps with ``ray.remote`` when cxi_async has to create a missing shard), and
- how to turn one item into a :class:`DecodedBatch` of numpy views, or say in one sentence
  why it cannot (:class:`MalformedItem`).

Decoding never copies the logits: an inline torch tensor becomes a read-only numpy view of
its memory (bfloat16 as the raw ``int16`` bits, since numpy has no bfloat16), an array from
the object store stays the read-only view Ray returns. torch is imported only if the item
holds a tensor (and then it is already imported, by unpickling).
"""

from __future__ import annotations

import collections
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from cxi_async.config import SAFE_NAME
from cxi_async.core.metadata import HC_EV_ANGSTROM, EventMetadata, MetadataRules, read_metadata

__all__ = [
    "HC_EV_ANGSTROM",
    "DecodedBatch",
    "FifoShard",
    "LogitsKind",
    "MalformedItem",
    "Padding",
    "check_image",
    "decode_item",
    "run_label",
    "shard_names",
]

LogitsKind = Literal["float32", "float16", "bfloat16"]


def shard_names(queue_name: str, num_shards: int) -> list[str]:
    """Actor names of the shards of Q2, as the producer's ShardedQueueManager names them."""
    if num_shards < 1:
        raise ValueError(f"num_shards = {num_shards} is invalid: a queue has at least 1 shard.")
    return [f"{queue_name}_shard_{i}" for i in range(num_shards)]


class FifoShard:
    """One Q2 shard: a bounded FIFO with the producer's non-blocking method contract.

    ``put`` returns False when full and ``get`` returns None when empty; neither blocks, so a
    shard actor never holds a caller. The actor layer creates missing shards as
    ``ray.remote(FifoShard)`` with the same name, so producer and consumer may start in
    either order.
    """

    def __init__(self, maxsize: int = 100) -> None:
        if maxsize < 1:
            raise ValueError(f"maxsize = {maxsize} is invalid: a shard holds at least 1 item.")
        self.maxsize = maxsize
        self._items: collections.deque[Any] = collections.deque()

    def put(self, item: Any) -> bool:
        if len(self._items) >= self.maxsize:
            return False
        self._items.append(item)
        return True

    def get(self) -> Any | None:
        return self._items.popleft() if self._items else None

    def size(self) -> int:
        return len(self._items)

    def is_empty(self) -> bool:
        return not self._items

    def is_full(self) -> bool:
        return len(self._items) >= self.maxsize


class MalformedItem(ValueError):
    """An item that cannot be decoded; ``str()`` is ``"batch <id>: <what is wrong>"``."""

    def __init__(self, batch_id: str | None, reason: str) -> None:
        self.batch_id = batch_id
        self.reason = reason
        super().__init__(f"batch {batch_id if batch_id is not None else 'unknown'}: {reason}")

    def __reduce__(self) -> tuple[Any, ...]:  # keeps both fields through pickling (Ray)
        return (type(self), (self.batch_id, self.reason))


@dataclass(frozen=True)
class DecodedBatch:
    """One Q2 item as numpy views, checked for consistency.

    ``logits[b*C + c, :, top:top + H_orig, left:left + W_orig]`` are the real pixels of panel
    ``c`` of event ``b``, with ``(top, left) = pad_offset`` (0, 0 for bottom-right padding);
    class 1 is "peak".
    """

    batch_id: str
    logits: np.ndarray  # (B*C, 2, H, W), read-only; float32/float16, or int16 bfloat16 bits
    logits_kind: LogitsKind
    original_shape: tuple[int, int, int, int]  # (B, C, H_orig, W_orig)
    padded_shape: tuple[int, int]  # (H, W)
    image_ref: Any | None  # the item's original_image_ref, untouched
    meta: EventMetadata  # energies, timestamps, datasets, and notices to say once per run
    run: tuple[str, ...] | None = None  # per-event run labels, when decoded with run_key
    pad_offset: tuple[int, int] = (0, 0)  # (top, left): real pixels start here in the padding

    @property
    def num_events(self) -> int:
        return self.original_shape[0]

    @property
    def num_panels(self) -> int:
        return self.original_shape[1]

    @property
    def panel_shape(self) -> tuple[int, int]:
        """(H_orig, W_orig): the real pixels of a panel."""
        return self.original_shape[2], self.original_shape[3]

    @property
    def photon_energy_ev(self) -> np.ndarray:
        return self.meta.photon_energy_ev

    @property
    def timestamp(self) -> np.ndarray:
        return self.meta.timestamp

    def unpadded(self, panels: np.ndarray) -> np.ndarray:
        """A view of (N, K, H, W) panels that starts at the real pixels (no copy)."""
        top, left = self.pad_offset
        return panels[:, :, top:, left:] if top or left else panels


# --------------------------------------------------------------------------- decoding

_MISSING = object()
_PREDICTION_ATTRS = ("predictions", "predictions_ref")


def _read_only(arr: np.ndarray) -> np.ndarray:
    """A read-only view (never a copy): finders must not scribble on shared memory."""
    if arr.flags.writeable:
        arr = arr.view()
        arr.flags.writeable = False
    return arr


def _torch_tensor_type() -> type | None:
    # If torch is not imported, the item cannot hold a tensor: unpickling one imports torch.
    torch = sys.modules.get("torch")
    return torch.Tensor if torch is not None else None


def _tensor_logits(t: Any, bid: str) -> tuple[np.ndarray, LogitsKind]:
    import torch

    if t.device.type != "cpu":
        raise MalformedItem(bid, f"logits are on device {t.device}, expected a CPU tensor")
    if t.layout != torch.strided:
        raise MalformedItem(bid, f"logits tensor has layout {t.layout}, expected torch.strided")
    if not t.is_contiguous():
        raise MalformedItem(bid, f"logits tensor of shape {tuple(t.shape)} is not contiguous")
    t = t.detach()  # no copy; .numpy() refuses tensors that require grad
    if t.dtype == torch.bfloat16:
        return _standard_strides(t.view(torch.int16).numpy()), "bfloat16"
    if t.dtype == torch.float32:
        return _standard_strides(t.numpy()), "float32"
    if t.dtype == torch.float16:
        return _standard_strides(t.numpy()), "float16"
    raise MalformedItem(
        bid, f"logits have dtype {t.dtype}, expected torch.float32, torch.float16 or torch.bfloat16"
    )


def _array_logits(a: np.ndarray, bid: str) -> tuple[np.ndarray, LogitsKind]:
    if a.dtype == np.float32:
        kind: LogitsKind = "float32"
    elif a.dtype == np.float16:
        kind = "float16"
    elif a.dtype.name == "bfloat16" and a.dtype.itemsize == 2:  # ml_dtypes.bfloat16
        a, kind = a.view(np.int16), "bfloat16"
    else:
        raise MalformedItem(bid, f"logits have dtype {a.dtype}, expected float32 or float16")
    if not a.flags.c_contiguous:
        raise MalformedItem(bid, f"logits array of shape {a.shape} is not C-contiguous")
    return _standard_strides(a), kind


def _standard_strides(a: np.ndarray) -> np.ndarray:
    """A contiguous array with C strides on every axis (size-1 axes may carry odd strides)."""
    standard = np.empty(0, a.dtype).itemsize * np.cumprod((*a.shape[1:], 1)[::-1])[::-1]
    if a.strides == tuple(int(v) for v in standard):
        return a
    return a.reshape(-1).reshape(a.shape)


def _logits(value: Any, bid: str, where: str) -> tuple[np.ndarray, LogitsKind]:
    tensor_type = _torch_tensor_type()
    if tensor_type is not None and isinstance(value, tensor_type):
        return _tensor_logits(value, bid)
    if isinstance(value, np.ndarray):
        return _array_logits(value, bid)
    raise MalformedItem(
        bid, f"{where} is a {type(value).__name__}, expected a torch.Tensor or a numpy array"
    )


def _shape_attr(meta: Any, name: str, bid: str, ndim: int) -> tuple[int, ...] | None:
    value = meta.get(name) if isinstance(meta, Mapping) else getattr(meta, name, None)
    if value is None:
        return None
    try:
        shape = tuple(int(v) for v in value)
        ok = len(shape) == ndim and all(
            v >= 1 and v == w for v, w in zip(shape, value, strict=True)
        )
    except (TypeError, ValueError, OverflowError):
        ok = False
    if not ok:
        raise MalformedItem(
            bid, f"preprocessing_metadata.{name} = {value!r} is not {ndim} positive integers"
        )
    return shape


@dataclass(frozen=True)
class Padding:
    """Where the real pixels sit in the padded model input.

    ``unpadded_shape`` is the real (H, W) of items without ``preprocessing_metadata``
    (lclstreamer's assembled images; None: not padded); ``style`` "center" puts floor(dH/2)
    rows on top and floor(dW/2) columns on the left, as lclstreamer's padder does.
    """

    unpadded_shape: tuple[int, int] | None = None
    style: Literal["bottom-right", "center"] = "center"

    def offset(self, real: tuple[int, int], padded: tuple[int, int]) -> tuple[int, int]:
        if self.style == "bottom-right":
            return 0, 0
        return (padded[0] - real[0]) // 2, (padded[1] - real[1]) // 2


def _shapes(
    item: Any, logits: np.ndarray, bid: str, padding: Padding
) -> tuple[tuple[int, int, int, int], int, int]:
    n, _, h, w = logits.shape
    meta = getattr(item, "preprocessing_metadata", None)
    if meta is None:  # one image per event (C = 1), padded as configured
        h_orig, w_orig = padding.unpadded_shape or (h, w)
        if h_orig > h or w_orig > w:
            raise MalformedItem(
                bid,
                f"queue.unpadded_shape (or the geometry's panel) is ({h_orig}, {w_orig}), "
                f"larger than the padded logits ({h}, {w}) of shape {logits.shape}",
            )
        return (n, 1, h_orig, w_orig), h, w
    original = _shape_attr(meta, "original_shape", bid, 4)
    if original is None:
        raise MalformedItem(bid, "preprocessing_metadata has no original_shape")
    b, c, h_orig, w_orig = original
    if b * c != n:
        raise MalformedItem(
            bid,
            f"preprocessing_metadata.original_shape = {original} gives B*C = {b * c}, "
            f"but the logits hold {n} panels (shape {logits.shape})",
        )
    pre = _shape_attr(meta, "preprocessed_shape", bid, 4)
    if pre is not None and pre != (n, 1, h, w):
        raise MalformedItem(
            bid,
            f"preprocessing_metadata.preprocessed_shape = {pre} disagrees with the logits "
            f"shape {logits.shape} (expected {(n, 1, h, w)})",
        )
    if h_orig > h or w_orig > w:
        raise MalformedItem(
            bid,
            f"original panel shape ({h_orig}, {w_orig}) is larger than the padded logits "
            f"({h}, {w})",
        )
    return (b, c, h_orig, w_orig), h, w


def _per_event(value: Any, b: int, key: str, bid: str) -> np.ndarray:
    """A scalar broadcast to (b,), or an array of length b (keys cxi_async needs)."""
    arr = np.asarray(value) if not isinstance(value, (list, tuple)) else np.array(value, object)
    if arr.ndim == 0:
        return np.full(b, arr.item() if arr.dtype == object else arr)
    if arr.ndim != 1 or arr.shape[0] != b:
        raise MalformedItem(
            bid, f"metadata[{key!r}] has shape {arr.shape}, expected a scalar or ({b},)"
        )
    return arr


_RUN_NAME = re.compile(SAFE_NAME)  # the names output.run accepts


def run_label(value: Any) -> str:
    """A run as it names directories and files: ``r0042`` for run 42, a safe name as it is.

    ``r%04d`` is how LCLS names runs; a name must be letters, digits, '.', '_' and '-'.
    Raises ValueError for anything else (negative numbers, floats, paths).
    """
    if isinstance(value, (bytes, np.bytes_)):
        value = value.decode("utf-8", "replace")
    if isinstance(value, (str, np.str_)):
        if not _RUN_NAME.fullmatch(value):
            raise ValueError(f"{str(value)!r} is not a run name (letters, digits, '.', '_', '-')")
        return str(value)
    if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        if value < 0:
            raise ValueError(f"run number {value} is negative")
        return f"r{int(value):04d}"
    raise ValueError(f"{value!r} ({type(value).__name__}) is neither a run number nor a name")


def _runs(item: Any, key: str, b: int, bid: str) -> tuple[str, ...] | None:
    """Per-event run labels from ``metadata[key]`` (scalar or one per event); None if absent."""
    md = getattr(item, "metadata", None)
    value = md.get(key) if isinstance(md, Mapping) else None
    if value is None:
        return None
    values = _per_event(value, b, key, bid).tolist()
    try:
        return tuple(run_label(v) for v in values)
    except ValueError as exc:
        raise MalformedItem(bid, f"metadata[{key!r}]: {exc}") from None


def decode_item(
    item: Any,
    fetch: Callable[[Any], Any] | None = None,
    run_key: str | None = None,
    *,
    rules: MetadataRules | None = None,
    padding: Padding | None = None,
) -> DecodedBatch:
    """Check one Q2 item and return its logits and metadata as numpy, without copying logits.

    ``item`` is duck-typed like the producer's ``PipelineOutput``. ``fetch`` resolves
    ``predictions_ref`` (the actor passes ``ray.get``); errors it raises (e.g. an object whose
    owner died) propagate unchanged, since the item itself is not at fault. ``run_key`` names
    the metadata key that holds each event's run (``output.run_from_metadata``); ``rules``
    say how metadata is read (``[metadata]``), ``padding`` where the real pixels are
    (``queue.unpadded_shape`` / ``queue.pad_style``). Metadata never rejects an item unless
    ``run_key`` holds something that is not a run.

    Raises :class:`MalformedItem` naming the batch and what is wrong.
    """
    has = {a: getattr(item, a, _MISSING) is not _MISSING for a in _PREDICTION_ATTRS}
    if not any(has.values()) or not hasattr(item, "batch_id"):
        raise MalformedItem(
            None,
            f"item of type {type(item).__name__} is not a PipelineOutput "
            f"(it needs batch_id and predictions or predictions_ref)",
        )
    bid = item.batch_id
    if not isinstance(bid, str):
        raise MalformedItem(None, f"batch_id = {bid!r} is a {type(bid).__name__}, expected a str")

    predictions = getattr(item, "predictions", None)
    ref = getattr(item, "predictions_ref", None)
    if predictions is None and ref is None:
        raise MalformedItem(bid, "both predictions and predictions_ref are None")
    if predictions is not None and ref is not None:
        raise MalformedItem(bid, "both predictions and predictions_ref are set; expected one")
    if predictions is not None:
        logits, kind = _logits(predictions, bid, "predictions")
    else:
        if fetch is None:
            raise TypeError(f"batch {bid}: decode_item needs fetch= to resolve predictions_ref")
        logits, kind = _logits(fetch(ref), bid, "the object behind predictions_ref")

    if logits.ndim != 4:
        raise MalformedItem(bid, f"logits have shape {logits.shape}, expected 4-D (B*C, 2, H, W)")
    if logits.shape[1] != 2:
        raise MalformedItem(
            bid, f"logits have {logits.shape[1]} classes (shape {logits.shape}), expected 2"
        )
    if 0 in logits.shape:
        raise MalformedItem(bid, f"logits have shape {logits.shape}, with no pixels")
    padding = padding or Padding()
    original, h, w = _shapes(item, logits, bid, padding)
    meta = read_metadata(getattr(item, "metadata", None), original[0], rules)
    runs = _runs(item, run_key, original[0], bid) if run_key else None
    return DecodedBatch(
        batch_id=bid,
        logits=_read_only(logits),
        logits_kind=kind,
        original_shape=original,
        padded_shape=(h, w),
        image_ref=getattr(item, "original_image_ref", None),
        meta=meta,
        run=runs,
        # preprocessing_metadata means the upstream's own bottom-right padding, whatever
        # queue.pad_style says (that is for lclstreamer's assembled images only).
        pad_offset=(
            padding.offset(original[2:], (h, w))
            if getattr(item, "preprocessing_metadata", None) is None
            else (0, 0)
        ),
    )


def check_image(batch: DecodedBatch, image: Any) -> np.ndarray:
    """Check the resolved ``original_image_ref`` against the batch; return it read-only.

    Expected: real numbers of shape ``(B*C, 1, H, W)``, padded like the logits. Any integer
    or float dtype is accepted (the writer converts to float32 while copying into the file
    buffer); the array itself is never copied here.
    """
    bid = batch.batch_id
    if not isinstance(image, np.ndarray):
        tensor_type = _torch_tensor_type()
        if tensor_type is None or not isinstance(image, tensor_type):
            raise MalformedItem(bid, f"image is a {type(image).__name__}, expected a numpy array")
        if (
            image.device.type != "cpu"
            or image.dtype.is_complex
            or str(image.dtype) == "torch.bfloat16"
        ):
            raise MalformedItem(bid, f"image tensor ({image.dtype} on {image.device}) is unusable")
        image = image.detach().numpy()
    expected = (batch.logits.shape[0], 1, *batch.padded_shape)
    if image.shape != expected:
        raise MalformedItem(bid, f"image has shape {image.shape}, expected {expected}")
    if image.dtype.kind not in "iuf":
        raise MalformedItem(bid, f"image has dtype {image.dtype}, expected real numbers")
    return _read_only(image)
