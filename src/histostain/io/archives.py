"""Safe extraction of the published dataset zips (PanNuke fold zips, EndoNuke data.zip, BCI).

A zip from the internet is untrusted input: member names may try to escape the target folder (``../``,
absolute paths, drive letters), entries may be symlinks, and sizes may be forged to fill the disk (checked
against a total limit and, while streaming, against each member's declared size). Every member is checked
before anything is written, and extraction goes into a temporary folder that is renamed into place only when
complete.
"""

from __future__ import annotations

import shutil
import stat
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from histostain.errors import InputError
from histostain.io.atomic import atomic_directory

DEFAULT_MAX_TOTAL_BYTES = 64 * 1024**3  # the three PanNuke folds together are about 30 GB unpacked


def _member_problem(info: zipfile.ZipInfo) -> str | None:
    """Why a member may not be extracted, or None when it is safe."""
    name = info.filename
    if "\x00" in name:
        return "contains a NUL byte"
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or (len(name) > 1 and name[1] == ":"):
        return "is an absolute path"
    if ".." in path.parts:
        return "escapes the target folder with '..'"
    kind = stat.S_IFMT(info.external_attr >> 16)  # 0 when the archiver recorded no Unix file type
    if kind == stat.S_IFLNK:
        return "is a symbolic link"
    if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
        return "is not a regular file or folder"
    return None


def check_zip(archive: Path, max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES) -> list[zipfile.ZipInfo]:
    """Validate every member of ``archive`` without extracting; return the members."""
    try:
        with zipfile.ZipFile(archive) as handle:
            members = handle.infolist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise InputError(f"{archive} is not a readable zip archive ({exc})", hint="download it again") from exc
    total = 0
    for info in members:
        problem = _member_problem(info)
        if problem:
            raise InputError(f"refusing to extract {archive}: member {info.filename!r} {problem}")
        total += info.file_size
    if total > max_total_bytes:
        raise InputError(
            f"refusing to extract {archive}: {total / 1024**3:.1f} GiB unpacked exceeds the"
            f" {max_total_bytes / 1024**3:.0f} GiB limit",
            hint="unpack it yourself and pass the folder",
        )
    free = shutil.disk_usage(archive.parent if archive.parent.exists() else Path.cwd()).free
    if total > free:
        raise InputError(f"not enough disk space to extract {archive}: needs {total / 1024**3:.1f} GiB")
    return members


def extract_zip(archive: Path, target: Path, max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES) -> Path:
    """Extract a zip safely into ``target`` (created atomically); returns ``target``.

    Members are streamed with a running size check, so a member whose real size exceeds its declared size
    (a forged header, the usual zip-bomb trick) is stopped as well.
    """
    members = check_zip(archive, max_total_bytes)
    with atomic_directory(target) as tmp, zipfile.ZipFile(archive) as handle:
        for info in members:
            relative = PurePosixPath(info.filename.replace("\\", "/"))
            destination = tmp.joinpath(*relative.parts)
            if info.is_dir():
                destination.mkdir(parents=True, exist_ok=True)
                continue
            destination.parent.mkdir(parents=True, exist_ok=True)
            written = 0
            try:
                with handle.open(info) as source, destination.open("wb") as sink:
                    while chunk := source.read(1024 * 1024):
                        written += len(chunk)
                        if written > info.file_size:
                            raise InputError(
                                f"refusing to extract {archive}: {info.filename!r} is larger than declared"
                            )
                        sink.write(chunk)
            except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
                raise InputError(
                    f"{archive} is corrupt: member {info.filename!r} fails to decompress ({exc})",
                    hint="download the archive again",
                ) from exc
    return target
