"""Files a dead writer renamed but never reported: found on real HDF5 files, filed once."""

from __future__ import annotations

import os
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from cxi_async.core import cxi, recovery
from cxi_async.core.ledger import Ledger
from tests.test_assembly import event

RUN = "3f2a-this-run"
PREFIX = "peaknet"


def _write(
    directory: Path, seq: int, pairs: list[tuple[int, int]], run_id: str | None = RUN
) -> Path:
    events = cxi.CxiEvents.pack([event(e) for _, e in pairs], max_num_peak=4)
    attrs = {} if run_id is None else {cxi.RUN_ID_ATTR: run_id}
    deliveries = None if run_id is None else pairs  # None: a file of an older writer
    path = directory / cxi.cxi_file_name(PREFIX, "r1", seq)
    return cxi.write_cxi_file(
        path, events, (8, 8), None, fsync=False, attrs=attrs, deliveries=deliveries
    )


def test_a_file_records_its_pairs_and_run(tmp_path: Path) -> None:
    path = _write(tmp_path, 0, [(7, 2), (3, 0), (7, 0)])
    assert recovery.recorded_events(path, RUN) == [(7, 2), (3, 0), (7, 0)]
    assert recovery.recorded_events(path, "another run") is None
    with h5py.File(path, "r") as f:  # the layout CrystFEL reads is unchanged beside it
        assert f[cxi.DELIVERY_PATH].dtype == np.int64
        assert f[cxi.DELIVERY_PATH].shape == (3, 2)
        assert f[f"{cxi.RESULT_PATH}/eventIndex"][()].tolist() == [2, 0, 0]
    assert recovery.recorded_events(_write(tmp_path, 1, [(1, 1)], run_id=None), RUN) is None


def test_deliveries_that_do_not_match_the_events_touch_no_disk(tmp_path: Path) -> None:
    events = cxi.CxiEvents.pack([event(0), event(1)], max_num_peak=4)
    path = tmp_path / cxi.cxi_file_name(PREFIX, "r1", 0)
    with pytest.raises(ValueError, match="1 deliveries for 2 events"):
        cxi.write_cxi_file(path, events, (8, 8), None, fsync=False, deliveries=[(0, 0)])
    assert not list(tmp_path.iterdir())


def test_a_dead_writers_unreported_file_is_filed_and_only_the_rest_resent(tmp_path: Path) -> None:
    """Writer 0 of 2 held deliveries 0 and 1: one file reported, one renamed and not
    reported, one event still in its open file. The disk search finds exactly the unreported
    file; once it is filed, the lost writer held only what no file has."""
    ledger = Ledger(credits=4, clock=lambda: 0.0)
    kept = {0: [0, 1, 2], 1: [0, 1, 3], 2: [1]}
    for delivery_id, events in kept.items():
        assert ledger.take(0) == delivery_id
        ledger.found(delivery_id, object(), events, num_events=4, filtered=4 - len(events))
        ledger.submitted(delivery_id, 1 if delivery_id == 2 else 0)
    since = time.time()
    listed: set[Path] = set()
    reported = _write(tmp_path, 0, [(0, 0), (0, 1), (1, 0)])  # its FileDone came
    ledger.filed([(0, 0), (0, 1), (1, 0)])
    listed.add(reported)
    unreported = _write(tmp_path, 2, [(0, 2), (1, 1)])  # renamed, then the writer died
    _write(tmp_path, 1, [(2, 1)])  # writer 1's, alive: its FileDone is on its way
    _write(tmp_path, 4, [(1, 3)], run_id="an earlier run")  # same ids, another run
    _write(tmp_path, 6, [(1, 3)], run_id=None)  # no record at all
    old = _write(tmp_path, 8, [(1, 3)])
    os.utime(old, (since - 3600, since - 3600))  # older than the run: not looked at
    (tmp_path / (cxi.cxi_file_name(PREFIX, "r1", 10) + cxi.INPROGRESS_SUFFIX)).write_bytes(b"x")
    (tmp_path / "other_r1_000012.cxi").write_bytes(b"not ours")

    found = recovery.unreported_files(
        [tmp_path, tmp_path / "gone"], PREFIX, 0, 2, since, RUN, lambda p: p in listed
    )

    assert found == [(unreported, [(0, 2), (1, 1)])]
    assert ledger.filed(found[0][1]) == [0]
    assert ledger.writer_lost(0) == [1]
    assert ledger.unsent(1) == {3}
    assert (ledger.events_written, ledger.events_doubled) == (5, 0)
    ledger.check()


def test_run_directories_are_searched_for_metadata_runs(tmp_path: Path) -> None:
    run_dir = tmp_path / "r0007"
    run_dir.mkdir()
    path = _write(run_dir, 3, [(5, 0)])
    dirs = recovery.run_directories(tmp_path, with_runs=True)
    assert dirs == [tmp_path, run_dir]
    assert recovery.run_directories(tmp_path, with_runs=False) == [tmp_path]
    found = recovery.unreported_files(dirs, PREFIX, 1, 2, 0.0, RUN, lambda p: False)
    assert found == [(path, [(5, 0)])]


def test_an_unreadable_candidate_is_skipped(tmp_path: Path, caplog) -> None:
    bad = tmp_path / cxi.cxi_file_name(PREFIX, "r1", 0)
    bad.write_bytes(b"torn, not HDF5")
    assert recovery.unreported_files([tmp_path], PREFIX, 0, 1, 0.0, RUN, lambda p: False) == []
    assert "could not read" in caplog.text
