"""What the actors tell each other: one type per fact.

    coordinator ──Delivery──▶ finder ──Found | Rejected | Unread──▶ coordinator
    coordinator ──Found──▶ writer ──FileDone──▶ coordinator

They are msgspec Structs so they are small, typed and cheap to pickle. ObjectRefs travel
inside one-element lists: Ray resolves an ObjectRef only when it is a top-level argument,
so nesting keeps the bytes in the object store until the receiver asks for them.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec
import numpy as np


class Delivery(msgspec.Struct, frozen=True):
    """One batch taken from Q2, as the coordinator hands it to a finder.

    `item` holds the ObjectRef of the shard's `get` result (the PipelineOutput); the
    coordinator owns that ref, so the item stays in the object store while a finder needs it.
    """

    delivery_id: int
    item: list[Any]
    shard: int


class EventPeaks(msgspec.Struct):
    """One kept event on its way to a file: its peaks in slab coordinates and its scalars.

    The one type from the finder to `cxi.CxiEvents.pack`.
    """

    event_index: int
    fs: np.ndarray  # float32 slab fast-scan (column) positions
    ss: np.ndarray  # float32 slab slow-scan (row) positions
    total_intensity: np.ndarray  # float32
    npix: np.ndarray  # int32
    max_value: np.ndarray  # float32
    panel: np.ndarray  # int16
    photon_energy_ev: float  # the fallback where the metadata had none (0 without one)
    timestamp: int  # psana value, 0 where the metadata had none that could be read
    batch_id: str = ""  # the producer's batch id: provenance in the file, never identity
    run: str | None = None  # run label from metadata (output.run_from_metadata), if any
    timestamp_missing: bool = False
    datasets: tuple[tuple[str, float], ...] = ()  # [metadata.datasets]: (CXI path, value)


Notice = tuple[str, str, str]  # (kind, level, sentence): the coordinator says each kind once


class Found(msgspec.Struct, tag=True):
    """A finder read the batch: the events it keeps (small; the image stays behind its ref)."""

    delivery_id: int
    batch_id: str
    num_events: int
    kept: list[EventPeaks]
    filtered: int
    image: list[Any]  # [ObjectRef of the (B*C, 1, H, W) images], or [] without them
    num_panels: int
    panel_shape: tuple[int, int]  # (H_orig, W_orig): picks the slab layout
    pad_offset: tuple[int, int] = (0, 0)  # (top, left) of the real pixels in the padded image
    images_missing: bool = False
    truncated_peaks: int = 0
    notices: list[Notice] = []
    find_seconds: float = 0.0

    def __reduce__(self) -> tuple:
        """Pickle the kept events as one msgpack blob. Their ~6 small arrays per event cost
        Ray's pickler ~10x more than this (bench/bench_messages.py), and every Found passes
        through the coordinator twice (finder -> coordinator -> writer)."""
        fields = {name: getattr(self, name) for name in self.__struct_fields__ if name != "kept"}
        return (_found_from_wire, (_EVENTS_ENCODER.encode(self.kept), fields))


def _found_from_wire(kept: bytes, fields: dict[str, Any]) -> Found:
    return Found(kept=_EVENTS_DECODER.decode(kept), **fields)


def _array_to_ext(obj: Any) -> msgspec.msgpack.Ext:
    """A 1-D numpy array as (dtype, raw bytes); anything else cannot be in an EventPeaks."""
    if isinstance(obj, np.ndarray) and obj.ndim == 1:
        return msgspec.msgpack.Ext(1, obj.dtype.str.encode() + b"\0" + obj.tobytes())
    raise TypeError(f"EventPeaks holds a {type(obj).__name__}, not a 1-D numpy array")


def _ext_to_array(code: int, data: memoryview) -> np.ndarray:
    dtype, _, raw = bytes(data).partition(b"\0")
    return np.frombuffer(raw, np.dtype(dtype.decode()))


def _array_as_is(kind: type, obj: Any) -> Any:
    if kind is np.ndarray and isinstance(obj, np.ndarray):
        return obj
    raise TypeError(f"expected {kind.__name__}, got {type(obj).__name__}")


_EVENTS_ENCODER = msgspec.msgpack.Encoder(enc_hook=_array_to_ext)
_EVENTS_DECODER = msgspec.msgpack.Decoder(
    list[EventPeaks], ext_hook=_ext_to_array, dec_hook=_array_as_is
)


class Rejected(msgspec.Struct, tag=True):
    """The whole batch is rejected; `reason` is the one sentence the log and stats show."""

    delivery_id: int
    batch_id: str
    num_events: int
    reason: str
    notices: list[Notice] = []


class Unread(msgspec.Struct, tag=True):
    """Nothing was behind the take: the shard was empty after all, or died before answering."""

    delivery_id: int
    why: Literal["empty", "shard gone"]


FinderResult = Found | Rejected | Unread


class FileDone(msgspec.Struct, frozen=True):
    """A writer renamed a file: the writer's one fact back to the coordinator."""

    writer: int
    path: str
    events: list[tuple[int, int]]  # (delivery id, event index), in file order
    size: int = 0  # bytes
    seconds: float = 0.0  # from the start of the write to the rename
