"""files.py: every write is all or nothing, and outputs are never overwritten by accident."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from llmdistill.errors import UsageError
from llmdistill.files import atomic_dir, atomic_path, atomic_write, refuse_existing


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_atomic_write_replaces_the_file_and_leaves_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "out.txt"
    atomic_write(path, "one")
    atomic_write(path, "two")
    assert path.read_text() == "two"
    atomic_write(path, b"\x00bytes")
    assert path.read_bytes() == b"\x00bytes"
    assert leftovers(path.parent) == []


def test_a_failed_write_keeps_the_old_file_and_removes_the_temp(tmp_path: Path) -> None:
    path = tmp_path / "out.txt"
    path.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed midway")
    assert path.read_text() == "old"
    assert leftovers(tmp_path) == []


def test_atomic_dir_swaps_in_a_whole_folder(tmp_path: Path) -> None:
    target = tmp_path / "model"
    with atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("first")
    with atomic_dir(target) as tmp:
        (tmp / "b.txt").write_text("second")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]
    assert leftovers(tmp_path) == []


def test_a_failed_atomic_dir_keeps_the_old_folder(tmp_path: Path) -> None:
    target = tmp_path / "model"
    target.mkdir()
    (target / "weights").write_text("old")
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "weights").write_text("new")
        raise RuntimeError("training crashed")
    assert (target / "weights").read_text() == "old"
    assert leftovers(tmp_path) == []


def test_atomic_dir_without_overwrite_refuses_an_existing_folder(tmp_path: Path) -> None:
    target = tmp_path / "model"
    target.mkdir()
    with pytest.raises(UsageError, match="already exists: pass a new --out"), \
            atomic_dir(target, overwrite=False):
        pass


def test_files_get_the_umask_mode_even_from_private_writers(tmp_path: Path) -> None:
    umask = os.umask(0o022)
    try:
        with atomic_dir(tmp_path / "m") as tmp:
            (tmp / "f").write_text("x")
            (tmp / "f").chmod(0o600)
    finally:
        os.umask(umask)
    assert ((tmp_path / "m" / "f").stat().st_mode & 0o777) == 0o644


def test_refuse_existing_names_the_flag_and_the_fix(tmp_path: Path) -> None:
    refuse_existing(tmp_path / "new")  # nothing there: fine
    with pytest.raises(UsageError, match=r"already exists: pass a new --student-out or delete"):
        refuse_existing(tmp_path, "--student-out")
