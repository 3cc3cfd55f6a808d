"""Atomic outputs: everything histostain writes goes to a temporary name first and is renamed into place.

So an interrupted run never leaves a half-written file (or folder) under its final name, and a re-run can
trust that any output that exists is complete.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)

# The name atomic_path gives a temporary file: ".<target name>.<random, no dot>.tmp<target suffix>".
_TEMP_NAME = re.compile(r"^\.(?P<target>.+)\.[^./]+\.tmp(?P<suffix>\.[^./]*)?$")


def _umask() -> int:
    """The process umask (read by setting and restoring it; there is no read-only call)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _default_mode(directory: bool) -> int:
    """Permissions a normally created file or folder would get; mkstemp/mkdtemp use private 0600/0700."""
    return (0o777 if directory else 0o666) & ~_umask()


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
        if tmp.exists():
            os.chmod(tmp, _default_mode(directory=False))
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
def atomic_directory(path: str | os.PathLike[str], replace: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it takes the name ``path``.

    Used for whole datasets: the folder appears under its final name only when everything in it is written.
    An existing empty folder is replaced; an existing non-empty one only with ``replace=True`` (it is moved
    aside first and deleted after the swap, so at every moment either the old or the new complete folder
    carries the name). Otherwise ``FileExistsError``.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
    old: Path | None = None
    try:
        yield tmp
        os.chmod(tmp, _default_mode(directory=True))
        if target.exists():
            if any(target.iterdir()):
                if not replace:
                    raise FileExistsError(f"{target} exists and is not empty")
                old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
                os.replace(target, old / target.name)
            else:
                target.rmdir()
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            if not target.exists():  # the swap failed half-way: put the previous folder back
                os.replace(old / target.name, target)
            shutil.rmtree(old, ignore_errors=True)


def remove_stale_partials(path: str | os.PathLike[str]) -> int:
    """Delete temporary siblings left by an interrupted :func:`atomic_directory` run; returns how many."""
    target = Path(path)
    if not target.parent.is_dir():
        return 0
    removed = 0
    for leftover in target.parent.glob(f".{target.name}.*"):
        if leftover.is_dir() and leftover.suffix in {".partial", ".old"}:
            shutil.rmtree(leftover, ignore_errors=True)
            removed += 1
    return removed


def temp_file_target(name: str) -> str | None:
    """The target file name a temporary file of :func:`atomic_path` was written for, or None if it is not one.

    ``.x.png.k2j4_q9a.tmp.png`` -> ``x.png``. The random part never contains a dot, so target names with dots
    (``a.b.png``) are recovered exactly, and the suffix must match the target's, as atomic_path writes it.
    """
    match = _TEMP_NAME.match(name)
    if match is None:
        return None
    target = match.group("target")
    return target if Path(target).suffix == (match.group("suffix") or "") else None


def remove_stale_temp_files(targets: Iterable[str | os.PathLike[str]]) -> int:
    """Delete temporary files that interrupted atomic writes of ``targets`` left beside them; returns how many.

    Only temp files of the given targets are touched, so a caller that owns a set of outputs (one shard of a
    batch run) never deletes the in-progress temp file of another process writing other outputs into the same
    folder. Each folder is listed once, however many targets it holds.
    """
    by_folder: dict[Path, set[str]] = defaultdict(set)
    for target in targets:
        path = Path(target)
        by_folder[path.parent].add(path.name)
    removed = 0
    for folder, names in by_folder.items():
        try:
            entries = list(os.scandir(folder))
        except (FileNotFoundError, NotADirectoryError):
            continue
        for entry in entries:
            if entry.name.startswith(".") and temp_file_target(entry.name) in names and entry.is_file():
                Path(entry.path).unlink(missing_ok=True)
                log.debug("removed leftover temporary file %s", entry.path)
                removed += 1
    return removed
