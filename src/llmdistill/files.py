"""The one owner of how llmdistill writes files: atomically, and never over a user's output.

Every artefact (annotations, predictions, reports, model folders, exports, joined GGUF files) is
written to a temporary name beside its destination and renamed into place, so a run killed at any
instant leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from llmdistill.errors import UsageError


def _temp_name(path: Path, kind: str = "tmp") -> Path:
    """A hidden sibling of `path` that no other process or run picks: .NAME.KIND-PID-RANDOM."""
    return path.with_name(f".{path.name}.{kind}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def refuse_existing(path: Path, flag: str = "--out") -> None:
    """Stop before any work when the output is already there: outputs are never overwritten."""
    if Path(path).exists():
        raise UsageError(f"{path} already exists: pass a new {flag} or delete it")


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary file path beside `path`; on success it replaces `path`, else vanishes.

    For writers that want a file name (pyarrow, pandas, onnx): write to the yielded path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_name(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write(path: Path, data: str | bytes) -> Path:
    """Replace `path` with `data` (text as UTF-8) in one rename."""
    with atomic_path(path) as tmp:
        if isinstance(data, bytes):
            tmp.write_bytes(data)
        else:
            tmp.write_text(data, encoding="utf-8")
    return Path(path)


@contextmanager
def atomic_dir(path: Path, overwrite: bool = True) -> Iterator[Path]:
    """Yield an empty temporary folder; on success it takes the place of `path`.

    An older `path` is moved aside and removed only after the new folder is in place, so a crash
    leaves one complete folder. With `overwrite=False` an existing `path` is refused (checked
    again at the rename, in case another process wrote it meanwhile).
    """
    path = Path(path)
    if not overwrite:
        refuse_existing(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_name(path)
    tmp.mkdir()
    try:
        yield tmp
        _normalise_modes(tmp)
        if not overwrite:
            refuse_existing(path)
        old = _temp_name(path, "old") if path.exists() else None
        if old is not None:
            os.replace(path, old)
        try:
            os.replace(tmp, path)
        except OSError:
            if old is not None:
                os.replace(old, path)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _normalise_modes(folder: Path) -> None:
    """Some writers create private (0600) files; give every file the umask's default mode."""
    umask = os.umask(0)
    os.umask(umask)
    for f in folder.rglob("*"):
        if f.is_file():
            f.chmod(0o666 & ~umask)
