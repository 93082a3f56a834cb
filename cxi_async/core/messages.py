"""Messages passed between the actors.

They are msgspec Structs so they are small, typed and cheap to pickle. ObjectRefs travel
inside one-element lists: Ray resolves an ObjectRef only when it is a top-level argument,
so nesting keeps the bytes in the object store until the receiver asks for them.
"""

from __future__ import annotations

from typing import Any

import msgspec
import numpy as np

EMPTY = "empty"  # a finder found no item behind the ref (the shard was empty after all)
SHARD_GONE = "shard-gone"  # the shard died before answering get(): nothing was taken


def writer_index(delivery_id: int, num_writers: int) -> int:
    """The writer that owns a delivery: finders send to it, the drainer re-sends to it."""
    return delivery_id % num_writers


class Delivery(msgspec.Struct, frozen=True):
    """One batch taken from Q2, as the drainer hands it to a finder.

    `item` holds the ObjectRef of the shard's `get` result (the PipelineOutput); the drainer
    owns that ref, so the item stays in the object store until the batch is acked.
    """

    delivery_id: int
    item: list[Any]
    shard: int
    attempt: int = 0


class EventPeaks(msgspec.Struct):
    """The kept peaks of one event, already mapped to slab coordinates."""

    event_index: int
    fs: np.ndarray  # float32 slab fast-scan (column) positions
    ss: np.ndarray  # float32 slab slow-scan (row) positions
    total_intensity: np.ndarray  # float32
    npix: np.ndarray  # int32
    max_value: np.ndarray  # float32
    panel: np.ndarray  # int16
    photon_energy_ev: float  # the fallback where the metadata had none (0 without one)
    timestamp: int  # psana value, 0 where the metadata had none that could be read
    run: str | None = None  # run label from metadata (output.run_from_metadata), if any
    timestamp_missing: bool = False
    datasets: tuple[tuple[str, float], ...] = ()  # [metadata.datasets]: (CXI path, value)


class BatchResult(msgspec.Struct):
    """What a finder made of one delivery; small, the image stays behind its ref."""

    delivery_id: int
    batch_id: str
    num_events: int
    kept: list[EventPeaks]
    filtered: int
    image: list[Any]  # [ObjectRef] of the (B*C, 1, H, W) images, or [] when there are none
    num_panels: int
    panel_shape: tuple[int, int] = (0, 0)  # (H_orig, W_orig): picks the slab layout
    rejected: str | None = None  # reason when the whole batch was rejected
    truncated_peaks: int = 0
    images_missing: bool = False
    pad_offset: tuple[int, int] = (0, 0)  # (top, left) of the real pixels in the padded image
    notices: list[tuple[str, str, str]] = []  # (kind, level, sentence): say once per run
    find_seconds: float = 0.0
    decode_seconds: float = 0.0
    handed_to_writer: bool = True  # False: the writer died; the drainer re-sends the result

    @property
    def kept_events(self) -> int:
        return len(self.kept)


class Ack(msgspec.Struct, frozen=True):
    """A writer tells the drainer a delivery is finished: every kept event is in a file."""

    delivery_id: int
    written: int
    filtered: int
    rejected: int = 0
    duplicates: int = 0
    reason: str | None = None
    num_events: int = 0  # events of the batch (written + filtered + rejected + duplicates)
