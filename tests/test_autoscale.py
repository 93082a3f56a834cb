"""core/autoscale.py: the adaptive pool's policy, credits, memory bound, placement count."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cxi_async.config import load_config
from cxi_async.core.autoscale import (
    BusyMeter,
    CannotGrow,
    PoolPolicy,
    Resize,
    credits_for,
    memory_bound,
    placeable,
)

ROOM = 100  # can_place when the cluster is not the limit


def feed(policy: PoolPolicy, samples, size: int, can_place: int = ROOM, start: float = 0.0):
    """Observe (depth, busy) once a second; the pool follows every Resize. Returns the
    decisions (t, decision) that were not None and the final size."""
    out = []
    for k, (depth, busy) in enumerate(samples):
        d = policy.observe(start + k, depth, busy, size, can_place)
        if d is not None:
            out.append((start + k, d))
        if isinstance(d, Resize):
            size = d.target
    return out, size


def simulate(policy: PoolPolicy, rates, size: int, mu: float = 1.0, capacity: float = 100.0):
    """A fluid Q2 in front of the pool, one tick a second: ``rates[t]`` batches arrive, each
    finder does ``mu`` batches a second. Returns the pool size after each tick and the
    decisions."""
    depth = 0.0
    sizes, decisions = [], []
    for t, rate in enumerate(rates):
        work = depth + rate
        done = min(work, size * mu)
        depth = min(capacity, work - done)
        d = policy.observe(float(t), depth, done / (size * mu), size, ROOM)
        if d is not None:
            decisions.append(d)
        if isinstance(d, Resize):
            size = d.target
        sizes.append(size)
    return sizes, decisions


# ------------------------------------------------------------------ growing


def test_grows_on_a_rising_backlog_with_busy_finders():
    policy = PoolPolicy(1, 8)
    out, size = feed(policy, [(2, 0.96), (3, 0.96), (4, 0.96), (5, 0.96)], 4)
    assert out == [(3, Resize(3, 4, 6, "Q2 depth 5 and rising, finders 96 % busy: 4 → 6"))]
    assert size == 6 and policy.history == [out[0][1]]
    assert out[0][1].grow


def test_grows_on_a_high_backlog_that_does_not_fall():
    out, _ = feed(PoolPolicy(1, 8), [(10, 1.0)] * 4, 2)
    assert [d.reason for _, d in out] == ["Q2 depth 10, high for 3 s, finders 100 % busy: 2 → 3"]


def test_no_growth_before_the_window_is_full():
    out, _ = feed(PoolPolicy(1, 8), [(2, 1.0), (3, 1.0), (4, 1.0)], 2)
    assert out == []


@pytest.mark.parametrize(
    ("samples", "why"),
    [
        ([(max(1, 12 - 4 * k), 1.0) for k in range(12)], "a backlog drained within the window"),
        ([(10, 0.5)] * 12, "idle finders: the writers or the disk are short, not finders"),
        ([(1, 1.0)] * 12, "a constant backlog below grow_depth"),
        ([(0, 1.0)] * 12, "no backlog"),
        ([(5, 1.0), (6, 1.0), (0, 1.0), (7, 1.0), (8, 1.0), (0, 1.0)] * 2, "broken runs"),
    ],
)
def test_no_growth(samples, why):
    out, _ = feed(PoolPolicy(1, 8), samples, 2)
    assert out == [], why


def test_step_sizes_and_caps():
    assert feed(PoolPolicy(1, 20), [(5, 1.0)] * 4, 1)[1] == 2  # +1
    assert feed(PoolPolicy(1, 20), [(5, 1.0)] * 4, 10)[1] == 15  # x 1.5
    (_, d), *_ = feed(PoolPolicy(1, 8), [(5, 1.0)] * 4, 6)[0]
    assert d.reason.endswith(": 6 → 8 (processing.max_finders = 8)")
    (_, d), *_ = feed(PoolPolicy(1, 8), [(5, 1.0)] * 4, 4, can_place=1)[0]
    assert d.reason.endswith(": 4 → 5 (the cluster can place only 1 more finder)")
    (_, d), *_ = feed(PoolPolicy(1, 8), [(5, 1.0)] * 4, 2, can_place=1)[0]
    assert d.reason.endswith(": 2 → 3")  # what it wanted anyway


def test_cool_down_between_changes():
    policy = PoolPolicy(1, 50, cooldown_s=10.0)
    out, size = feed(policy, [(5 + k, 1.0) for k in range(40)], 2)
    times = [t for t, _ in out]
    assert times == [3, 13, 23, 33]
    assert [d.target for _, d in out] == [3, 5, 8, 12] and size == 12


def test_the_window_starts_after_a_change():
    policy = PoolPolicy(1, 50, cooldown_s=0.0)
    out, _ = feed(policy, [(5 + k, 1.0) for k in range(9)], 2)
    assert [t for t, _ in out] == [3, 7]  # 4 more samples after the change at t = 3


def test_unknown_observation_restarts_the_windows():
    samples = [(2, 1.0), (3, 1.0), (None, 1.0), (4, 1.0), (5, 1.0), (6, 1.0), (7, 1.0)]
    out, _ = feed(PoolPolicy(1, 8), samples, 2)
    assert [t for t, _ in out] == [6]
    out, _ = feed(PoolPolicy(1, 8), [(2, 1.0), (3, None), (4, 1.0), (5, 1.0)], 2)
    assert out == []


# ------------------------------------------------------------------ the ceiling


def test_cannot_grow_at_max_is_said_once():
    policy = PoolPolicy(1, 4)
    out, _ = feed(policy, [(5 + k, 0.96) for k in range(60)], 4)
    assert len(out) == 1
    t, notice = out[0]
    assert (t, notice.size, notice.limit) == (3, 4, "max_finders")
    assert notice.message == (
        "Q2 depth 8 and rising, finders 96 % busy, but the pool cannot grow: it is at "
        "processing.max_finders = 4; raise max_finders if the cluster has room, else add nodes."
    )
    assert policy.blocked is notice
    assert policy.snapshot()["cannot_grow"] == notice.message


def test_cannot_grow_when_the_cluster_is_full():
    policy = PoolPolicy(1, 8)
    out, _ = feed(policy, [(10, 1.0)] * 30, 3, can_place=0)
    assert len(out) == 1
    notice = out[0][1]
    assert isinstance(notice, CannotGrow) and notice.limit == "cluster"
    assert notice.message == (
        "Q2 depth 10, high for 3 s, finders 100 % busy, but the pool cannot grow: "
        "the Ray cluster can place no more finders (3 of processing.max_finders = 8); add "
        "nodes, or lower processing.finder_num_cpus or the [placement] settings."
    )


def test_cannot_grow_episode_ends_after_a_calm_period_or_a_change():
    policy = PoolPolicy(1, 4, shrink_after_s=30.0)
    busy = [(10, 1.0)] * 10
    calm = [(0, 0.9)] * 29
    out, _ = feed(policy, busy + calm + busy, 4)
    assert len(out) == 1  # 29 s of calm: the same episode
    assert policy.blocked is not None
    policy = PoolPolicy(1, 4, shrink_after_s=30.0)
    out, _ = feed(policy, busy + [(0, 0.9)] * 31 + busy, 4)
    assert [t for t, _ in out] == [3, 44]  # a new episode, said again
    policy = PoolPolicy(1, 8)
    out, size = feed(policy, [(10, 1.0)] * 6, 3, can_place=0)
    assert policy.blocked is not None
    out, size = feed(policy, [(10, 1.0)] * 20, size, can_place=5, start=6)
    assert isinstance(out[0][1], Resize) and policy.blocked is None


def test_below_min_grows_to_min_when_it_can():
    policy = PoolPolicy(3, 8)
    d = policy.observe(0.0, 0, 0.0, 1, ROOM)
    assert d == Resize(0.0, 1, 3, "below processing.min_finders = 3: 1 → 3")
    policy = PoolPolicy(3, 8)
    d = policy.observe(0.0, 0, 0.0, 1, 1)
    assert isinstance(d, CannotGrow) and d.limit == "cluster"
    assert policy.observe(1.0, 0, 0.0, 1, 1) is None  # once
    d = PoolPolicy(1, 4).observe(0.0, 0, 0.0, 6, 0)
    assert d == Resize(0.0, 6, 4, "above processing.max_finders = 4: 6 → 4")


# ------------------------------------------------------------------ shrinking


def test_shrinks_by_one_after_a_sustained_idle_period():
    policy = PoolPolicy(1, 8, shrink_after_s=30.0)
    out, size = feed(policy, [(0, 0.25)] * 31, 6)
    assert out == [(30, Resize(30, 6, 5, "Q2 empty for 30 s, finders 25 % busy: 6 → 5"))]
    assert size == 5
    assert feed(PoolPolicy(1, 8), [(0, 0.25)] * 30, 6)[0] == []


def test_shrink_judges_the_smaller_pool():
    # 2 finders 50 % busy: one alone would be 100 % busy
    assert feed(PoolPolicy(1, 8), [(0, 0.5)] * 100, 2)[0] == []
    # 4 finders 45 % busy: 3 would be 60 % busy, the limit; then 3 at 60 %: 2 would be 90 %
    out, size = feed(PoolPolicy(1, 8), [(0, 0.45)] * 31 + [(0, 0.6)] * 100, 4)
    assert [d.target for _, d in out] == [3] and size == 3


def test_idle_needs_an_empty_q2_and_stops_at_min():
    assert feed(PoolPolicy(1, 8), [(1, 0.1)] * 100, 4)[0] == []
    out, size = feed(PoolPolicy(2, 8), [(0, 0.0)] * 200, 4)
    assert size == 2 and [d.target for _, d in out] == [3, 2]
    assert out[1][0] - out[0][0] >= 30


# ------------------------------------------------------------------ whole loads


def test_stepped_load_grows_then_shrinks_within_bounds():
    rates = [1.5] * 20 + [6.0] * 120 + [1.0] * 300
    sizes, decisions = simulate(PoolPolicy(1, 8), rates, 2)
    peak = max(sizes)
    assert 6 <= peak <= 8 and sizes[19] == 2
    assert sizes.index(peak) < 140  # grown during the high phase
    assert sizes[-1] < peak and sizes[-1] >= 1
    grows = [d for d in decisions if isinstance(d, Resize) and d.grow]
    shrinks = [d for d in decisions if isinstance(d, Resize) and not d.grow]
    assert grows and shrinks and max(d.at for d in grows) < min(d.at for d in shrinks)
    # after the step up, the backlog stops growing within a few cool-downs
    assert sizes[20 + 40] >= 6


def test_config_policy():
    assert PoolPolicy.from_config(load_config()) is None
    cfg = load_config(
        overrides=["processing.min_finders=1", "processing.max_finders=6", "autoscale.cooldown_s=4"]
    )
    policy = PoolPolicy.from_config(cfg)
    assert policy is not None
    assert (policy.min_finders, policy.max_finders, policy.cooldown_s) == (1, 6, 4.0)
    assert (policy.grow_busy, policy.shrink_busy, policy.grow_factor) == (0.85, 0.6, 1.5)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"min_finders": 0, "max_finders": 2},
        {"min_finders": 3, "max_finders": 2},
        {"min_finders": 1, "max_finders": 2, "shrink_busy": 0.9},
        {"min_finders": 1, "max_finders": 2, "grow_factor": 2.0},
        {"min_finders": 1, "max_finders": 2, "grow_factor": 0.5},
        {"min_finders": 1, "max_finders": 2, "grow_depth": 0},
        {"min_finders": 1, "max_finders": 2, "cooldown_s": -1},
    ],
)
def test_policy_rejects_bad_settings(kwargs):
    with pytest.raises(ValueError):
        PoolPolicy(**kwargs)


# ------------------------------------------------------------------ properties


@st.composite
def policies(draw):
    low = draw(st.integers(1, 4))
    high = draw(st.integers(low, 12))
    grow_busy = draw(st.floats(0.5, 1.0))
    factor = draw(st.floats(1.0, 2.0))
    shrink = draw(st.floats(0.0, min(grow_busy - 0.01, 1 / factor)))
    return PoolPolicy(
        low,
        high,
        grow_busy=grow_busy,
        shrink_busy=shrink,
        grow_factor=factor,
        grow_depth=draw(st.integers(1, 5)),
        grow_after_s=draw(st.floats(0.0, 5.0)),
        shrink_after_s=draw(st.floats(0.0, 40.0)),
        cooldown_s=draw(st.floats(0.0, 15.0)),
    )


observation = st.tuples(
    st.floats(0.0, 3.0),  # seconds since the last observation
    st.one_of(st.none(), st.integers(0, 200)),  # Q2 depth
    st.one_of(st.none(), st.floats(0.0, 1.0)),  # busy fraction
    st.integers(0, 6),  # can place
    st.booleans(),  # the pool follows the decision (else: it did not, e.g. a failed start)
)


@settings(max_examples=300, deadline=None)
@given(policy=policies(), obs=st.lists(observation, max_size=200), size0=st.integers(1, 14))
def test_every_resize_within_bounds_placeable_and_cooled_down(policy, obs, size0):
    now, size, last = 0.0, size0, None
    for dt, depth, busy, can_place, follow in obs:
        now += dt
        d = policy.observe(now, depth, busy, size, can_place)
        if isinstance(d, Resize):
            assert policy.min_finders <= d.target <= policy.max_finders
            assert d.old == size and d.target != size
            if d.grow:
                assert d.target <= size + can_place
            if last is not None:
                assert now - last >= policy.cooldown_s - 1e-6
            last = now
            if follow:
                size = d.target
        elif isinstance(d, CannotGrow):
            assert policy.blocked is d


@settings(max_examples=200, deadline=None)
@given(
    policy=policies(),
    rate=st.floats(0.0, 15.0),
    size0=st.integers(1, 12),
    ticks=st.integers(1, 400),
)
def test_a_constant_load_never_oscillates(policy, rate, size0, ticks):
    size0 = min(max(size0, policy.min_finders), policy.max_finders)
    sizes, decisions = simulate(policy, [rate] * ticks, size0)
    directions = [d.grow for d in decisions if isinstance(d, Resize)]
    assert directions == sorted(directions) or directions == sorted(directions, reverse=True)
    assert all(policy.min_finders <= s <= policy.max_finders for s in sizes)


@settings(max_examples=200, deadline=None)
@given(policy=policies(), depth=st.integers(0, 50), busy=st.floats(0.0, 1.0))
def test_constant_observations_move_one_way(policy, depth, busy):
    size = policy.min_finders
    directions = []
    for t in range(300):
        d = policy.observe(float(t), depth, busy, size, ROOM)
        if isinstance(d, Resize):
            directions.append(d.grow)
            size = d.target
    assert len(set(directions)) <= 1


@settings(max_examples=100, deadline=None)
@given(
    high=st.floats(2.5, 7.0),
    low=st.floats(0.05, 0.5),
    high_s=st.integers(150, 250),
)
def test_a_rising_then_falling_load_grows_then_shrinks(high, low, high_s):
    policy = PoolPolicy(1, 8)
    sizes, decisions = simulate(policy, [0.5] * 10 + [high] * high_s + [low] * 400, 1)
    peak = max(sizes)
    assert sizes[9] == 1 and peak >= math.ceil(high) - 1 and peak <= 8
    assert sizes[-1] < peak
    resizes = [d for d in decisions if isinstance(d, Resize)]
    first_shrink = next(k for k, d in enumerate(resizes) if not d.grow)
    assert all(d.grow for d in resizes[:first_shrink])
    assert not any(d.grow for d in resizes[first_shrink:])


# ------------------------------------------------------------------ credits, memory, placement


def test_credits_follow_the_pool():
    assert credits_for(2, 2, 1, 16, 8) == 8  # the defaults: processing.credits = 8
    assert credits_for(6, 2, 1, 16, 8) == 20
    assert credits_for(6, 2, 2, 16, 5) == 18 + 2 * 4
    assert credits_for(1, 0, 1, 1, 64) == 2
    with pytest.raises(ValueError):
        credits_for(0, 2, 1, 16, 8)


@settings(max_examples=200, deadline=None)
@given(
    n=st.integers(1, 64),
    inbox=st.integers(0, 8),
    writers=st.integers(1, 8),
    per_file=st.integers(1, 1000),
    batch=st.integers(1, 64),
)
def test_credits_feed_every_finder_and_writer(n, inbox, writers, per_file, batch):
    c = credits_for(n, inbox, writers, per_file, batch)
    assert c >= n * (inbox + 1) + writers
    assert (c - n * (inbox + 1)) * batch >= writers * per_file  # a file per writer fits
    assert credits_for(n + 1, inbox, writers, per_file, batch) > c


def test_memory_bound_sentence():
    assert memory_bound(8, 268_435_456) == "credits × batch = 8 × 268.4 MB = 2.15 GB"
    assert memory_bound(20, 4_300_000) == "credits × batch = 20 × 4.3 MB = 0.09 GB"


def test_placeable_counts_per_node():
    need = {"CPU": 1.0}
    assert placeable([{"CPU": 0.5}, {"CPU": 0.5}], need, 10) == 0
    assert placeable([{"CPU": 2.5}, {"CPU": 1.0}], need, 10) == 3
    assert placeable([{"CPU": 8.0}], need, 2) == 2
    assert placeable([{"CPU": 0.3}], {"CPU": 0.1}, 10) == 3  # float noise in Ray's amounts
    both = {"CPU": 0.5, "cxi_cpu": 1, "memory": 0}
    assert placeable([{"CPU": 4.0, "cxi_cpu": 1.0}, {"CPU": 4.0}], both, 10) == 1
    assert placeable([], {}, 5) == 5


def test_busy_meter():
    meter = BusyMeter(span_s=5.0)
    assert meter.update(0.0, {"a": 0.0, "b": 10.0}) is None
    assert meter.update(1.0, {"a": 1.0, "b": 10.5}) == pytest.approx(0.75)
    assert meter.update(2.0, {"a": 2.0, "b": 11.0}) == pytest.approx(0.75)
    for t in range(3, 10):
        value = meter.update(float(t), {"a": float(t), "b": 11.0, "c": 0.0})
    assert value == pytest.approx((1.0 + 0.0 + 0.0) / 3)  # over the last 5 s only
    value = meter.update(10.0, {"a": 10.0, "b": 11.0, "c": 0.0, "d": 0.9})
    assert value == pytest.approx(1 / 3)  # d is new: no interval yet
    # a replaced finder under the same key (its counter went back) is left out
    assert meter.update(11.0, {"a": 0.5, "b": 11.0}) == pytest.approx(0.0)


def test_credits_shortfall_names_the_setting_and_the_need():
    from cxi_async.config import load_config
    from cxi_async.core.autoscale import credits_shortfall

    assert credits_shortfall(load_config(None, [], check_paths=False)) is None  # 8 >= 2x3 + 1
    replay = ["replay.enabled=true", "replay.batch_size=8"]
    assert credits_shortfall(load_config(None, replay, check_paths=False)) is None  # 8 = 2x3 + 2
    short = load_config(None, [*replay, "processing.credits=5"], check_paths=False)
    assert credits_shortfall(short) == (
        "processing.credits = 5 cannot keep every actor busy: 2 finders x (finder_inbox 2 + 1)"
        " + 1 writers x 2 batches per file need 8; raise processing.credits"
    )
