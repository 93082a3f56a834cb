"""Which kept events go into which file, and when a file is due.

The writer actor's grouping, without Ray or HDF5 so it can be tested exactly: events are
grouped into files of `events_per_file`. A file also closes on age, on request, when every
credit's share is parked in it (so no configuration deadlocks), or when the run changes (a
file holds one run). A failed file goes back to the front. What is done with a written file
is the coordinator's business (its ledger), not this module's.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from cxi_async.core.messages import EventPeaks, Found

FileEvent = tuple[Found, EventPeaks]  # an event with the batch it came in (image, layout)


@dataclass
class FileBatch:
    """The events of one file, in order, plus the filtered count it reports."""

    events: list[FileEvent]
    filtered: int
    attempts: int = 0
    order: int = 0  # files are retried in the order they were first taken

    @property
    def ids(self) -> list[tuple[int, int]]:
        """(delivery id, event index) of each event: what FileDone reports."""
        return [(found.delivery_id, event.event_index) for found, event in self.events]


@dataclass
class FileAssembler:
    """One writer's open file, files closed early, and failed files waiting for a retry."""

    events_per_file: int
    max_file_age_s: float
    max_parked_deliveries: int
    clock: Callable[[], float] = time.monotonic
    open_events: list[FileEvent] = field(default_factory=list)
    open_filtered: int = 0
    open_since: float | None = None
    retry: list[FileBatch] = field(default_factory=list)
    closed: list[FileBatch] = field(default_factory=list)  # closed early by a change of run
    files_taken: int = 0

    def add(self, found: Found) -> None:
        """Take a delivery's kept events (the coordinator sends only those not yet filed)."""
        for event in found.kept:
            if self.open_events and self.open_events[-1][1].run != event.run:
                self._close_open()
            if self.open_since is None:
                self.open_since = self.clock()
            self.open_events.append((found, event))
        self.open_filtered += found.filtered  # in the file of the delivery's last run

    @property
    def parked_deliveries(self) -> int:
        """Deliveries with events waiting in the open file (they hold credits)."""
        return len({found.delivery_id for found, _ in self.open_events})

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

    def file_failed(self, batch: FileBatch) -> None:
        """Writing failed: keep the events and try the same file again first."""
        batch.attempts += 1
        bisect.insort(self.retry, batch, key=lambda b: b.order)

    @property
    def pending_events(self) -> int:
        return len(self.open_events) + sum(len(b.events) for b in self.retry + self.closed)

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
