"""Which kept events go into which file, and when a delivery is finished.

The writer actor's bookkeeping, without Ray or HDF5 so it can be tested exactly: events are
deduplicated by (delivery id, event index), grouped into files of `events_per_file` (a file also
closes on age, on request, when every credit is parked in it, or when the run changes: a file
holds one run), and a delivery is acked once each of its kept events is in a renamed file.
A failed file goes back to the front.
"""

from __future__ import annotations

import bisect
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cxi_async.core.messages import Ack, BatchResult, EventPeaks


@dataclass(frozen=True)
class PendingEvent:
    """A kept event waiting for its file; its image stays behind the delivery's ref."""

    delivery_id: int
    batch_id: str
    event: EventPeaks
    image: list[Any]  # [the delivery's (B*C, 1, H, W) images], or [] without them
    num_panels: int
    panel_shape: tuple[int, int]
    images_missing: bool
    pad_offset: tuple[int, int] = (0, 0)


@dataclass
class FileBatch:
    """The events of one file, in order, plus the filtered count it reports."""

    events: list[PendingEvent]
    filtered: int
    attempts: int = 0
    order: int = 0  # files are retried in the order they were first taken


@dataclass
class _DeliveryState:
    outstanding: int
    written: int = 0
    filtered: int = 0
    duplicates: int = 0
    num_events: int = 0


@dataclass
class FileAssembler:
    """Bookkeeping of one writer: open file, files being written, unfinished deliveries."""

    events_per_file: int
    max_file_age_s: float
    max_parked_deliveries: int
    clock: Callable[[], float] = time.monotonic
    remember_batches: int = 100_000
    open_events: list[PendingEvent] = field(default_factory=list)
    open_filtered: int = 0
    open_since: float | None = None
    retry: list[FileBatch] = field(default_factory=list)
    closed: list[FileBatch] = field(default_factory=list)  # closed early by a change of run
    deliveries: dict[int, _DeliveryState] = field(default_factory=dict)
    # Event indices of recent deliveries. The identity is cxi_async's own delivery id: the
    # producer's batch ids restart with every job (and random ones collide), so two items
    # with one batch id are two batches, both written.
    seen: OrderedDict[int, set[int]] = field(default_factory=OrderedDict)
    duplicates: int = 0
    files_taken: int = 0

    def add(self, result: BatchResult) -> list[Ack]:
        """Take a finder's result; returns the acks that are due at once."""
        if result.delivery_id in self.deliveries:  # the same delivery sent twice
            self.duplicates += len(result.kept)
            return []
        seen = self.seen.setdefault(result.delivery_id, set())
        self.seen.move_to_end(result.delivery_id)
        while len(self.seen) > self.remember_batches:
            self.seen.popitem(last=False)
        fresh = [e for e in result.kept if e.event_index not in seen]
        seen.update(e.event_index for e in fresh)
        dup = len(result.kept) - len(fresh)
        self.duplicates += dup
        state = _DeliveryState(
            outstanding=len(fresh),
            filtered=result.filtered,
            duplicates=dup,
            num_events=result.num_events,
        )
        if not fresh:
            self.open_filtered += result.filtered
            return [self._ack(result.delivery_id, state)]
        self.deliveries[result.delivery_id] = state
        for event in fresh:
            if self.open_events and self.open_events[-1].event.run != event.run:
                self._close_open()
            if self.open_since is None:
                self.open_since = self.clock()
            self.open_events.append(
                PendingEvent(
                    result.delivery_id,
                    result.batch_id,
                    event,
                    result.image,
                    result.num_panels,
                    tuple(result.panel_shape),
                    result.images_missing,
                    tuple(result.pad_offset),
                )
            )
        self.open_filtered += result.filtered  # counted in the file of the delivery's last run
        return []

    @property
    def parked_deliveries(self) -> int:
        """Deliveries whose events all wait in the open file (they hold credits)."""
        return len({e.delivery_id for e in self.open_events})

    def seconds_until_due(self) -> float | None:
        """Time until the open file closes on age; None when it is empty."""
        if self.open_since is None:
            return None
        return max(0.0, self.open_since + self.max_file_age_s - self.clock())

    def due(self, flush: bool = False) -> bool:
        """Whether a file should be written now."""
        if self.retry or self.closed:
            return True
        if not self.open_events:
            return False
        return (
            flush
            or len(self.open_events) >= self.events_per_file
            or self.seconds_until_due() == 0.0
            or self.parked_deliveries >= self.max_parked_deliveries
        )

    def take_file(self) -> FileBatch | None:
        """The next file to write: a failed one first, then one closed early, else the open one
        (up to events_per_file events)."""
        if self.retry:
            return self.retry.pop(0)
        if self.closed:
            return self.closed.pop(0)
        if not self.open_events:
            return None
        return self._take_open()

    def _close_open(self) -> None:
        """The run changed: the open file's events become files of their own, due now."""
        while self.open_events:
            self.closed.append(self._take_open())

    def _take_open(self) -> FileBatch:
        events = self.open_events[: self.events_per_file]
        self.open_events = self.open_events[self.events_per_file :]
        batch = FileBatch(events, self.open_filtered, order=self.files_taken)
        self.files_taken += 1
        self.open_filtered = 0
        self.open_since = self.clock() if self.open_events else None
        return batch

    def file_written(self, batch: FileBatch) -> list[Ack]:
        """The file is renamed: count its events and ack the deliveries now complete."""
        acks = []
        for event in batch.events:
            state = self.deliveries[event.delivery_id]
            state.outstanding -= 1
            state.written += 1
            if state.outstanding == 0:
                acks.append(self._ack(event.delivery_id, self.deliveries.pop(event.delivery_id)))
        return acks

    def file_failed(self, batch: FileBatch) -> None:
        """Writing failed: keep the events and try the same file again first."""
        batch.attempts += 1
        bisect.insort(self.retry, batch, key=lambda b: b.order)

    @property
    def pending_events(self) -> int:
        return len(self.open_events) + sum(len(b.events) for b in self.retry + self.closed)

    @staticmethod
    def _ack(delivery_id: int, state: _DeliveryState) -> Ack:
        return Ack(
            delivery_id,
            written=state.written,
            filtered=state.filtered,
            duplicates=state.duplicates,
            num_events=state.num_events,
        )
