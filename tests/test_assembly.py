"""assembly.FileAssembler: which kept events go into which file, and when a file is due.

Exact bookkeeping with a fake clock: no Ray, no HDF5, no sleeping.
"""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from cxi_async.core.assembly import FileAssembler, FileBatch
from cxi_async.core.messages import EventPeaks, Found

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
) -> Found:
    runs = runs if runs is not None else [None] * len(kept)
    return Found(
        delivery_id=delivery_id,
        batch_id=batch_id if batch_id is not None else f"batch-{delivery_id}",
        num_events=len(kept) + filtered,
        kept=[event(i, run) for i, run in zip(kept, runs, strict=True)],
        filtered=filtered,
        image=[REF] if image is None else image,
        num_panels=2,
        panel_shape=(4, 5),
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
    return batch.ids


# ------------------------------------------------------------------ files by count


def test_file_of_exactly_events_per_file_splits_a_batch_across_two_files():
    a = assembler(events_per_file=3)
    a.add(result(1, [0, 1], filtered=1))
    assert not a.due()
    a.add(result(2, [0, 1], filtered=2))
    assert a.due()  # 4 events >= 3
    first = a.take_file()
    assert keys(first) == [(1, 0), (1, 1), (2, 0)]
    assert first.filtered == 3 and first.attempts == 0
    assert keys(FileBatch(a.open_events, 0)) == [(2, 1)]
    assert not a.due()  # one event left, young, few deliveries
    second = a.take_file()
    assert keys(second) == [(2, 1)]
    assert second.filtered == 0
    assert a.pending_events == 0
    assert a.take_file() is None


def test_an_event_keeps_the_batch_it_came_in():
    a = assembler()
    res = result(7, [4], batch_id="b-7")
    a.add(res)
    ((found, event),) = a.open_events
    assert found is res and event is res.kept[0]  # image, layout and pad offset are there


def test_a_big_delivery_fills_several_files():
    a = assembler(events_per_file=2)
    a.add(result(1, [0, 1, 2, 3, 4]))
    files = []
    while a.due():
        files.append(a.take_file())
    assert [keys(f) for f in files] == [[(1, 0), (1, 1)], [(1, 2), (1, 3)]]
    assert a.pending_events == 1  # the fifth event waits for its file
    assert keys(a.take_file()) == [(1, 4)]


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


# ------------------------------------------------------------------ filtered counts


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
    assert keys(a.take_file()) == [(1, 2), (1, 3)]


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
            st.lists(st.integers(0, 5), max_size=5, unique=True),  # kept event indices
            st.integers(0, 3),  # filtered
            st.sampled_from([None, "r1", "r2"]),  # run
        ),
        st.tuples(st.just("take"), st.booleans()),  # flush?
        st.tuples(st.just("written"), st.integers(0, 10)),
        st.tuples(st.just("failed"), st.integers(0, 10)),
    ),
    max_size=40,
)


@settings(max_examples=200, deadline=None)
@given(ops=ops, events_per_file=st.integers(1, 4), parked=st.integers(1, 3))
def test_every_event_lands_in_exactly_one_file_of_one_run(ops, events_per_file, parked):
    a = assembler(events_per_file=events_per_file, max_parked_deliveries=parked)
    in_flight: list[FileBatch] = []
    added: list[tuple[int, int]] = []
    filtered_in = 0
    written: list[FileBatch] = []
    for op in ops:
        if op[0] == "add":
            _, kept, filtered, run = op
            res = result(len(added) + 100, kept, filtered=filtered, runs=[run] * len(kept))
            added.extend((res.delivery_id, i) for i in kept)
            filtered_in += filtered
            a.add(res)
        elif op[0] == "take":
            if a.due(flush=op[1]) and (batch := a.take_file()) is not None:
                in_flight.append(batch)
        elif in_flight:
            batch = in_flight.pop(op[1] % len(in_flight))
            if op[0] == "written":
                written.append(batch)
            else:
                a.file_failed(batch)
    written.extend(in_flight)
    while (batch := a.take_file()) is not None:
        written.append(batch)
    assert a.pending_events == 0
    events = [key for batch in written for key in batch.ids]
    assert sorted(events) == sorted(added), "every event in exactly one file"
    assert sum(b.filtered for b in written) <= filtered_in
    for batch in written:
        assert 1 <= len(batch.events) <= events_per_file
        assert len(set(runs_of(batch))) == 1, "a file holds one run"


# ------------------------------------------------------------------ runs from metadata


def runs_of(batch: FileBatch) -> list[str | None]:
    return [event.run for _, event in batch.events]


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
