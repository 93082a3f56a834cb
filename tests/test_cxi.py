"""CXI writing: exact round trips through h5py, atomic rename, sequence numbers, failures."""

from __future__ import annotations

import copy
import errno
import os
import threading
from datetime import datetime
from pathlib import Path

import h5py
import msgspec
import numpy as np
import pytest

import cxi_async
from cxi_async.core import cxi as cxi_mod
from cxi_async.core.cxi import (
    CxiEvents,
    CxiWriteError,
    SequenceCounter,
    cxi_file_name,
    inprogress_path,
    rename_noreplace,
    write_cxi_file,
)
from cxi_async.core.messages import EventPeaks

SLAB = (64, 48)
M = 8


def _record(rng: np.random.Generator, n: int, k: int) -> EventPeaks:
    return EventPeaks(
        fs=rng.uniform(0, SLAB[1] - 1, n).astype(np.float32),
        ss=rng.uniform(0, SLAB[0] - 1, n).astype(np.float32),
        total_intensity=rng.uniform(1, 1e4, n).astype(np.float32),
        npix=rng.integers(1, 50, n).astype(np.int32),
        max_value=rng.uniform(1, 1e3, n).astype(np.float32),
        panel=rng.integers(0, 16, n).astype(np.int16),
        photon_energy_ev=9500.0 + k,
        timestamp=2**63 + 12345 + k,  # above int64: must survive as uint64
        batch_id=f"batch-ä{k // 2}",
        event_index=k % 2,
    )


def _frames(n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, *SLAB)).astype(np.float32)


def _filler(frames: np.ndarray):
    def fill(i: int, out: np.ndarray) -> None:
        out[...] = frames[i]

    return fill


@pytest.fixture
def records() -> list[EventPeaks]:
    rng = np.random.default_rng(0)
    return [_record(rng, n, k) for k, n in enumerate([3, 0, M, 1])]


def _copy_events(events: CxiEvents) -> CxiEvents:
    return copy.deepcopy(events)


def _assert_events_equal(a: CxiEvents, b: CxiEvents) -> None:
    for field in a.__dataclass_fields__:
        x, y = getattr(a, field), getattr(b, field)
        if isinstance(x, np.ndarray):
            assert x.dtype == y.dtype, field
            np.testing.assert_array_equal(x, y, err_msg=field)
        else:
            assert x == y, field


def test_pack_matches_hand_built(records: list[EventPeaks]) -> None:
    ev = CxiEvents.pack(records, M)
    assert ev.n_events == 4 and ev.max_num_peak == M
    np.testing.assert_array_equal(ev.n_peaks, [3, 0, M, 1])
    assert ev.n_peaks.dtype == np.int32
    for field, src, dtype in [
        ("peak_fs", "fs", np.float32),
        ("peak_ss", "ss", np.float32),
        ("peak_total_intensity", "total_intensity", np.float32),
        ("peak_npix", "npix", np.int32),
        ("peak_max_value", "max_value", np.float32),
        ("peak_panel", "panel", np.int16),
    ]:
        expected = np.zeros((4, M), dtype)
        for i, r in enumerate(records):
            values = getattr(r, src)
            for j in range(len(values)):
                expected[i, j] = values[j]
        got = getattr(ev, field)
        assert got.dtype == dtype, field
        np.testing.assert_array_equal(got, expected, err_msg=field)
    np.testing.assert_array_equal(ev.photon_energy_ev, [9500.0, 9501.0, 9502.0, 9503.0])
    assert ev.timestamp.dtype == np.uint64
    assert [int(t) for t in ev.timestamp] == [2**63 + 12345 + k for k in range(4)]
    assert ev.batch_id == ["batch-ä0", "batch-ä0", "batch-ä1", "batch-ä1"]
    np.testing.assert_array_equal(ev.event_index, [0, 1, 0, 1])


def test_pack_rejects_too_many_peaks_and_ragged_events(records: list[EventPeaks]) -> None:
    with pytest.raises(ValueError, match=r"'batch-ä1'\[0\] has 8 peaks, more than max_num_peak=7"):
        CxiEvents.pack(records, M - 1)
    ragged = msgspec.structs.replace(records[0], npix=np.ones(2, np.int32))
    with pytest.raises(ValueError, match="3 fs values but 2 npix values"):
        CxiEvents.pack([ragged], M)
    with pytest.raises(ValueError, match="at least one event"):
        CxiEvents.pack([], M)


def test_events_reject_lossy_dtype_and_bad_shape(records: list[EventPeaks]) -> None:
    ev = CxiEvents.pack(records, M)
    fields = {f: getattr(ev, f) for f in ev.__dataclass_fields__}
    with pytest.raises(ValueError, match="peak_npix has dtype float32"):
        CxiEvents(**{**fields, "peak_npix": ev.peak_fs})
    with pytest.raises(ValueError, match="peak_ss has shape"):
        CxiEvents(**{**fields, "peak_ss": ev.peak_ss[:, :3]})
    with pytest.raises(ValueError, match="batch_id has 3 entries, expected 4"):
        CxiEvents(**{**fields, "batch_id": ev.batch_id[:3]})


@pytest.mark.parametrize("fsync", [True, False])
def test_round_trip_every_dataset(tmp_path: Path, records: list[EventPeaks], fsync: bool) -> None:
    ev = CxiEvents.pack(records, M)
    before = _copy_events(ev)
    frames = _frames(ev.n_events)
    path = tmp_path / cxi_file_name("peaks", "r0042", 7)
    attrs = {"min_num_peak": 0, "max_num_peak_config": M, "geometry_file": "slab.geom"}
    attrs["geometry_sha256"] = "ab" * 32
    out = write_cxi_file(
        path, ev, SLAB, _filler(frames), fsync=fsync, attrs=attrs, filtered_events=5
    )
    assert out == path
    assert sorted(p.name for p in tmp_path.iterdir()) == ["peaks_r0042_000007.cxi"]
    _assert_events_equal(ev, before)  # writing never mutates the caller's events

    with h5py.File(path, "r") as f:
        assert f["cxi_version"][()] == 140
        data = f["entry_1/data_1/data"]
        assert data.dtype == np.float32 and data.chunks == (1, *SLAB)
        np.testing.assert_array_equal(data[()], frames)
        r = f["entry_1/result_1"]
        expected = {
            "nPeaks": ev.n_peaks,
            "peakXPosRaw": ev.peak_fs,
            "peakYPosRaw": ev.peak_ss,
            "peakTotalIntensity": ev.peak_total_intensity,
            "peakNPixels": ev.peak_npix,
            "peakMaximumValue": ev.peak_max_value,
            "peakSegPosRaw": ev.peak_panel,
            "eventIndex": ev.event_index,
        }
        for name, want in expected.items():
            got = r[name][()]
            assert got.dtype == want.dtype, name
            np.testing.assert_array_equal(got, want, err_msg=name)
        # padding beyond nPeaks is exactly 0
        assert r["peakXPosRaw"][1].tolist() == [0.0] * M
        assert r["peakTotalIntensity"][0, 3:].tolist() == [0.0] * (M - 3)
        assert r["batchId"].asstr()[()].tolist() == ev.batch_id
        energy = f["LCLS/photon_energy_eV"][()]
        assert energy.dtype == np.float64
        np.testing.assert_array_equal(energy, ev.photon_energy_ev)
        stamp = f["LCLS/detector_1/timestamp"][()]
        assert stamp.dtype == np.uint64
        assert [int(t) for t in stamp] == [2**63 + 12345 + k for k in range(4)]

        a = f.attrs
        assert a["cxi_async_version"] == cxi_async.__version__
        created = datetime.fromisoformat(a["creation_time"])
        assert created.utcoffset() is not None and created.utcoffset().total_seconds() == 0
        assert a["filtered_events"] == 5
        assert not a["images_missing"]
        assert a["compression"] == "none"
        assert a["n_events"] == 4 and a["max_num_peak"] == M
        for key, value in attrs.items():
            assert a[key] == value, key


def test_zero_peak_events_keep_peak_total_intensity(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    ev = CxiEvents.pack([_record(rng, 0, k) for k in range(3)], 2048)
    path = write_cxi_file(tmp_path / "z_r1_000000.cxi", ev, SLAB, _filler(_frames(3)))
    with h5py.File(path, "r") as f:
        r = f["entry_1/result_1"]
        assert r["nPeaks"][()].tolist() == [0, 0, 0]
        for name in ("peakXPosRaw", "peakYPosRaw", "peakTotalIntensity"):
            assert r[name].shape == (3, 2048)  # M = max_num_peak even when unused
            assert not r[name][()].any()


def test_inprogress_then_rename(tmp_path: Path, records: list[EventPeaks]) -> None:
    ev = CxiEvents.pack(records, M)
    final = tmp_path / "p_r1_000003.cxi"
    seen: list[tuple[bool, bool]] = []

    def fill(i: int, out: np.ndarray) -> None:
        seen.append((inprogress_path(final).exists(), final.exists()))
        out[...] = i

    write_cxi_file(final, ev, SLAB, fill)
    assert seen == [(True, False)] * ev.n_events
    assert inprogress_path(final).name == "p_r1_000003.cxi.inprogress"
    assert [p.name for p in tmp_path.iterdir()] == [final.name]
    with h5py.File(final, "r") as f:
        assert f["entry_1/data_1/data"][:, 0, 0].tolist() == [0.0, 1.0, 2.0, 3.0]


def test_no_images_writes_zero_frames_and_says_so(tmp_path: Path, records) -> None:
    ev = CxiEvents.pack(records, M)
    path = write_cxi_file(tmp_path / "n_r1_000000.cxi", ev, SLAB, None)
    with h5py.File(path, "r") as f:
        data = f["entry_1/data_1/data"]
        assert data.shape == (4, *SLAB)
        assert not data[()].any()
        assert bool(f.attrs["images_missing"])


def test_frame_buffer_is_reused_and_starts_zeroed(tmp_path: Path, records) -> None:
    ev = CxiEvents.pack(records, M)
    buffers: list[int] = []

    def fill(i: int, out: np.ndarray) -> None:
        assert out.dtype == np.float32 and out.shape == SLAB and out.flags.c_contiguous
        if i == 0:
            assert not out.any()
        buffers.append(out.__array_interface__["data"][0])
        out[1:, :] = i + 1  # row 0 is a "gap": never written, stays 0

    path = write_cxi_file(tmp_path / "b_r1_000000.cxi", ev, SLAB, fill)
    assert len(set(buffers)) == 1
    with h5py.File(path, "r") as f:
        data = f["entry_1/data_1/data"][()]
    assert not data[:, 0].any()
    assert data[:, 1:].reshape(4, -1).max(axis=1).tolist() == [1.0, 2.0, 3.0, 4.0]


@pytest.mark.parametrize(
    ("compression", "filter_id"),
    [("bitshuffle-lz4", 32008), ("zstd", 32015), ("gzip", h5py.h5z.FILTER_DEFLATE)],
)
def test_compression_round_trip(tmp_path: Path, records, compression: str, filter_id) -> None:
    import hdf5plugin  # noqa: F401  (registers the filters for reading)

    ev = CxiEvents.pack(records, M)
    frames = _frames(ev.n_events, seed=7)
    frames[:, :10] = 0  # something compressible
    path = tmp_path / f"c_r1_{compression}.cxi"
    write_cxi_file(path, ev, SLAB, _filler(frames), compression=compression)
    with h5py.File(path, "r") as f:
        data = f["entry_1/data_1/data"]
        dcpl = data.id.get_create_plist()
        ids = [dcpl.get_filter(k)[0] for k in range(dcpl.get_nfilters())]
        assert filter_id in ids
        assert data.chunks == (1, *SLAB)
        np.testing.assert_array_equal(data[()], frames)
        np.testing.assert_array_equal(f["entry_1/result_1/peakXPosRaw"][()], ev.peak_fs)
        assert f.attrs["compression"] == compression


def test_bad_arguments_raise_before_touching_disk(tmp_path: Path, records) -> None:
    ev = CxiEvents.pack(records, M)
    final = tmp_path / "x_r1_000000.cxi"
    with pytest.raises(ValueError, match="compression 'lzf' is not one of"):
        write_cxi_file(final, ev, SLAB, None, compression="lzf")
    with pytest.raises(ValueError, match=r"\['n_events'\] are set by write_cxi_file"):
        write_cxi_file(final, ev, SLAB, None, attrs={"n_events": 3})
    with pytest.raises(ValueError, match="slab_shape"):
        write_cxi_file(final, ev, (0, 48), None)
    assert list(tmp_path.iterdir()) == []


def _assert_failed_cleanly(exc: pytest.ExceptionInfo[CxiWriteError], final: Path) -> None:
    assert str(exc.value).startswith(f"could not write {final}: ")
    assert exc.value.path == final
    assert isinstance(exc.value.__cause__, BaseException)
    assert not final.exists()
    assert not inprogress_path(final).exists()


def test_write_fails_when_parent_is_a_regular_file(tmp_path: Path, records) -> None:
    """Simulates an unwritable output location (works as root, unlike chmod 0o555)."""
    ev = CxiEvents.pack(records, M)
    (tmp_path / "not_a_dir").write_text("")
    final = tmp_path / "not_a_dir" / "p_r1_000000.cxi"
    with pytest.raises(CxiWriteError) as exc:
        write_cxi_file(final, ev, SLAB, _filler(_frames(4)))
    _assert_failed_cleanly(exc, final)
    assert exc.value.errno == errno.ENOTDIR


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_write_fails_in_read_only_directory(tmp_path: Path, records) -> None:
    ev = CxiEvents.pack(records, M)
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    final = ro / "p_r1_000000.cxi"
    try:
        with pytest.raises(CxiWriteError) as exc:
            write_cxi_file(final, ev, SLAB, _filler(_frames(4)))
        _assert_failed_cleanly(exc, final)
        assert list(ro.iterdir()) == []
    finally:
        ro.chmod(0o755)


def test_disk_full_midway_removes_inprogress(tmp_path: Path, records) -> None:
    """fill_frame raising ENOSPC on the third frame stands in for a full disk mid-file."""
    ev = CxiEvents.pack(records, M)
    before = _copy_events(ev)
    final = tmp_path / "p_r1_000000.cxi"

    def fill(i: int, out: np.ndarray) -> None:
        if i == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        out[...] = i

    with pytest.raises(CxiWriteError, match="No space left on device") as exc:
        write_cxi_file(final, ev, SLAB, fill)
    _assert_failed_cleanly(exc, final)
    assert exc.value.errno == errno.ENOSPC
    assert list(tmp_path.iterdir()) == []
    _assert_events_equal(ev, before)
    # The caller keeps its events and retries: the same path now succeeds.
    write_cxi_file(final, ev, SLAB, _filler(_frames(4)))
    assert [p.name for p in tmp_path.iterdir()] == [final.name]


def test_directory_removed_while_writing(tmp_path: Path, records) -> None:
    """The output directory disappears mid-file: HDF5 keeps writing, the rename fails."""
    ev = CxiEvents.pack(records, M)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    final = out_dir / "p_r1_000000.cxi"

    def fill(i: int, out: np.ndarray) -> None:
        if i == 1:
            inprogress_path(final).unlink()
            out_dir.rmdir()
        out[...] = i

    with pytest.raises(CxiWriteError) as exc:
        write_cxi_file(final, ev, SLAB, fill)
    _assert_failed_cleanly(exc, final)
    assert exc.value.errno == errno.ENOENT


def test_directory_moved_away_while_writing_reports_the_residue(tmp_path: Path, records) -> None:
    """The directory is renamed mid-file: the .inprogress travels with it and is reported."""
    ev = CxiEvents.pack(records, M)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    away = tmp_path / "away"
    final = out_dir / "p_r1_000000.cxi"

    def fill(i: int, out: np.ndarray) -> None:
        if i == 1:
            out_dir.rename(away)
        out[...] = i

    with pytest.raises(CxiWriteError) as exc:
        write_cxi_file(final, ev, SLAB, fill)
    assert exc.value.residue == inprogress_path(final)
    assert [p.name for p in away.iterdir()] == [inprogress_path(final).name]


def test_a_clean_failure_reports_no_residue(tmp_path: Path, records) -> None:
    ev = CxiEvents.pack(records, M)

    def fill(i: int, out: np.ndarray) -> None:
        raise OSError(errno.EIO, "device error")

    with pytest.raises(CxiWriteError) as exc:
        write_cxi_file(tmp_path / "p_r1_000000.cxi", ev, SLAB, fill)
    assert exc.value.residue is None
    assert list(tmp_path.iterdir()) == []


def test_never_overwrites_an_existing_file(tmp_path: Path, records) -> None:
    ev = CxiEvents.pack(records, M)
    final = tmp_path / "p_r1_000000.cxi"
    final.write_bytes(b"earlier file")
    with pytest.raises(CxiWriteError, match="refusing to overwrite"):
        write_cxi_file(final, ev, SLAB, None)
    assert final.read_bytes() == b"earlier file"
    assert not inprogress_path(final).exists()


@pytest.mark.parametrize("how", ["renameat2", "link"])
def test_rename_noreplace_refuses_a_taken_name(tmp_path: Path, monkeypatch, how: str) -> None:
    if how == "link":
        monkeypatch.setattr(cxi_mod, "_renameat2", None)  # the fallback: link + unlink
    elif cxi_mod._renameat2 is None:
        pytest.skip("this libc has no renameat2")
    src, dst = tmp_path / "a.inprogress", tmp_path / "a.cxi"
    src.write_bytes(b"new")
    dst.write_bytes(b"finished")
    with pytest.raises(FileExistsError):
        rename_noreplace(src, dst)
    assert (src.read_bytes(), dst.read_bytes()) == (b"new", b"finished")
    other = tmp_path / "b.cxi"
    rename_noreplace(src, other)
    assert not src.exists() and other.read_bytes() == b"new"


def test_a_taken_name_moves_on_to_the_next(tmp_path: Path, records) -> None:
    """Two writers with one counter value (two pipelines, or two starts in the same second):
    the second takes the next number, before writing or at the rename."""
    ev = CxiEvents.pack(records, M)
    names = iter(tmp_path / cxi_file_name("p", "r1", seq) for seq in range(1, 10))
    taken = tmp_path / "p_r1_000000.cxi"
    taken.write_bytes(b"earlier file")
    assert write_cxi_file(taken, ev, SLAB, None, next_name=lambda: next(names)) == (
        tmp_path / "p_r1_000001.cxi"
    )

    def steal(i: int, out: np.ndarray) -> None:  # another writer renames onto our name
        out[...] = 0
        (tmp_path / "p_r1_000002.cxi").write_bytes(b"the other writer")

    written = write_cxi_file(
        tmp_path / "p_r1_000002.cxi", ev, SLAB, steal, next_name=lambda: next(names)
    )
    assert written == tmp_path / "p_r1_000003.cxi"
    assert taken.read_bytes() == b"earlier file"
    assert (tmp_path / "p_r1_000002.cxi").read_bytes() == b"the other writer"
    with h5py.File(written, "r") as f:
        assert f["/entry_1/result_1/nPeaks"].shape == (4,)
    assert not list(tmp_path.glob("*.inprogress"))


def test_file_name() -> None:
    assert cxi_file_name("peaks", "r0042", 7) == "peaks_r0042_000007.cxi"
    assert cxi_file_name("p", "20250101T000000", 1234567) == "p_20250101T000000_1234567.cxi"
    with pytest.raises(ValueError, match="must be non-empty"):
        cxi_file_name("a/b", "r1", 0)
    with pytest.raises(ValueError, match=">= 0"):
        cxi_file_name("p", "r1", -1)


def test_sequence_counter_continues_after_existing_files(tmp_path: Path) -> None:
    assert SequenceCounter(tmp_path, "peaks").next() == 0
    for name in [
        "peaks_r0001_000004.cxi",
        "peaks_r0002_000011.cxi.inprogress",  # a crashed run's leftover counts too
        "peaks_r0002_000009.cxi",
        "other_r0001_000500.cxi",  # another prefix
        "peaks_r0001_000900.h5",  # not a CXI file
        "peaks_r0001_000950.cxi.tmp",
    ]:
        (tmp_path / name).write_bytes(b"")
    counter = SequenceCounter(tmp_path, "peaks")
    assert counter.peek() == 12
    assert [counter.next() for _ in range(3)] == [12, 13, 14]
    assert SequenceCounter(tmp_path, "other").next() == 501
    assert SequenceCounter(tmp_path, "new").next() == 0


def test_sequence_counter_after_restart_and_across_threads(tmp_path: Path, records) -> None:
    ev = CxiEvents.pack(records[:1], M)
    counter = SequenceCounter(tmp_path, "p")
    for _ in range(2):
        write_cxi_file(tmp_path / cxi_file_name("p", "r1", counter.next()), ev, SLAB, None)
    restarted = SequenceCounter(tmp_path, "p")  # a new process: must not reuse 0 or 1
    assert restarted.next() == 2

    got: list[int] = []
    lock = threading.Lock()

    def take() -> None:
        mine = [restarted.next() for _ in range(200)]
        with lock:
            got.extend(mine)

    threads = [threading.Thread(target=take) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == list(range(3, 803))


def test_sequence_counter_needs_the_directory(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        SequenceCounter(tmp_path / "missing", "p")


@pytest.mark.parametrize("fsync", [True, False])
def test_frame_buffer_starts_zeroed_in_every_file(tmp_path: Path, records, fsync: bool) -> None:
    """The buffer is reused across files: the next file must not see the last one's pixels."""
    ev = CxiEvents.pack(records, M)
    write_cxi_file(tmp_path / "b_r1_000000.cxi", ev, SLAB, _filler(_frames(4) + 5), fsync=fsync)
    seen: list[bool] = []

    def fill(i: int, out: np.ndarray) -> None:
        seen.append(bool(out.any()))
        out[1:, :] = i + 1  # row 0 is a gap

    path = write_cxi_file(tmp_path / "b_r1_000001.cxi", ev, SLAB, fill, fsync=fsync)
    assert seen[0] is False
    with h5py.File(path, "r") as f:
        assert not f["entry_1/data_1/data"][:, 0].any()


def test_fsynced_frames_sit_in_aligned_chunks(tmp_path: Path, records) -> None:
    """With fsync the frames are written straight to preallocated 4 KiB-aligned chunks."""
    ev = CxiEvents.pack(records, M)
    frames = _frames(4)
    path = write_cxi_file(tmp_path / "b_r1_000000.cxi", ev, SLAB, _filler(frames), fsync=True)
    with h5py.File(path, "r") as f:
        dset = f["entry_1/data_1/data"]
        assert dset.chunks == (1, *SLAB)
        offsets = [dset.id.get_chunk_info_by_coord((i, 0, 0)).byte_offset for i in range(4)]
        np.testing.assert_array_equal(dset[()], frames)
    assert all(off % 4096 == 0 for off in offsets)
    with open(path, "rb") as fh:  # the bytes at each chunk's offset are that frame, raw
        for off, frame in zip(offsets, frames, strict=True):
            fh.seek(off)
            assert fh.read(frame.nbytes) == frame.tobytes()


def test_frames_not_a_whole_block_use_the_chunk_path(tmp_path: Path, records) -> None:
    """A slab whose frame is not a multiple of 4 KiB cannot go O_DIRECT: same file anyway."""
    ev = CxiEvents.pack(records, M)
    odd = (7, 5)
    frames = np.random.default_rng(3).normal(size=(4, *odd)).astype(np.float32)
    path = write_cxi_file(tmp_path / "b_r1_000000.cxi", ev, odd, _filler(frames), fsync=True)
    with h5py.File(path, "r") as f:
        np.testing.assert_array_equal(f["entry_1/data_1/data"][()], frames)
