"""The ledger alone: exact cases, then hypothesis over every order of facts."""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from cxi_async.core.ledger import Ledger, LedgerError, reason_kind


def test_a_delivery_holds_its_credit_until_every_kept_event_is_filed():
    ledger = Ledger(credits=2)
    d = ledger.take(shard=0)
    assert ledger.free_credits == 1
    assert ledger.dispatched(d) == 1
    assert not ledger.found(d, "found", kept=[0, 2], num_events=3, filtered=1)
    assert (ledger.events_hits, ledger.events_written) == (2, 0)  # judged, not yet filed
    ledger.submitted(d, writer=1)
    assert ledger.writer_loads(2) == [0, 2]
    assert ledger.filed([(d, 0)]) == []
    assert ledger.free_credits == 1
    assert ledger.filed([(d, 2)]) == [d]
    assert ledger.free_credits == 2
    ledger.check()
    assert ledger.counters() | {"rejections": {}, "last_rejections": []} == ledger.counters()
    c = ledger.counters()
    assert (c["batches_done"], c["events_written"], c["events_filtered"]) == (1, 2, 1)
    assert c["events_hits"] == 2
    assert len(ledger.latencies) == 1


def test_nothing_kept_is_done_at_once():
    ledger = Ledger(credits=1)
    d = ledger.take(0)
    assert ledger.found(d, "found", kept=[], num_events=4, filtered=4)
    assert ledger.free_credits == 1
    ledger.check()


def test_an_unread_take_is_as_if_never_taken():
    ledger = Ledger(credits=1)
    d = ledger.take(0)
    ledger.unread(d)
    assert ledger.batches_taken == 0
    assert ledger.free_credits == 1
    ledger.check()


def test_rejection_counts_the_events_and_the_reason():
    ledger = Ledger(credits=1)
    d = ledger.take(0)
    ledger.rejected(d, 5, "batch b7: logits have NaN", "b7")
    ledger.check()
    c = ledger.counters()
    assert (c["batches_rejected"], c["events_rejected"]) == (1, 5)
    assert c["rejections"] == {"logits have NaN": 1}
    assert c["last_rejections"] == [{"batch_id": "b7", "reason": "batch b7: logits have NaN"}]


def test_a_lost_writer_gives_back_only_what_it_had_not_renamed():
    ledger = Ledger(credits=3)
    a, b, c = (ledger.take(0) for _ in range(3))
    for d in (a, b, c):
        ledger.found(d, d, kept=[0, 1], num_events=2, filtered=0)
    ledger.submitted(a, 0)
    ledger.submitted(b, 0)
    ledger.submitted(c, 1)
    ledger.filed([(a, 0), (a, 1), (b, 0)])
    assert ledger.writer_lost(0) == [b]
    assert ledger.unsent(b) == {1}
    assert ledger.writer_loads(2) == [0, 2]
    assert not ledger.all_at_writers
    ledger.submitted(b, 1)
    assert ledger.filed([(b, 1), (c, 0), (c, 1)]) == [b, c]
    ledger.check()


def test_an_event_filed_twice_is_counted_not_written_twice():
    ledger = Ledger(credits=1)
    d = ledger.take(0)
    ledger.found(d, d, kept=[0, 1], num_events=2, filtered=0)
    ledger.submitted(d, 0)
    ledger.filed([(d, 0)])
    ledger.filed([(d, 0)])
    assert (ledger.events_written, ledger.events_doubled) == (1, 1)
    ledger.check()


def test_refused_rejects_the_unfiled_events():
    ledger = Ledger(credits=1)
    d = ledger.take(0)
    ledger.found(d, d, kept=[0, 1, 2], num_events=4, filtered=1)
    ledger.submitted(d, 0)
    ledger.refused(d, "the detector image is gone")
    assert (ledger.events_rejected, ledger.free_credits) == (3, 1)
    ledger.check()


def test_abandon_counts_what_stop_did_not_finish():
    ledger = Ledger(credits=3)
    a = ledger.take(0)
    ledger.take(1)  # still at a finder
    ledger.found(a, a, kept=[0, 1], num_events=3, filtered=1)
    ledger.submitted(a, 0)
    ledger.filed([(a, 0)])
    assert ledger.abandon() == 2
    ledger.check()
    assert (ledger.batches_abandoned, ledger.events_abandoned) == (2, 1)


def test_facts_that_contradict_the_books_raise():
    ledger = Ledger(credits=1)
    d = ledger.take(0)
    with pytest.raises(LedgerError):
        ledger.take(0)
    ledger.found(d, d, kept=[0], num_events=1, filtered=0)
    with pytest.raises(LedgerError, match="found twice"):
        ledger.found(d, d, kept=[0], num_events=1, filtered=0)
    with pytest.raises(LedgerError, match="not in flight"):
        ledger.dispatched(99)


def test_reason_kind_drops_the_batch_prefix():
    assert reason_kind("batch 12: bad dtype: float16") == "bad dtype"
    assert reason_kind("finder error: boom") == "finder error"


class LedgerOrders(RuleBasedStateMachine):
    """Any order of takes, finder and writer facts, lost writers and stops keeps the books,
    and every kept event of a delivery ends in exactly one renamed file."""

    NUM_WRITERS = 2

    def __init__(self) -> None:
        super().__init__()
        self.ledger = Ledger(credits=4)
        self.held: dict[int, set[tuple[int, int]]] = {w: set() for w in range(self.NUM_WRITERS)}
        self.files: list[tuple[int, int]] = []  # every event a model writer renamed
        self.found_kept: dict[int, set[int]] = {}

    @precondition(lambda self: self.ledger.free_credits > 0)
    @rule(shard=st.integers(0, 2))
    def take(self, shard):
        self.ledger.dispatched(self.ledger.take(shard))

    def _at_finder(self):
        return [d for d, e in self.ledger.entries.items() if e.at_finder]

    @precondition(lambda self: self._at_finder())
    @rule(data=st.data(), kept=st.sets(st.integers(0, 5), max_size=6), extra=st.integers(0, 3))
    def find(self, data, kept, extra):
        d = data.draw(st.sampled_from(self._at_finder()))
        num_events = (max(kept) + 1 if kept else 0) + extra
        filtered = num_events - len(kept)
        self.found_kept[d] = set(kept)
        self.ledger.found(d, d, kept=kept, num_events=num_events, filtered=filtered)

    @precondition(lambda self: self._at_finder())
    @rule(data=st.data(), unread=st.booleans())
    def reject_or_unread(self, data, unread):
        d = data.draw(st.sampled_from(self._at_finder()))
        if unread:
            self.ledger.unread(d)
        else:
            self.ledger.rejected(d, 3, "batch x: unreadable", "x")

    def _unsubmitted(self):
        return [d for d, e in self.ledger.entries.items() if not e.at_finder and e.writer is None]

    @precondition(lambda self: self._unsubmitted())
    @rule(data=st.data())
    def submit(self, data):
        d = data.draw(st.sampled_from(self._unsubmitted()))
        loads = self.ledger.writer_loads(self.NUM_WRITERS)
        w = loads.index(min(loads))
        self.ledger.submitted(d, w)
        self.held[w] |= {(d, e) for e in self.ledger.unsent(d)}

    @precondition(lambda self: any(self.held.values()))
    @rule(data=st.data())
    def rename_a_file(self, data):
        w = data.draw(st.sampled_from([w for w, h in self.held.items() if h]))
        events = data.draw(st.sets(st.sampled_from(sorted(self.held[w])), min_size=1))
        self.held[w] -= events
        self.files.extend(events)
        self.ledger.filed(sorted(events))

    @rule(w=st.integers(0, NUM_WRITERS - 1))
    def lose_a_writer(self, w):
        self.held[w].clear()
        self.ledger.writer_lost(w)

    @invariant()
    def books_balance(self):
        self.ledger.check()
        assert 0 <= self.ledger.free_credits <= self.ledger.credits
        assert len(self.files) == len(set(self.files)), "an event was renamed twice"
        assert self.ledger.events_doubled == 0

    def teardown(self):
        """Finish the run: everything found is written exactly once."""
        for d in self._at_finder():
            self.ledger.found(d, d, kept=[0], num_events=1, filtered=0)
            self.found_kept[d] = {0}
        for d in self._unsubmitted():
            self.ledger.submitted(d, 0)
            self.held[0] |= {(d, e) for e in self.ledger.unsent(d)}
        for w in self.held:
            self.ledger.filed(sorted(self.held[w]))
            self.files.extend(self.held[w])
        assert self.ledger.in_flight == 0
        self.ledger.check()
        written = {d: {e for dd, e in self.files if dd == d} for d in {d for d, _ in self.files}}
        for d, events in written.items():
            assert events == self.found_kept[d]


LedgerOrders.TestCase.settings = settings(max_examples=300, stateful_step_count=40, deadline=None)
test_ledger_orders = LedgerOrders.TestCase
