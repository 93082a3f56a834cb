"""The run's books: every batch from the moment it leaves Q2 until its events are in files.

Pure (no Ray, no clock of its own unless given): the coordinator tells it each fact as it
happens and asks it what follows (which deliveries are done, what a dead writer held). It is
the only record of what is where, so recovery is a question to it, never a flag in a message.

A delivery is taken (one credit), found or rejected by a finder, and its kept events are
submitted to a writer; it is done, and its credit free, once each kept event is in a renamed
file. What a lost writer held and did not rename is submitted again. The identities

    taken  = done + in flight + abandoned
    seen   = written + filtered + rejected + abandoned + pending

hold after every call (`check`), and the tests hold the ledger to them over random orders.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

RECENT_REJECTIONS = 20
LATENCIES_KEPT = 20_000


class LedgerError(RuntimeError):
    """A fact that contradicts the books (a bug in the caller, never bad input)."""


@dataclass
class Entry:
    """One delivery in flight."""

    shard: int
    taken_at: float
    attempts: int = 0  # finders it was sent to
    found: Any = None  # the finder's Found, kept to submit again if its writer is lost
    num_events: int = 0
    filtered: int = 0
    writer: int | None = None  # the writer holding its unfiled events, None: not submitted
    unfiled: set[int] = field(default_factory=set)  # kept event indices not in a renamed file

    @property
    def at_finder(self) -> bool:
        return self.found is None


@dataclass
class Ledger:
    """Deliveries in flight, the credits they hold, and the run's counters."""

    credits: int
    clock: Callable[[], float] = time.monotonic
    on_done: Callable[[float, bool], None] | None = None  # (latency, rejected) per done delivery
    entries: dict[int, Entry] = field(default_factory=dict)
    next_id: int = 0
    batches_taken: int = 0
    batches_done: int = 0  # every kept event filed (or none kept), or rejected
    batches_rejected: int = 0
    batches_abandoned: int = 0  # in flight when a stop was asked not to finish them
    events_seen: int = 0  # events of deliveries a finder read
    events_written: int = 0
    events_filtered: int = 0
    # Hits as a finder judged them, counted with events_filtered (events_written only grows
    # when a file is renamed): the hit rate over time divides these two.
    events_hits: int = 0
    events_rejected: int = 0
    events_abandoned: int = 0  # kept events of deliveries abandoned by a stop
    events_doubled: int = 0  # filed again in a second file (a writer lost after a rename)
    peaks_truncated: int = 0
    rejections: collections.Counter = field(default_factory=collections.Counter)
    last_rejections: collections.deque = field(
        default_factory=lambda: collections.deque(maxlen=RECENT_REJECTIONS)
    )
    latencies: collections.deque = field(
        default_factory=lambda: collections.deque(maxlen=LATENCIES_KEPT)
    )
    last_done: float | None = None

    # ------------------------------------------------------------------ credits

    @property
    def in_flight(self) -> int:
        return len(self.entries)

    @property
    def free_credits(self) -> int:
        return self.credits - len(self.entries)

    def take(self, shard: int) -> int:
        """A batch leaves Q2: a new delivery id, holding one credit."""
        if self.free_credits <= 0:
            raise LedgerError("take() without a free credit")
        delivery_id = self.next_id
        self.next_id += 1
        self.entries[delivery_id] = Entry(shard, self.clock())
        self.batches_taken += 1
        return delivery_id

    def dispatched(self, delivery_id: int) -> int:
        """It is sent to a finder; returns how many finders it has been sent to."""
        entry = self._entry(delivery_id)
        entry.attempts += 1
        return entry.attempts

    # ------------------------------------------------------------------ finder facts

    def unread(self, delivery_id: int) -> None:
        """Nothing was behind the take (the shard was empty or gone): as if never taken."""
        if self.entries.pop(delivery_id, None) is not None:
            self.batches_taken -= 1

    def rejected(self, delivery_id: int, num_events: int, reason: str, batch_id: str) -> None:
        """The whole batch is rejected (unreadable, or it killed finders)."""
        entry = self.entries.get(delivery_id)
        if entry is None or not entry.at_finder:
            return
        self.events_seen += num_events
        self.events_rejected += num_events
        self.batches_rejected += 1
        self._count_rejection(reason, batch_id)
        self._done(delivery_id, rejected=True)

    def found(
        self,
        delivery_id: int,
        found: Any,
        kept: Iterable[int],
        num_events: int,
        filtered: int,
        truncated_peaks: int = 0,
    ) -> bool:
        """A finder read it: `kept` event indices go to a writer. True: done already
        (nothing kept), so there is nothing to submit."""
        entry = self._entry(delivery_id)
        if not entry.at_finder:
            raise LedgerError(f"delivery {delivery_id} was found twice")
        entry.found = found
        entry.unfiled = set(kept)
        entry.num_events = num_events
        entry.filtered = filtered
        self.events_seen += num_events
        self.events_filtered += filtered
        self.events_hits += len(entry.unfiled)
        self.peaks_truncated += truncated_peaks
        if entry.unfiled:
            return False
        self._done(delivery_id)
        return True

    # ------------------------------------------------------------------ writer facts

    def submitted(self, delivery_id: int, writer: int) -> None:
        """Its unfiled events are handed to `writer`."""
        self._entry(delivery_id).writer = writer

    def filed(self, events: Iterable[tuple[int, int]]) -> list[int]:
        """A writer renamed a file holding these (delivery id, event index): the deliveries
        now done, in order. An event filed twice is counted in `events_doubled`."""
        done = []
        for delivery_id, event_index in events:
            entry = self.entries.get(delivery_id)
            if entry is None or event_index not in entry.unfiled:
                self.events_doubled += 1
                continue
            entry.unfiled.discard(event_index)
            self.events_written += 1
            if not entry.unfiled:
                done.append(delivery_id)
                self._done(delivery_id)
        return done

    def refused(self, delivery_id: int, reason: str) -> None:
        """The writer could not take it (its images are gone and processing.on_missing_image
        = "reject"): its unfiled events are rejected."""
        entry = self.entries.get(delivery_id)
        if entry is None or not entry.unfiled:
            return
        self.events_rejected += len(entry.unfiled)
        entry.unfiled.clear()
        self._count_rejection(reason, getattr(entry.found, "batch_id", f"delivery {delivery_id}"))
        self._done(delivery_id)

    def writer_lost(self, writer: int) -> list[int]:
        """`writer` died: the deliveries it held with events not in a renamed file. They are
        marked unsubmitted; the caller submits each again (its `unsent` events only)."""
        lost = [d for d, e in self.entries.items() if e.writer == writer and e.unfiled]
        for delivery_id in lost:
            self.entries[delivery_id].writer = None
        return lost

    def unsent(self, delivery_id: int) -> set[int]:
        """The kept events of a delivery that are not in a renamed file yet."""
        return set(self._entry(delivery_id).unfiled)

    def writer_loads(self, num_writers: int) -> list[int]:
        """Unfiled events each writer holds: the least loaded gets the next delivery."""
        loads = [0] * num_writers
        for entry in self.entries.values():
            if entry.writer is not None and entry.writer < num_writers:
                loads[entry.writer] += len(entry.unfiled)
        return loads

    # ------------------------------------------------------------------ stopping

    def abandon(self) -> int:
        """Stop without finishing: what is in flight is counted abandoned, not lost."""
        n = len(self.entries)
        self.events_abandoned += self.events_pending  # seen, never to be written
        self.batches_abandoned += n
        self.entries.clear()
        return n

    # ------------------------------------------------------------------ reading

    @property
    def events_pending(self) -> int:
        return sum(len(e.unfiled) for e in self.entries.values())

    @property
    def at_finders(self) -> int:
        return sum(e.at_finder for e in self.entries.values())

    @property
    def all_at_writers(self) -> bool:
        """Every delivery in flight waits in a writer (none at a finder or being routed)."""
        return all(e.writer is not None for e in self.entries.values())

    def check(self) -> None:
        """The identities the README promises; LedgerError names the one that fails."""
        if self.batches_taken != self.batches_done + self.in_flight + self.batches_abandoned:
            raise LedgerError(
                f"taken {self.batches_taken} != done {self.batches_done} + in flight "
                f"{self.in_flight} + abandoned {self.batches_abandoned}"
            )
        accounted = (
            self.events_written
            + self.events_filtered
            + self.events_rejected
            + self.events_abandoned
            + self.events_pending
        )
        if self.events_seen != accounted:
            raise LedgerError(
                f"seen {self.events_seen} != written + filtered + rejected + abandoned + pending"
            )

    def counters(self) -> dict:
        """The books as stats keys (the coordinator adds the live parts)."""
        return {
            "batches_taken": self.batches_taken,
            "batches_done": self.batches_done,
            "batches_rejected": self.batches_rejected,
            "batches_abandoned": self.batches_abandoned,
            "batches_in_flight": self.in_flight,
            "batches_at_finders": self.at_finders,
            "events_seen": self.events_seen,
            "events_written": self.events_written,
            "events_filtered": self.events_filtered,
            "events_hits": self.events_hits,
            "events_rejected": self.events_rejected,
            "events_abandoned": self.events_abandoned,
            "events_doubled": self.events_doubled,
            "events_pending": self.events_pending,
            "peaks_truncated": self.peaks_truncated,
            "rejections": dict(self.rejections),
            "last_rejections": list(self.last_rejections),
            "credits": self.credits,
            "credits_in_use": self.in_flight,
        }

    # ------------------------------------------------------------------ inside

    def _entry(self, delivery_id: int) -> Entry:
        try:
            return self.entries[delivery_id]
        except KeyError:
            raise LedgerError(f"delivery {delivery_id} is not in flight") from None

    def _count_rejection(self, reason: str, batch_id: str) -> None:
        self.rejections[reason_kind(reason)] += 1
        self.last_rejections.append({"batch_id": batch_id, "reason": reason})

    def _done(self, delivery_id: int, rejected: bool = False) -> None:
        entry = self.entries.pop(delivery_id)
        self.batches_done += 1
        self.last_done = self.clock()
        latency = self.last_done - entry.taken_at
        self.latencies.append(latency)
        if self.on_done is not None:
            self.on_done(latency, rejected)


def reason_kind(reason: str) -> str:
    """A short key for counting rejections: the reason without the batch id prefix."""
    text = reason.split(": ", 1)[1] if reason.startswith("batch ") and ": " in reason else reason
    return text.split(":")[0][:80]
