"""replay/pacing.py: the replay producer's put schedule, constant and stepped."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cxi_async.replay.pacing import Pacer, rate_at


def test_rate_at():
    steps = [(10.0, 400.0), (30.0, 50.0)]
    assert rate_at(0.0, 100.0, steps) == 100.0
    assert rate_at(9.999, 100.0, steps) == 100.0
    assert rate_at(10.0, 100.0, steps) == 400.0
    assert rate_at(29.0, None, steps) == 400.0
    assert rate_at(1e6, None, steps) == 50.0
    assert rate_at(5.0, None, steps) is None
    assert rate_at(5.0, 20.0) == 20.0
    assert rate_at(0.0, None, [(0.0, 8.0)]) == 8.0


def test_constant_rate_is_the_old_schedule():
    """batch_size / rate apart from the start, whatever the clock says (catch-up kept)."""
    pacer = Pacer(8, 100.0, (), start=5.0)
    assert pacer.paced
    assert [pacer.due(now=5.0) for _ in range(4)] == [5.0, 5.08, 5.16, 5.24]
    old = [5.0]
    for _ in range(50):
        old.append(old[-1] + 8 / 100.0)
    pacer = Pacer(8, 100.0, (), start=5.0)
    assert [pacer.due(now=1e9) for _ in range(51)] == old  # same arithmetic, bit for bit


def test_unpaced():
    pacer = Pacer(8, None, (), start=0.0)
    assert not pacer.paced
    assert pacer.due(3.0) == 3.0


def test_steps_change_the_rate_at_their_times():
    # 8-event batches: 1 batch/s for 4 s, then 4 batches/s, then 0.5 batch/s from 6 s
    pacer = Pacer(8, 8.0, [(4.0, 32.0), (6.0, 4.0)], start=100.0)
    due = [pacer.due(100.0) - 100.0 for _ in range(16)]
    assert due[:5] == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert due[5:13] == pytest.approx([4.25, 4.5, 4.75, 5.0, 5.25, 5.5, 5.75, 6.0])
    assert due[13:] == pytest.approx([8.0, 10.0, 12.0])


def test_a_batch_spanning_a_step_is_paced_by_both_rates():
    # 4 events at 2/s (2 s), then a step to 8/s at 1 s: 2 events by 1 s, 2 more by 1.25 s
    pacer = Pacer(4, 2.0, [(1.0, 8.0)], start=0.0)
    assert pacer.due(0.0) == 0.0
    assert pacer.due(0.0) == pytest.approx(1.25)


def test_unpaced_until_the_first_step():
    pacer = Pacer(8, None, [(10.0, 16.0)], start=0.0)
    assert pacer.paced
    assert [pacer.due(now) for now in (0.0, 1.0, 9.5)] == [0.0, 1.0, 9.5]
    assert pacer.due(10.2) == 10.2  # the first paced batch goes at once ...
    assert pacer.due(10.2) == pytest.approx(10.7)  # ... then 0.5 s apart
    assert pacer.due(10.2) == pytest.approx(11.2)


@settings(max_examples=200, deadline=None)
@given(
    batch=st.integers(1, 64),
    base=st.floats(0.5, 1000.0),
    steps=st.lists(st.tuples(st.floats(0.0, 100.0), st.floats(0.5, 1000.0)), max_size=5),
)
def test_events_put_follow_the_integral_of_the_rate(batch, base, steps):
    steps = sorted({s: r for s, r in steps}.items())
    pacer = Pacer(batch, base, steps, start=0.0)
    times = [pacer.due(0.0) for _ in range(200)]
    assert times == sorted(times)
    t_end = times[-1]

    def events_by(t: float) -> float:
        edges = [0.0] + [s for s, _ in steps if s < t] + [t]
        return sum((b - a) * rate_at(a, base, steps) for a, b in itertools.pairwise(edges))

    # batch k is due exactly when k batches' worth of events has been paced
    assert events_by(t_end) == pytest.approx(199 * batch, rel=1e-6)
