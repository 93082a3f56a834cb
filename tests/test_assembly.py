"""assembly.FileAssembler: which kept events go into which file, and when a delivery is acked.

Exact bookkeeping with a fake clock: no Ray, no HDF5, no sleeping.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from cxi_async.core.assembly import FileAssembler, FileBatch
from cxi_async.core.messages import Ack, BatchResult, EventPeaks

REF = object()  # stands for the delivery's image ObjectRef


class Clock:
    """A clock that moves only when told to."""

    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def event(index: int, run: str | None = None) -> EventPeaks:
    n = 2
    return EventPeaks(
        event_index=index,
        fs=np.arange(n, dtype=np.float32),
        ss=np.arange(n, dtype=np.float32),
        total_intensity=np.ones(n, np.float32),
        npix=np.ones(n, np.int32),
        max_value=np.ones(n, np.float32),
        panel=np.zeros(n, np.int16),
        photon_energy_ev=9000.0,
        timestamp=index,
        run=run,
    )


def result(
    delivery_id: int,
    kept: list[int],
    batch_id: str | None = None,
    filtered: int = 0,
    image: list | None = None,
    runs: list[str | None] | None = None,
) -> BatchResult:
    runs = runs if runs is not None else [None] * len(kept)
    return BatchResult(
        delivery_id=delivery_id,
        batch_id=batch_id if batch_id is not None else f"batch-{delivery_id}",
        num_events=len(kept) + filtered,
        kept=[event(i, run) for i, run in zip(kept, runs, strict=True)],
        filtered=filtered,
        image=[REF] if image is None else image,
        num_panels=2,
        panel_shape=(4, 5),
    )


def done(
    delivery_id: int,
    written: int,
    filtered: int,
    rejected: int = 0,
    duplicates: int = 0,
    reason: str | None = None,
) -> Ack:
    """The expected ack: a delivery's events are written + filtered + rejected + duplicates."""
    return Ack(
        delivery_id,
        written=written,
        filtered=filtered,
        rejected=rejected,
        duplicates=duplicates,
        reason=reason,
        num_events=written + filtered + rejected + duplicates,
    )


def assembler(
    events_per_file: int = 3,
    max_file_age_s: float = 10.0,
    max_parked_deliveries: int = 100,
    clock: Clock | None = None,
    **kw,
) -> FileAssembler:
    return FileAssembler(
        events_per_file=events_per_file,
        max_file_age_s=max_file_age_s,
        max_parked_deliveries=max_parked_deliveries,
        clock=clock if clock is not None else Clock(),
        **kw,
    )


def keys(batch: FileBatch) -> list[tuple[int, int]]:
    """(delivery_id, event_index) of each event of a file, in order."""
    return [(e.delivery_id, e.event.event_index) for e in batch.events]


# ------------------------------------------------------------------ files by count


def test_file_of_exactly_events_per_file_splits_a_batch_across_two_files():
    a = assembler(events_per_file=3)
    assert a.add(result(1, [0, 1], filtered=1)) == []
    assert not a.due()
    assert a.add(result(2, [0, 1], filtered=2)) == []
    assert a.due()  # 4 events >= 3
    first = a.take_file()
    assert keys(first) == [(1, 0), (1, 1), (2, 0)]
    assert first.filtered == 3 and first.attempts == 0
    assert keys(FileBatch(a.open_events, 0)) == [(2, 1)]
    assert not a.due()  # one event left, young, few deliveries

    # Delivery 1 is complete; delivery 2 has an event still in the open file.
    assert a.file_written(first) == [done(1, written=2, filtered=1)]
    assert list(a.deliveries) == [2]

    second = a.take_file()
    assert keys(second) == [(2, 1)]
    assert second.filtered == 0
    assert a.file_written(second) == [done(2, written=2, filtered=2)]
    assert a.deliveries == {} and a.pending_events == 0
    assert a.take_file() is None


def test_pending_event_carries_what_the_writer_needs():
    a = assembler()
    res = result(7, [4], batch_id="b-7")
    res.images_missing = True
    a.add(res)
    (pending,) = a.open_events
    assert pending.delivery_id == 7
    assert pending.batch_id == "b-7"
    assert pending.event is res.kept[0]
    assert pending.image == [REF]
    assert pending.num_panels == 2
    assert pending.panel_shape == (4, 5)
    assert pending.images_missing is True


def test_a_big_delivery_fills_several_files_and_is_acked_after_the_last():
    a = assembler(events_per_file=2)
    a.add(result(1, [0, 1, 2, 3, 4]))
    files = []
    while a.due():
        files.append(a.take_file())
    assert [keys(f) for f in files] == [[(1, 0), (1, 1)], [(1, 2), (1, 3)]]
    assert a.pending_events == 1  # the fifth event waits for its file
    assert a.file_written(files[1]) == []
    assert a.file_written(files[0]) == []
    last = a.take_file()
    assert a.file_written(last) == [done(1, written=5, filtered=0)]


# ------------------------------------------------------------------ files by age, parking, flush


def test_age_based_close():
    clock = Clock(500.0)
    a = assembler(events_per_file=100, max_file_age_s=10.0, clock=clock)
    assert a.seconds_until_due() is None
    assert not a.due()
    a.add(result(1, [0]))
    assert a.seconds_until_due() == 10.0
    clock.t = 504.0
    a.add(result(2, [0]))  # a later event does not restart the age
    assert a.seconds_until_due() == 6.0
    assert not a.due()
    clock.t = 510.0
    assert a.seconds_until_due() == 0.0
    assert a.due()
    clock.t = 600.0
    assert a.seconds_until_due() == 0.0  # never negative
    assert keys(a.take_file()) == [(1, 0), (2, 0)]
    assert a.seconds_until_due() is None


def test_age_restarts_at_take_for_the_events_left_open():
    clock = Clock(0.0)
    a = assembler(events_per_file=2, max_file_age_s=10.0, clock=clock)
    a.add(result(1, [0, 1, 2]))
    clock.t = 3.0
    a.take_file()
    assert a.seconds_until_due() == 10.0  # the open file's clock starts at the take
    clock.t = 13.0
    assert a.due()


def test_early_close_when_parked_deliveries_reach_the_limit():
    a = assembler(events_per_file=100, max_parked_deliveries=3)
    a.add(result(1, [0, 1]))
    a.add(result(2, [0]))
    assert a.parked_deliveries == 2
    assert not a.due()
    a.add(result(3, [5]))
    assert a.parked_deliveries == 3
    assert a.due()
    assert keys(a.take_file()) == [(1, 0), (1, 1), (2, 0), (3, 5)]
    assert a.parked_deliveries == 0


def test_parked_counts_deliveries_with_events_in_the_open_file_only():
    a = assembler(events_per_file=2, max_parked_deliveries=2)
    a.add(result(1, [0, 1, 2]))
    a.take_file()  # (1, 0), (1, 1) in flight; (1, 2) open
    assert a.parked_deliveries == 1
    a.add(result(2, [0]))
    assert a.parked_deliveries == 2
    assert a.due()


def test_flush():
    a = assembler(events_per_file=100, max_parked_deliveries=100)
    assert not a.due(flush=True)  # nothing to write
    a.add(result(1, [3]))
    assert not a.due()
    assert a.due(flush=True)
    assert keys(a.take_file()) == [(1, 3)]
    assert not a.due(flush=True)


# ------------------------------------------------------------------ filtered, duplicates


def test_delivery_without_kept_events_is_acked_at_once_with_its_filtered_count():
    a = assembler()
    assert a.add(result(1, [], filtered=5)) == [done(1, written=0, filtered=5)]
    assert a.deliveries == {} and a.pending_events == 0
    assert not a.due(flush=True)


def test_filtered_counts_go_to_the_open_file():
    a = assembler(events_per_file=2)
    a.add(result(1, [], filtered=5))
    a.add(result(2, [0], filtered=1))
    a.add(result(3, [0, 1], filtered=2))
    first = a.take_file()
    assert first.filtered == 8  # everything filtered while this file was open
    a.add(result(4, [], filtered=4))
    second = a.take_file()
    assert keys(second) == [(3, 1)]
    assert second.filtered == 4


def test_a_resent_delivery_is_acked_at_once_as_duplicates():
    # A writer's replacement may be sent a delivery again that is already in a file.
    a = assembler(events_per_file=10)
    assert a.add(result(1, [0, 1, 2], filtered=1)) == []
    assert a.file_written(a.take_file()) == [done(1, written=3, filtered=1)]
    assert a.add(result(1, [0, 1, 2], filtered=1)) == [done(1, 0, filtered=1, duplicates=3)]
    assert a.duplicates == 3 and a.pending_events == 0


def test_a_partly_written_resend_writes_only_the_new_events():
    a = assembler(events_per_file=10)
    a.add(result(1, [0, 1]))
    a.file_written(a.take_file())
    assert a.add(result(1, [1, 2])) == []
    batch = a.take_file()
    assert keys(batch) == [(1, 2)]
    assert a.file_written(batch) == [done(1, written=1, filtered=0, duplicates=1)]
    assert a.duplicates == 1


def test_same_events_of_different_batches_are_not_duplicates():
    a = assembler(events_per_file=10)
    a.add(result(1, [0, 1], batch_id="a"))
    a.add(result(2, [0, 1], batch_id="b"))
    assert a.pending_events == 4 and a.duplicates == 0


def test_same_delivery_id_twice_is_ignored():
    a = assembler(events_per_file=10)
    a.add(result(1, [0, 1], filtered=3))
    assert a.add(result(1, [0, 1], filtered=3)) == []
    assert a.pending_events == 2
    assert a.duplicates == 2
    batch = a.take_file()
    assert batch.filtered == 3  # the repeat's filtered count is not added again
    assert a.file_written(batch) == [done(1, written=2, filtered=3)]


def test_remember_batches_bounds_the_dedup_memory():
    a = assembler(events_per_file=100, remember_batches=2)
    a.add(result(1, [0]))
    a.add(result(2, [0]))
    assert list(a.seen) == [1, 2]
    a.file_written(a.take_file())
    # A re-send of delivery 1 (a writer's replacement) refreshes it: 2 is then the oldest.
    assert a.add(result(1, [0])) == [done(1, written=0, filtered=0, duplicates=1)]
    a.add(result(3, [0]))
    assert list(a.seen) == [1, 3]
    assert a.add(result(2, [0])) == []  # forgotten: written again
    assert len(a.seen) == 2


def test_one_producer_batch_id_in_two_deliveries_is_written_twice():
    # The producer's ids restart with every job: two items with one id are two batches.
    a = assembler(events_per_file=100)
    assert a.add(result(1, [0, 1], batch_id="producer_0_batch_0")) == []
    assert a.add(result(2, [0, 1], batch_id="producer_0_batch_0")) == []
    assert a.duplicates == 0
    batch = a.take_file()
    assert keys(batch) == [(1, 0), (1, 1), (2, 0), (2, 1)]
    assert a.file_written(batch) == [done(1, written=2, filtered=0), done(2, written=2, filtered=0)]


# ------------------------------------------------------------------ failures


def test_failed_file_goes_back_first():
    a = assembler(events_per_file=2)
    a.add(result(1, [0, 1, 2, 3]))
    first = a.take_file()
    a.file_failed(first)
    assert first.attempts == 1
    assert a.pending_events == 4
    assert a.due()  # a retry is always due
    again = a.take_file()
    assert again is first  # before the open events
    a.file_failed(again)
    assert a.take_file().attempts == 2
    assert a.file_written(first) == []
    second = a.take_file()
    assert keys(second) == [(1, 2), (1, 3)]
    assert a.file_written(second) == [done(1, written=4, filtered=0)]


def test_retry_alone_is_due_even_with_an_empty_open_file():
    a = assembler(events_per_file=1)
    a.add(result(1, [0]))
    batch = a.take_file()
    assert not a.due(flush=True)
    a.file_failed(batch)
    assert a.due()
    assert a.take_file() is batch


def test_failed_files_are_retried_in_the_order_they_were_taken():
    a = assembler(events_per_file=1)
    a.add(result(1, [0, 1]))
    first, second = a.take_file(), a.take_file()
    a.file_failed(first)
    a.file_failed(second)
    assert a.take_file() is first
    assert a.take_file() is second


# ------------------------------------------------------------------ property


ops = st.lists(
    st.one_of(
        st.tuples(
            st.just("add"),
            st.integers(0, 7),  # delivery id (repeats happen)
            st.sampled_from(["a", "b", "c"]),  # batch id (copies happen)
            st.lists(st.integers(0, 5), max_size=5, unique=True),  # kept event indices
            st.integers(0, 3),  # filtered
        ),
        st.tuples(st.just("take")),
        st.tuples(st.just("written"), st.integers(0, 10)),
        st.tuples(st.just("failed"), st.integers(0, 10)),
    ),
    max_size=40,
)


@settings(max_examples=200, deadline=None)
@given(ops=ops, events_per_file=st.integers(1, 4), parked=st.integers(1, 3))
def test_every_kept_event_is_acked_exactly_once(ops, events_per_file, parked):
    a = assembler(events_per_file=events_per_file, max_parked_deliveries=parked)
    in_flight: list[FileBatch] = []
    added: dict[int, BatchResult] = {}  # first result of each delivery id
    acks: list[Ack] = []
    written_events: list[tuple[int, int]] = []

    def write(batch: FileBatch) -> None:
        written_events.extend((e.delivery_id, e.event.event_index) for e in batch.events)
        acks.extend(a.file_written(batch))

    for op in ops:
        if op[0] == "add":
            _, did, bid, kept, filtered = op
            if did in {ack.delivery_id for ack in acks}:
                continue  # delivery ids are never reused once acked
            res = result(did, kept, batch_id=bid, filtered=filtered)
            added.setdefault(did, res)
            acks.extend(a.add(res))
        elif op[0] == "take":
            batch = a.take_file()
            if batch is not None:
                in_flight.append(batch)
        elif op[0] in ("written", "failed") and in_flight:
            batch = in_flight.pop(op[1] % len(in_flight))
            if op[0] == "written":
                write(batch)
            else:
                a.file_failed(batch)

    # Drain: write everything still held.
    for batch in in_flight:
        write(batch)
    while (batch := a.take_file()) is not None:
        write(batch)

    assert a.pending_events == 0 and a.deliveries == {}
    acked = Counter(ack.delivery_id for ack in acks)
    assert acked == Counter(set(added)), "every delivery acked exactly once"
    for ack in acks:
        res = added[ack.delivery_id]
        assert ack.written + ack.rejected + ack.duplicates == len(res.kept)
        assert ack.filtered == res.filtered
        assert ack.num_events == res.num_events
    assert sum(ack.written for ack in acks) == len(written_events)
    assert len(set(written_events)) == len(written_events), "an event was written twice"


# ------------------------------------------------------------------ runs from metadata


def runs_of(batch: FileBatch) -> list[str | None]:
    return [e.event.run for e in batch.events]


def test_a_change_of_run_closes_the_open_file():
    a = assembler(events_per_file=10)
    a.add(result(1, [0, 1], runs=["r0001", "r0001"], filtered=1))
    assert not a.due()
    a.add(result(2, [0, 1, 2], runs=["r0001", "r0002", "r0002"], filtered=3))
    assert a.due()  # the r0001 file is closed though it holds 3 of 10 events
    first = a.take_file()
    assert keys(first) == [(1, 0), (1, 1), (2, 0)] and set(runs_of(first)) == {"r0001"}
    assert first.filtered == 1
    assert not a.due()  # the r0002 file stays open
    a.add(result(3, [0], runs=["r0002"]))
    second = a.take_file()
    assert keys(second) == [(2, 1), (2, 2), (3, 0)] and set(runs_of(second)) == {"r0002"}
    assert second.filtered == 3
    assert a.file_written(first) == [done(1, written=2, filtered=1)]
    assert a.file_written(second) == [done(2, written=3, filtered=3), done(3, 1, 0)]


def test_run_files_close_in_order_and_respect_events_per_file():
    a = assembler(events_per_file=2)
    a.add(result(1, [0, 1, 2, 3, 4, 5], runs=["a", "a", "a", "b", None, None]))
    files = []
    while (batch := a.take_file()) is not None:
        files.append(batch)
    assert [runs_of(f) for f in files] == [["a", "a"], ["a"], ["b"], [None, None]]
    assert [f.order for f in files] == [0, 1, 2, 3]
    assert a.pending_events == 0


def test_retry_goes_before_files_closed_by_a_run_change():
    a = assembler(events_per_file=10)
    a.add(result(1, [0], runs=["a"]))
    failed = a.take_file()
    a.file_failed(failed)
    a.add(result(2, [0, 1], runs=["b", "c"]))
    assert a.pending_events == 3
    assert runs_of(a.take_file()) == ["a"]
    assert runs_of(a.take_file()) == ["b"]
    assert not a.due()  # "c" stays open until it is due
    assert runs_of(a.take_file()) == ["c"]
