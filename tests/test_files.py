"""cxi_async.core.files: atomic replacement, its permissions, and the fsync helpers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cxi_async.core import files as files_mod
from cxi_async.core.files import FILE_MODE, atomic_write, fsync_dir, fsync_file


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


def test_atomic_write_takes_a_string_or_chunks(tmp_path: Path) -> None:
    target = tmp_path / "x.lst"
    assert atomic_write(target, "one\ntwo\n") == target
    assert target.read_text() == "one\ntwo\n"
    assert atomic_write(str(target), ["a\n", "b\n"], fsync=True) == target
    assert target.read_text() == "a\nb\n"
    assert _leftovers(tmp_path) == []


def test_failure_while_writing_leaves_old_content(tmp_path: Path) -> None:
    target = tmp_path / "x.lst"
    atomic_write(target, ["old\n"])

    def chunks():
        yield "new partial line"
        raise RuntimeError("writer died")

    with pytest.raises(RuntimeError):
        atomic_write(target, chunks())
    assert target.read_text() == "old\n"
    assert _leftovers(tmp_path) == []


def test_failed_rename_leaves_old_content_and_no_temporary(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "x.lst"
    atomic_write(target, "old\n")

    def refuse(src: str, dst: str) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(files_mod.os, "replace", refuse)
    with pytest.raises(OSError, match="Input/output error"):
        atomic_write(target, "new\n")
    monkeypatch.undo()
    assert target.read_text() == "old\n"
    assert _leftovers(tmp_path) == []


def test_new_file_is_readable_like_any_new_file(tmp_path: Path) -> None:
    umask = os.umask(0o022)
    os.umask(umask)
    assert 0o666 & ~umask == FILE_MODE
    target = atomic_write(tmp_path / "status.json", "{}\n")
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask  # mkstemp alone would give 0600


def test_fsync_with_the_directory_flushed_after_the_rename(tmp_path: Path, monkeypatch) -> None:
    synced: list[str] = []
    real_fsync_dir = files_mod.fsync_dir

    def record(directory) -> None:
        synced.append(str(directory))
        real_fsync_dir(directory)

    monkeypatch.setattr(files_mod, "fsync_dir", record)
    atomic_write(tmp_path / "a", "x", fsync=False)
    assert synced == []
    atomic_write(tmp_path / "a", "y", fsync=True)
    assert synced == [str(tmp_path)]


def test_fsync_helpers(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"data")
    fsync_file(path)
    fsync_dir(tmp_path)
    with pytest.raises(NotADirectoryError):
        fsync_dir(path)  # a file is refused: the caller meant its directory
    with pytest.raises(FileNotFoundError):
        fsync_file(tmp_path / "missing")
