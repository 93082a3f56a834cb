"""Side files: exact list contents, atomic replacement, restart, status.json, report round trip."""

from __future__ import annotations

import importlib.util
import json
import os
from datetime import datetime
from pathlib import Path

import msgspec
import pytest

import cxi_async
from cxi_async.config import Config, config_to_dict
from cxi_async.core import catalog as catalog_mod
from cxi_async.core.catalog import (
    EVENTS_LIST,
    FILES_LIST,
    STATUS_FILE,
    Catalog,
    CatalogError,
    FileEntry,
    hit_rate,
    report_name,
)

ROOT = Path(__file__).resolve().parents[1]


def _cxi(directory: Path, seq: int, label: str = "r1") -> Path:
    """A finished file as the writer leaves it (content does not matter to the catalog)."""
    path = directory / f"peaknet_{label}_{seq:06d}.cxi"
    path.write_bytes(b"\x89HDF")
    return path


def _stats(**over) -> dict:
    """Coordinator stats with the fields the catalog reads (values as the coordinator gives)."""
    stats = {
        "elapsed_s": 10.0,
        "batches_taken": 12,
        "events_seen": 96,
        "events_written": 30,
        "events_filtered": 50,
        "events_rejected": 8,
        "events_doubled": 1,
        "credits": 16,
        "credits_in_use": 4,
        "q2_depth": 7,
        "files": 2,
        "bytes_written": 123456,
        "events_per_s": 8.0,
        "latency_p50_s": 0.25,
        "latency_p99_s": 1.5,
        "finders": [{"index": 0, "inbox": 1}, {"index": 1, "inbox": 0}],
        "writers": [{"index": 0, "inbox": 2}, {"dead": True}],
        "rejections": {"logits are not finite": 1},
        "stopping": False,
        "stop_reason": None,
        "started_at": 1_700_000_000.5,
    }
    stats.update(over)
    return stats


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


# --------------------------------------------------------------------------- lists


def test_lists_have_exact_content(tmp_path: Path) -> None:
    a, b = _cxi(tmp_path, 0), _cxi(tmp_path, 1)
    cat = Catalog(tmp_path, "peaknet", "r1")
    assert cat.add_file(b, 3) is True  # finishing order, not name order
    assert cat.add_file(str(a), 2) is True
    cat.write_status(_stats())
    assert (tmp_path / FILES_LIST).read_text() == f"{b}\n{a}\n"
    assert (tmp_path / EVENTS_LIST).read_text() == (
        f"{b} //0\n{b} //1\n{b} //2\n{a} //0\n{a} //1\n"
    )
    assert json.loads((tmp_path / STATUS_FILE).read_text())["files_listed"] == 2
    assert cat.entries == [FileEntry(str(b), 3), FileEntry(str(a), 2)]
    assert _leftovers(tmp_path) == []
    umask = os.umask(0o022)
    os.umask(umask)
    for name in (FILES_LIST, EVENTS_LIST, STATUS_FILE):  # readable like any new file
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~umask


def test_each_run_directory_gets_its_own_lists(tmp_path: Path) -> None:
    r1, r2 = tmp_path / "r0001", tmp_path / "r0002"
    r1.mkdir()
    r2.mkdir()
    a, b, c = _cxi(r1, 0, "r0001"), _cxi(r2, 0, "r0002"), _cxi(r1, 1, "r0001")
    top = _cxi(tmp_path, 0, "start")
    cat = Catalog(tmp_path, "peaknet", "start")
    for path, n in ((a, 2), (b, 1), (top, 1), (c, 1)):
        cat.add_file(path, n)
    cat.flush()
    assert (tmp_path / FILES_LIST).read_text() == f"{a}\n{b}\n{top}\n{c}\n"
    assert (r1 / FILES_LIST).read_text() == f"{a}\n{c}\n"
    assert (r1 / EVENTS_LIST).read_text() == f"{a} //0\n{a} //1\n{c} //0\n"
    assert (r2 / EVENTS_LIST).read_text() == f"{b} //0\n"
    # A restart rebuilds a run's lists from the whole ones and continues them.
    (r2 / EVENTS_LIST).unlink()
    again = Catalog(tmp_path, "peaknet", "later")
    d = _cxi(r2, 1, "r0002")
    again.add_file(d, 1)
    again.flush()
    assert (r2 / EVENTS_LIST).read_text() == f"{b} //0\n{d} //0\n"
    assert (r1 / FILES_LIST).read_text() == f"{a}\n{c}\n"


def test_relative_paths_are_listed_absolute(tmp_path: Path, monkeypatch) -> None:
    a = _cxi(tmp_path, 0)
    monkeypatch.chdir(tmp_path)
    cat = Catalog(".", "peaknet", "r1")
    cat.add_file(a.name, 1)
    assert (tmp_path / FILES_LIST).read_text() == f"{a}\n"
    assert (tmp_path / EVENTS_LIST).read_text() == f"{a} //0\n"


def test_events_lst_parses_as_crystfel_does(tmp_path: Path) -> None:
    """indexamajig splits a line at its last space when the rest holds '//' (im-sandbox.c)."""
    spaced = tmp_path / "run with spaces"
    spaced.mkdir()
    paths = [_cxi(spaced, 0), _cxi(spaced, 1)]
    cat = Catalog(spaced, "peaknet", "r1")
    for path, n in zip(paths, (4, 0), strict=True):
        cat.add_file(path, n)
    parsed = []
    for line in (spaced / EVENTS_LIST).read_text().splitlines():
        name, _, event = line.rpartition(" ")
        assert event.startswith("//")
        parsed.append((name, int(event[2:])))  # read_dim_parts: integers after "//"
    assert parsed == [(str(paths[0]), i) for i in range(4)]
    # A file with no kept frame is listed but has no event line.
    assert (spaced / FILES_LIST).read_text().splitlines() == [str(p) for p in paths]


def test_duplicates_are_ignored(tmp_path: Path) -> None:
    a = _cxi(tmp_path, 0)
    cat = Catalog(tmp_path, "peaknet", "r1")
    assert cat.add_file(a, 2)
    assert not cat.add_file(a, 2)
    assert not cat.add_file(tmp_path / "." / a.name, 5)
    assert (tmp_path / EVENTS_LIST).read_text() == f"{a} //0\n{a} //1\n"


@pytest.mark.parametrize(
    ("name", "n", "words"),
    [
        ("peaknet_r1_000000.cxi.inprogress", 1, "still being written"),
        ("peaknet_r1_000009.cxi", 1, "does not exist"),
        ("peaknet_r1_000000.cxi", -1, "must be an integer >= 0"),
        ("peaknet_r1_000000.cxi", 2.0, "must be an integer >= 0"),
        ("a\nb.cxi", 1, "newline"),
        ("x" * 1000 + ".cxi", 10, "indexamajig reads"),
    ],
)
def test_refused_files(tmp_path: Path, name: str, n, words: str) -> None:
    _cxi(tmp_path, 0)
    (tmp_path / "peaknet_r1_000000.cxi.inprogress").write_bytes(b"")
    cat = Catalog(tmp_path, "peaknet", "r1")
    with pytest.raises(CatalogError, match=words):
        cat.add_file(tmp_path / name, n)
    assert not (tmp_path / FILES_LIST).exists()


def test_bad_construction(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="does not exist"):
        Catalog(tmp_path / "missing", "peaknet", "r1")
    with pytest.raises(CatalogError, match="run_label"):
        Catalog(tmp_path, "peaknet", "a/b")
    with pytest.raises(CatalogError, match="max_samples"):
        Catalog(tmp_path, "peaknet", "r1", max_samples=1)


# --------------------------------------------------------------------------- atomicity


def test_failed_append_is_cut_back_and_retried(tmp_path: Path, monkeypatch) -> None:
    """A disk that fills in mid-append: the half line is cut, the next call appends it whole."""
    a, b = _cxi(tmp_path, 0), _cxi(tmp_path, 1)
    cat = Catalog(tmp_path, "peaknet", "r1")
    cat.add_file(a, 1)
    before = {n: (tmp_path / n).read_text() for n in (FILES_LIST, EVENTS_LIST)}
    real_write = os.write

    def half_then_full(fd, data):
        real_write(fd, bytes(data[: len(data) // 2]))
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(catalog_mod.os, "write", half_then_full)
    with pytest.raises(CatalogError, match="No space left on device; it keeps its earlier"):
        cat.add_file(b, 2)
    assert {n: (tmp_path / n).read_text() for n in before} == before
    assert cat.is_listed(b) and not cat.add_file(b, 2)  # pending, not listed twice

    monkeypatch.undo()
    cat.flush()  # the held-back entry is appended by the next call
    assert (tmp_path / FILES_LIST).read_text() == f"{a}\n{b}\n"
    assert (tmp_path / EVENTS_LIST).read_text() == f"{a} //0\n{b} //0\n{b} //1\n"


def test_a_failure_after_events_lst_resumes_at_files_lst(tmp_path: Path, monkeypatch) -> None:
    a = _cxi(tmp_path, 0)
    cat = Catalog(tmp_path, "peaknet", "r1")
    real_open = os.open

    def refuse_files_lst(path, *args, **kwargs):
        if Path(path).name == FILES_LIST:
            raise OSError(5, "Input/output error")
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(catalog_mod.os, "open", refuse_files_lst)
    with pytest.raises(CatalogError, match="Input/output error"):
        cat.add_file(a, 2)
    monkeypatch.undo()
    cat.flush()
    assert (tmp_path / EVENTS_LIST).read_text() == f"{a} //0\n{a} //1\n"  # not twice
    assert (tmp_path / FILES_LIST).read_text() == f"{a}\n"


def test_min_interval_holds_lists_until_flush(tmp_path: Path) -> None:
    a, b = _cxi(tmp_path, 0), _cxi(tmp_path, 1)
    cat = Catalog(tmp_path, "peaknet", "r1", min_interval_s=3600)
    cat.add_file(a, 1)  # the first write is never held back
    cat.add_file(b, 1)
    assert (tmp_path / FILES_LIST).read_text() == f"{a}\n"
    cat.update(_stats())  # within the interval: still held
    assert (tmp_path / FILES_LIST).read_text() == f"{a}\n"
    cat.flush()
    assert (tmp_path / FILES_LIST).read_text() == f"{a}\n{b}\n"


# --------------------------------------------------------------------------- restart


def test_restart_continues_without_duplicates(tmp_path: Path) -> None:
    a, b = _cxi(tmp_path, 0, "r1"), _cxi(tmp_path, 1, "r1")
    first = Catalog(tmp_path, "peaknet", "r1")
    first.add_file(a, 2)
    first.add_file(b, 1)

    c = _cxi(tmp_path, 2, "r2")
    second = Catalog(tmp_path, "peaknet", "r2")
    assert second.entries == [FileEntry(str(a), 2), FileEntry(str(b), 1)]
    assert not second.add_file(b, 1)
    assert second.add_file(c, 2)
    assert (tmp_path / FILES_LIST).read_text() == f"{a}\n{b}\n{c}\n"
    assert (tmp_path / EVENTS_LIST).read_text() == (
        f"{a} //0\n{a} //1\n{b} //0\n{c} //0\n{c} //1\n"
    )
    assert second.run_entries == [FileEntry(str(c), 2)]


def test_restart_after_crash_between_the_two_lists(tmp_path: Path) -> None:
    """files.lst is the commit record: events of a file it does not name are cut on load
    (their count may be incomplete; the coordinator lists such a file again from its content)."""
    a, b = _cxi(tmp_path, 0), _cxi(tmp_path, 1)
    (tmp_path / EVENTS_LIST).write_text(f"{a} //0\n{b} //0\n{b} //1\n")
    (tmp_path / FILES_LIST).write_text(f"{a}\n")
    cat = Catalog(tmp_path, "peaknet", "r2")
    assert cat.entries == [FileEntry(str(a), 1)]
    assert (tmp_path / EVENTS_LIST).read_text() == f"{a} //0\n"
    assert not cat.is_listed(b)
    assert cat.add_file(b, 3)
    assert (tmp_path / EVENTS_LIST).read_text() == f"{a} //0\n{b} //0\n{b} //1\n{b} //2\n"
    assert (tmp_path / FILES_LIST).read_text() == f"{a}\n{b}\n"


@pytest.mark.parametrize("torn", [FILES_LIST, EVENTS_LIST])
def test_restart_cuts_a_torn_last_line(tmp_path: Path, torn: str) -> None:
    """A crash in mid-append leaves a last line without its newline: it is cut on load."""
    a, b, c = _cxi(tmp_path, 0), _cxi(tmp_path, 1), _cxi(tmp_path, 2)
    first = Catalog(tmp_path, "peaknet", "r1")
    first.add_file(a, 2)
    first.add_file(b, 1)
    whole = {n: (tmp_path / n).read_bytes() for n in (FILES_LIST, EVENTS_LIST)}
    with open(tmp_path / torn, "ab") as fh:  # what a crash while appending c leaves
        fh.write(f"{c} //".encode() if torn == EVENTS_LIST else str(c)[:-3].encode())
    second = Catalog(tmp_path, "peaknet", "r2")
    assert {n: (tmp_path / n).read_bytes() for n in whole} == whole
    assert second.entries == [FileEntry(str(a), 2), FileEntry(str(b), 1)]
    assert second.add_file(c, 1)
    assert (tmp_path / FILES_LIST).read_text() == f"{a}\n{b}\n{c}\n"
    assert (tmp_path / EVENTS_LIST).read_text() == f"{a} //0\n{a} //1\n{b} //0\n{c} //0\n"
    assert second.run_entries == [FileEntry(str(c), 1)]


def test_restart_completes_a_run_directory_a_crash_left_behind(tmp_path: Path) -> None:
    """Killed after the whole lists but before the run's own: the run's lists are rebuilt."""
    run = tmp_path / "r0001"
    run.mkdir()
    a, b = _cxi(run, 0, "r0001"), _cxi(run, 1, "r0001")
    first = Catalog(tmp_path, "peaknet", "r1")
    first.add_file(a, 1)
    with open(tmp_path / EVENTS_LIST, "a") as fh:
        fh.write(f"{b} //0\n{b} //1\n")
    with open(tmp_path / FILES_LIST, "a") as fh:
        fh.write(f"{b}\n")
    with open(run / EVENTS_LIST, "a") as fh:
        fh.write(f"{b} //0\n{b}")  # torn in the run's own events.lst
    Catalog(tmp_path, "peaknet", "r2")
    assert (run / EVENTS_LIST).read_text() == f"{a} //0\n{b} //0\n{b} //1\n"
    assert (run / FILES_LIST).read_text() == f"{a}\n{b}\n"


def test_restart_refuses_a_malformed_events_list(tmp_path: Path) -> None:
    (tmp_path / EVENTS_LIST).write_text("/x/a.cxi //0\n/x/a.cxi 0\n")
    with pytest.raises(CatalogError, match=r"events.lst line 2 \('/x/a.cxi 0'\)"):
        Catalog(tmp_path, "peaknet", "r1")


# --------------------------------------------------------------------------- status


def test_status_json_fields(tmp_path: Path) -> None:
    cat = Catalog(tmp_path, "peaknet", "r1")
    cat.add_file(_cxi(tmp_path, 0), 30)
    written = cat.write_status(_stats())
    status = json.loads((tmp_path / STATUS_FILE).read_text())
    assert status == written
    updated = status.pop("updated_at")
    assert datetime.fromisoformat(updated).timestamp() == pytest.approx(
        status.pop("updated_at_unix"), abs=1e-3
    )
    assert status == {
        "run_label": "r1",
        "state": "running",
        "stop_reason": None,
        "events_seen": 96,
        "events_kept": 30,
        "events_filtered": 50,
        "events_rejected": 8,
        "events_abandoned": 0,
        "events_doubled": 1,
        "events_without_image": 0,
        "hit_rate": 30 / 80,
        "files": 2,
        "files_listed": 1,
        "bytes_written": 123456,
        "events_per_s": 8.0,
        "events_per_s_recent": None,
        "credits_in_use": 4,
        "credits": 16,
        "q2_depth": 7,
        "q2_full": False,
        "q2_full_seconds": 0.0,
        "pool_size": None,
        "pool": None,
        "latency_p50_s": 0.25,
        "latency_p99_s": 1.5,
        "elapsed_s": 10.0,
        "started_at": "2023-11-14T22:13:20.500+00:00",
        "started_at_unix": 1_700_000_000.5,
    }
    # The recent rate is over the interval since the previous status: (98 - 88) / 4 s.
    later = cat.write_status(_stats(elapsed_s=14.0, events_written=32, events_filtered=58))
    assert later["events_per_s_recent"] == 10 / 4
    again = cat.write_status(_stats(elapsed_s=14.0, events_written=32, events_filtered=58))
    assert again["events_per_s_recent"] == 10 / 4  # e.g. the final status: keep the last rate
    stopping = cat.write_status(_stats(stopping=True, stop_reason="asked to drain"))
    assert (stopping["state"], stopping["stop_reason"]) == ("stopping", "asked to drain")
    full = cat.write_status(_stats(q2_full=True, q2_full_seconds=12.5))
    assert (full["q2_full"], full["q2_full_seconds"]) == (True, 12.5)


def test_status_without_events_has_null_hit_rate(tmp_path: Path) -> None:
    cat = Catalog(tmp_path, "peaknet", "r1")
    empty = _stats(
        events_seen=0,
        events_written=0,
        events_filtered=0,
        events_rejected=0,
        latency_p50_s=None,
        latency_p99_s=None,
        events_per_s=0.0,
    )
    cat.write_status(empty)
    status = json.loads((tmp_path / STATUS_FILE).read_text())
    assert status["hit_rate"] is None
    assert status["latency_p50_s"] is None
    assert hit_rate(0, 0) is None and hit_rate(0, 5) == 0.0 and hit_rate(3, 1) == 0.75


def test_live_hit_rate_counts_hits_still_in_open_files(tmp_path: Path) -> None:
    """Hits are judged with the filtered events but written later: while 24 judged hits
    wait in open files, the hit rate is 54 / 104, not the 30 / 80 of the renamed files."""
    cat = Catalog(tmp_path, "peaknet", "r1")
    status = cat.write_status(_stats(events_hits=54))
    assert status["hit_rate"] == 54 / 104
    cat.sample(_stats(events_hits=54))
    assert cat.samples[-1]["events_hits"] == 54


def test_samples_are_spaced_and_bounded(tmp_path: Path) -> None:
    cat = Catalog(tmp_path, "peaknet", "r1", sample_interval_s=1.0, max_samples=4)
    kept = [t for t in (0.0, 0.5, 1.0, 1.2, 2.0, 3.0) if cat.sample(_stats(elapsed_s=t))]
    assert kept == [0.0, 1.0, 2.0, 3.0]
    assert cat.sample(_stats(elapsed_s=4.0))  # a fifth: every other one goes, interval doubles
    assert [s["t"] for s in cat.samples] == [0.0, 2.0, 4.0]
    assert cat.sample_interval_s == 2.0
    assert not cat.sample(_stats(elapsed_s=5.0))
    assert cat.samples[0] == {
        "t": 0.0,
        "events_written": 30,
        "events_filtered": 50,
        "events_hits": 30,  # stats without it: the hits written
        "events_rejected": 8,
        "q2_depth": 7,
        "credits_in_use": 4,
        "credits": 16,
        "pool_size": None,
        "finder_inbox": [1, 0],
        "writer_inbox": [2, None],
    }


# --------------------------------------------------------------------------- report


def test_report_round_trip(tmp_path: Path) -> None:
    config = Config()
    cat = Catalog(tmp_path, "peaknet", "r1", sample_interval_s=2.0)
    a, b, c = _cxi(tmp_path, 0), _cxi(tmp_path, 1), _cxi(tmp_path, 2)
    cat.add_file(a, 3)
    for t in (0.0, 2.0, 4.0):
        cat.update(_stats(elapsed_s=t, events_written=int(10 * t)))
    cat.add_file(b, 1)
    final = _stats(
        elapsed_s=5.0,
        events_written=50,
        stopping=True,
        stop_reason="took stop.max_batches = 12 batches",
        files_written=[  # c never reached add_file: the report lists it anyway
            {"path": str(a), "events": 3, "bytes": 10},
            {"path": str(b), "events": 1, "bytes": 10},
            {"path": str(c), "events": 2, "bytes": 10},
        ],
    )
    path = cat.write_report(config_to_dict(config), final)
    assert path == tmp_path / report_name("peaknet", "r1") == tmp_path / "peaknet_r1_report.json"
    report = json.loads(path.read_text())

    assert msgspec.convert(report["config"], Config) == config
    assert report["cxi_async_version"] == cxi_async.__version__
    assert (report["run_label"], report["prefix"]) == ("r1", "peaknet")
    assert report["files"] == [
        {"path": str(a), "events": 3},
        {"path": str(b), "events": 1},
        {"path": str(c), "events": 2},
    ]
    assert [s["t"] for s in report["samples"]] == [0.0, 2.0, 4.0, 5.0]
    assert [s["events_written"] for s in report["samples"]] == [0, 20, 40, 50]
    assert report["final"]["state"] == "stopped"
    assert report["final"]["stop_reason"] == "took stop.max_batches = 12 batches"
    assert report["final"]["events_kept"] == 50
    assert report["final"]["hit_rate"] == 50 / 100
    assert "files_written" not in report["stats"]
    assert report["stats"]["rejections"] == {"logits are not finite": 1}
    assert report["finished_at_unix"] >= report["started_at_unix"]
    assert json.loads((tmp_path / STATUS_FILE).read_text()) == report["final"]
    assert (tmp_path / FILES_LIST).read_text() == f"{a}\n{b}\n{c}\n"
    assert _leftovers(tmp_path) == []


def test_report_values_become_plain_json(tmp_path: Path) -> None:
    np = pytest.importorskip("numpy")
    cat = Catalog(tmp_path, "peaknet", "r1")
    final = _stats(events_per_s=float("nan"), q2_depth=np.int64(3), extra=(Path("/x"), {1: 2}))
    report = json.loads(cat.write_report({"a": (1, 2)}, final).read_text())
    assert report["final"]["events_per_s"] is None
    assert report["final"]["q2_depth"] == 3
    assert report["stats"]["extra"] == ["/x", {"1": 2}]
    assert report["config"] == {"a": [1, 2]}


def test_plot_run_writes_a_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    spec = importlib.util.spec_from_file_location("plot_run", ROOT / "bench" / "plot_run.py")
    plot_run = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(plot_run)
    cat = Catalog(tmp_path, "peaknet", "r1", sample_interval_s=1.0)
    for t in range(6):
        cat.update(_stats(elapsed_s=float(t), events_written=5 * t, q2_depth=6 - t))
    report = cat.write_report(config_to_dict(Config()), _stats(elapsed_s=6.0, events_written=30))
    out = tmp_path / "run.png"
    assert plot_run.main([str(report), "-o", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert os.path.getsize(out) > 10_000
