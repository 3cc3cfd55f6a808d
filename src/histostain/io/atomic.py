"""Atomic outputs: everything histostain writes goes to a temporary name first and is renamed into place.

So an interrupted run never leaves a half-written file (or folder) under its final name, and a re-run can
trust that any output that exists is complete.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary file path beside ``path``; on success it is renamed onto ``path`` in one step.

    The temporary name keeps the final suffix (``.x.png.123.tmp.png``) so writers that pick the format from
    the extension still work. On an exception the temporary file is removed and the target is untouched.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=f".tmp{target.suffix}", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write(path: str | os.PathLike[str], writer: Callable[[IO[bytes]], None]) -> Path:
    """Write a file through ``writer(handle)`` into a temp file, fsync it, then rename it into place."""
    target = Path(path)
    with atomic_path(target) as tmp, tmp.open("wb") as handle:
        writer(handle)
        handle.flush()
        os.fsync(handle.fileno())
    return target


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write a UTF-8 text file atomically."""
    return atomic_write(path, lambda handle: handle.write(text.encode("utf-8")))


@contextmanager
def atomic_directory(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it replaces ``path`` (which must not exist or be empty).

    Used for whole datasets: the folder appears under its final name only when everything in it is written.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
    try:
        yield tmp
        if target.exists():
            target.rmdir()  # only an empty folder may be replaced; a non-empty one raises OSError
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
