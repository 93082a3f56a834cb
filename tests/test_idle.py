"""core/idle.IdleWatch: what an empty Q2 means, with times passed in."""

from __future__ import annotations

from cxi_async.core.idle import EmptyPollAnswer, IdleWatch


def watch(**kw) -> IdleWatch:
    args = {"idle_timeout_s": 5.0, "idle_flush_s": 1.0, "wait_for_first_batch_s": None}
    return IdleWatch(**{**args, **kw}, started=0.0, queue_name="q")


def test_idle_timeout_counts_from_the_first_empty_poll_after_a_take():
    w = watch()
    assert w.empty_poll(1, 1, in_flight=0, taken=0, all_at_writers=True) == EmptyPollAnswer()
    assert w.empty_poll(2, 2, 0, taken=3, all_at_writers=True).stop is None  # clock starts
    assert w.empty_poll(6, 6.9, 0, 3, True).stop is None
    assert w.empty_poll(7, 7, 0, 3, True).stop == "Q2 empty and nothing in flight for 5 s"
    w.taken()
    assert w.empty_poll(8, 8, 0, 4, True).stop is None  # a take restarts it


def test_batches_in_flight_hold_the_idle_clock():
    w = watch()
    w.empty_poll(0, 0, 0, 1, True)
    assert w.empty_poll(10, 10, in_flight=1, taken=1, all_at_writers=False).stop is None
    assert w.empty_poll(11, 11, 0, 1, True).stop is None  # the clock restarted


def test_a_pause_closes_the_open_files_once():
    w = watch()
    assert not w.empty_poll(0, 0, 2, 2, all_at_writers=True).close_open_files
    assert not w.empty_poll(0.5, 0.5, 2, 2, True).close_open_files
    assert w.empty_poll(1.0, 1.0, 2, 2, True).close_open_files
    assert not w.empty_poll(3, 3, 2, 2, True).close_open_files  # once per pause
    assert not w.empty_poll(4, 4, 2, 2, all_at_writers=False).close_open_files
    w.empty_poll(5, 5, 2, 2, True)
    assert w.empty_poll(6, 6, 2, 2, True).close_open_files  # a new pause


def test_stop_when_empty_needs_a_poll_started_after_the_request():
    w = watch(idle_timeout_s=None)
    w.stop_when_empty("replay finished", now=10.0)
    assert w.empty_poll(9.9, 10.1, 0, 5, True).stop is None  # started before the request
    assert w.empty_poll(10.2, 10.2, 0, 5, True).stop == "replay finished"


def test_wait_for_first_batch_bounds_a_start_before_the_producer():
    w = watch(wait_for_first_batch_s=3.0)
    assert w.empty_poll(2, 2, 0, 0, True).stop is None
    assert w.empty_poll(3, 3, 0, 0, True).stop == (
        "no batch arrived from Q2 'q' within stop.wait_for_first_batch_s = 3 s of the start"
    )
