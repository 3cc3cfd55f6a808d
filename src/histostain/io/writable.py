"""Can this output location be written? Asked before any long computation, answered in one line.

A read-only folder, a path that runs through a file, a folder where a file is expected (or the reverse), or a
full disk should cost the user one red line naming the path and the reason, not a traceback after an hour of
work. :func:`check_output_file` and :func:`check_output_folder` probe the location up front (they create
nothing); :func:`os_error_message` turns an ``OSError`` that still happens later (the disk filled up meanwhile)
into the same kind of line, and the CLI uses it as a last safety net.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from histostain.errors import InputError

# OSErrors that are about a location or a disk a user can fix, not a bug: the CLI prints them in one line.
USER_ERRNOS = frozenset(
    code
    for code in (
        errno.EACCES,
        errno.EPERM,
        errno.EROFS,
        errno.ENOSPC,
        getattr(errno, "EDQUOT", None),
        errno.ENOTDIR,
        errno.EISDIR,
        errno.ENAMETOOLONG,
    )
    if code is not None
)
_REASONS = {
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EROFS: "the file system is read-only",
    errno.ENOSPC: "no space left on the device",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EISDIR: "it is a folder, not a file",
    errno.EEXIST: "it already exists",
    errno.ENAMETOOLONG: "the name is too long",
    errno.ENOENT: "a folder on the path does not exist",
}
if hasattr(errno, "EDQUOT"):
    _REASONS[errno.EDQUOT] = "the disk quota is exceeded"


def os_error_message(exc: OSError, path: str | os.PathLike[str] | None = None, action: str | None = "write") -> str:
    """``cannot write out/x.png: the file system is read-only`` for an OSError (its own path if none given);
    ``action=None`` leaves the verb out (``out/x.png: no space left on the device``) when it is not known."""
    where = path if path is not None else (exc.filename or "the output")
    reason = _REASONS.get(exc.errno or 0) or (exc.strerror or type(exc).__name__).lower()
    return f"cannot {action} {where}: {reason}" if action else f"{where}: {reason}"


def _existing_ancestor(path: Path) -> tuple[Path, list[Path]]:
    """The nearest existing ancestor of ``path`` (or ``path`` itself) and the missing parts below it."""
    missing: list[Path] = []
    current = path
    while not current.exists() and not current.is_symlink():
        missing.append(current)
        if current.parent == current:
            break
        current = current.parent
    return current, missing


def _check_creatable(path: Path, option: str) -> None:
    """Every missing folder down to ``path`` can be created: the nearest existing ancestor is a writable folder."""
    ancestor, _ = _existing_ancestor(path)
    if ancestor == path:
        return
    if not ancestor.is_dir():
        raise InputError(
            f"cannot write {option} {path}: {ancestor} is a file, not a folder",
            hint="choose a path whose folders are folders",
        )
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise InputError(
            f"cannot write {option} {path}: {ancestor} is not writable (permission denied or read-only)",
            hint="choose a folder you can write to",
        )


def _writable_folder(folder: Path, option: str, target: Path, what: str) -> Path:
    """``folder`` if it is a folder this process may write into (existing), else one line naming ``target``."""
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InputError(
            f"cannot write {option} {target}: {what} is not writable (permission denied or read-only)",
            hint="choose a folder you can write to",
        )
    return folder


def check_output_folder(path: str | os.PathLike[str], option: str = "--out") -> Path:
    """Fail now, in one line, when ``path`` cannot be (or become) a writable folder. Creates nothing."""
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{option} {folder} is a file, not a folder", hint="choose a folder for the outputs")
    if folder.is_dir():
        return _writable_folder(folder, option, folder, "the folder")
    _check_creatable(folder, option)
    return folder


def check_output_file(path: str | os.PathLike[str], option: str = "--out") -> Path:
    """Fail now, in one line, when the file ``path`` cannot be written (a folder there, a path through a file, a
    folder that is not writable). Creates nothing."""
    file = Path(path)
    if file.is_dir():
        raise InputError(
            f"{option} {file} is a folder; expected a file name", hint=f"e.g. {option} {file / ('x' + file.suffix)}"
        )
    if file.exists() and not os.access(file, os.W_OK):
        raise InputError(f"cannot write {option} {file}: permission denied", hint="choose another file")
    parent = file.parent
    if parent.exists() and not parent.is_dir():
        raise InputError(f"cannot write {option} {file}: {parent} is a file, not a folder")
    if parent.is_dir():
        _writable_folder(parent, option, file, str(parent))
        return file
    _check_creatable(parent, option)
    return file


__all__ = ["USER_ERRNOS", "check_output_file", "check_output_folder", "os_error_message"]
