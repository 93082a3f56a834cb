"""PipelineMetrics: cumulative stats -> counter deltas, gauges and histograms, in a real Ray."""

from __future__ import annotations

import pytest
import ray

from cxi_async.actors.metrics import PipelineMetrics

pytestmark = pytest.mark.usefixtures("ray_session")


def stats(**values) -> dict:
    """A coordinator stats dict with the keys publish reads (zeros unless given)."""
    base = {
        "events_seen": 0,
        "events_written": 0,
        "events_filtered": 0,
        "events_rejected": 0,
        "events_abandoned": 0,
        "events_doubled": 0,
        "batches_done": 0,
        "batches_rejected": 0,
        "peaks_truncated": 0,
        "files": 0,
        "bytes_written": 0,
        "rejections": {},
        "credits": 8,
        "credits_in_use": 0,
        "q2_depth": 0,
        "batches_in_flight": 0,
        "events_pending": 0,
        "finders": [{"index": 0, "inbox": 0}, {"index": 1, "inbox": 0}],
        "writers": [{"index": 0, "inbox": 0, "files": 0, "write_seconds": 0.0}],
    }
    base.update(values)
    return base


def counted(m: PipelineMetrics, name: str, **tags: str) -> float:
    return m.counted[(f"cxi_async_{name}", tuple(tags.items()))]


def gauge(m: PipelineMetrics, name: str, **tags: str) -> float:
    return m.gauges[(f"cxi_async_{name}", tuple(tags.items()))]


def test_counters_receive_the_deltas_between_publishes():
    m = PipelineMetrics("q2-deltas")
    m.publish(stats(events_seen=10, events_written=6, events_filtered=4, files=1, bytes_written=5))
    assert counted(m, "events_seen") == 10
    assert counted(m, "events_written") == 6
    assert counted(m, "events_filtered") == 4
    assert counted(m, "files_written") == 1
    assert counted(m, "bytes_written") == 5
    assert ("cxi_async_events_rejected", ()) not in m.counted  # zero is never sent

    m.publish(stats(events_seen=16, events_written=9, events_filtered=4, files=1, bytes_written=9))
    assert counted(m, "events_seen") == 16
    assert counted(m, "events_written") == 9
    assert counted(m, "events_filtered") == 4
    assert counted(m, "bytes_written") == 9

    m.publish(stats(events_seen=16, events_written=9, events_filtered=4, files=1, bytes_written=9))
    assert counted(m, "events_seen") == 16  # nothing new, nothing sent
    assert m.errors == 0


def test_a_drop_is_absorbed_and_counting_resumes():
    """A writer replaced after dying takes its file count out of the sum; counters never go
    down, and what the new writer adds is counted from where the sum dropped to."""
    m = PipelineMetrics("q2-drop")
    m.publish(stats(files=5))
    m.publish(stats(files=2))
    assert counted(m, "files_written") == 5
    m.publish(stats(files=4))
    assert counted(m, "files_written") == 7
    assert m.errors == 0


def test_rejections_are_counted_by_reason():
    m = PipelineMetrics("q2-reasons")
    m.publish(stats(rejections={"logits are not finite": 1}))
    m.publish(stats(rejections={"logits are not finite": 3, "geometry mismatch": 2}))
    assert counted(m, "rejections", reason="logits are not finite") == 3
    assert counted(m, "rejections", reason="geometry mismatch") == 2
    assert m.errors == 0


def test_gauges_follow_the_latest_stats():
    m = PipelineMetrics("q2-gauges")
    finders = [{"index": 0, "inbox": 2}, {"dead": True}]
    writers = [{"index": 0, "inbox": 5, "files": 0, "write_seconds": 0.0}]
    m.publish(stats(credits_in_use=7, q2_depth=40, seconds_since_last_ack=3.5))
    m.publish(stats(credits_in_use=8, q2_depth=12, finders=finders, writers=writers))
    assert gauge(m, "credits_in_use") == 8
    assert gauge(m, "credits") == 8
    assert gauge(m, "q2_depth") == 12
    assert gauge(m, "seconds_since_last_ack") == 3.5  # not in the second stats: kept
    assert gauge(m, "finder_inbox", actor="0") == 2
    assert gauge(m, "finder_inbox", actor="1") == 0  # from the first publish; dead since
    assert gauge(m, "writer_inbox", actor="0") == 5
    assert gauge(m, "actor_dead", kind="finder", actor="0") == 0
    assert gauge(m, "actor_dead", kind="finder", actor="1") == 1
    assert gauge(m, "actor_dead", kind="writer", actor="0") == 0
    assert m.errors == 0


def test_write_seconds_derived_per_file_from_writer_stats():
    m = PipelineMetrics("q2-write")

    def w(files: int, seconds: float) -> list[dict]:
        return [{"index": 0, "inbox": 0, "files": files, "write_seconds": seconds}]

    m.publish(stats(writers=w(2, 0.5)))
    assert m.observed["cxi_async_write_seconds"] == 2
    m.publish(stats(writers=w(2, 0.5)))
    assert m.observed["cxi_async_write_seconds"] == 2
    m.publish(stats(writers=w(1, 0.1)))  # replaced writer: its first file counts
    assert m.observed["cxi_async_write_seconds"] == 3
    m.publish(stats(writers=[{"dead": True}]))
    assert m.observed["cxi_async_write_seconds"] == 3
    assert m.errors == 0


def test_observations_and_an_explicit_write_hook():
    m = PipelineMetrics("q2-observe")
    m.observe_latency(0.8)
    m.observe_latency(2.0)
    m.observe_find(0.03)
    m.observe_write(0.2)  # the writer reports per file: no more derived write times
    m.publish(stats(writers=[{"index": 0, "inbox": 0, "files": 3, "write_seconds": 1.0}]))
    assert m.observed == {
        "cxi_async_latency_seconds": 2,
        "cxi_async_find_seconds": 1,
        "cxi_async_write_seconds": 1,
    }
    assert m.errors == 0


@ray.remote(num_cpus=0)
class _Publisher:
    """PipelineMetrics where it will live: inside an actor, publishing repeatedly."""

    def __init__(self) -> None:
        self.m = PipelineMetrics("q2-actor")

    def publish(self, s: dict) -> tuple[dict, int]:
        self.m.publish(s)
        self.m.observe_latency(0.1)
        return dict(self.m.counted), self.m.errors


def test_publish_inside_an_actor():
    actor = _Publisher.remote()
    ray.get(actor.publish.remote(stats(events_seen=3, rejections={"x": 1})))
    totals, errors = ray.get(actor.publish.remote(stats(events_seen=8, rejections={"x": 2})))
    assert errors == 0
    assert totals[("cxi_async_events_seen", ())] == 8
    assert totals[("cxi_async_rejections", (("reason", "x"),))] == 2
    ray.kill(actor)
