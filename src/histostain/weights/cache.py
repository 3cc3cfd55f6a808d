"""The weights cache: one folder per named model, holding the weights file and the record of where it came from.

Layout (``<home>`` is ``settings.home``)::

    <home>/weights/<name>/<card.filename>     the weights, complete and checked (only ever renamed into place)
    <home>/weights/<name>/record.json         CacheRecord: digest, size, source, origin, time, checked against
    <home>/weights/<name>/.lock               flock target: one writer per model at a time
    <home>/weights/<name>/<filename>.<pid>.<random>.part   a transfer or copy in progress (never counts as cached)

A model is cached when both the file and its record exist. Files are written to a ``.part`` name in the model's
folder, fsynced and renamed onto the final name, so an interrupted write never leaves a file that looks valid.
When the registry gives no digest for a model, the digest of the first installed file is recorded
(``checked_against = "recorded"``) and is the reference :func:`verify` checks against from then on.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from histostain.errors import WeightsError
from histostain.io.atomic import atomic_write_text, remove_stale_temp_files
from histostain.runtime.checkpoint import sha256_file
from histostain.weights.registry import ModelCard

try:  # POSIX; elsewhere only the atomic rename protects the cache
    import fcntl
except ImportError:  # pragma: no cover - not on Linux/macOS
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

RECORD_NAME = "record.json"
LOCK_NAME = ".lock"
PART_SUFFIX = ".part"
SOURCES = ("download", "import")
CHECKED_AGAINST = ("sha256", "sha256_prefix", "recorded")
_COPY_CHUNK = 1 << 20


@dataclass
class CacheRecord:
    """What the cache knows about one installed weights file (``record.json``)."""

    name: str
    filename: str
    sha256: str  # full hex digest of the cached file
    size_bytes: int
    source: str  # "download" | "import"
    origin: str  # the URL, or the imported file's absolute path / run folder
    created: str  # UTC ISO time
    checked_against: str  # "sha256" | "sha256_prefix" | "recorded" (this record is the reference)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> CacheRecord:
        """A record from parsed JSON; anything malformed is a ValueError."""
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        names = [item.name for item in fields(cls)]
        missing = [name for name in names if name not in data]
        if missing:
            raise ValueError(f"missing {', '.join(missing)}")
        values = {name: data[name] for name in names}
        for name, value in values.items():
            wanted = int if name == "size_bytes" else str
            if not isinstance(value, wanted) or isinstance(value, bool):
                raise ValueError(f"{name} must be {wanted.__name__}")
        if len(values["sha256"]) != 64 or any(c not in "0123456789abcdef" for c in values["sha256"]):
            raise ValueError("sha256 must be 64 lower-case hexadecimal digits")
        return cls(**values)


# ------------------------------------------------------------------------------------------------ layout


def model_dir(card: ModelCard, home: Path) -> Path:
    """``<home>/weights/<card.name>``."""
    return Path(home) / "weights" / card.name


def cached_path(card: ModelCard, home: Path) -> Path:
    """``<home>/weights/<name>/<card.filename>`` (whether or not it exists)."""
    return model_dir(card, home) / card.filename


def record_path(card: ModelCard, home: Path) -> Path:
    """``<home>/weights/<name>/record.json``."""
    return model_dir(card, home) / RECORD_NAME


def part_path(card: ModelCard, home: Path) -> Path:
    """A fresh temporary name for a file of ``card`` in its model folder: ``<filename>.<pid>.<random>.part``."""
    return model_dir(card, home) / f"{card.filename}.{os.getpid()}.{secrets.token_hex(4)}{PART_SUFFIX}"


def read_record(card: ModelCard, home: Path) -> CacheRecord | None:
    """The model's record, None when there is none; a damaged record is a WeightsError."""
    path = record_path(card, home)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise WeightsError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        record = CacheRecord.from_dict(json.loads(text))
    except (ValueError, TypeError) as exc:  # json.JSONDecodeError is a ValueError
        raise WeightsError(
            f"the cache record {path} is damaged ({' '.join(str(exc).split())})",
            hint=f"run `histostain weights download {card.name} --force` or import the file again",
        ) from None
    return record


def is_cached(card: ModelCard, home: Path) -> bool:
    """Whether the weights file and its record both exist (a ``.part`` file never counts)."""
    return cached_path(card, home).is_file() and record_path(card, home).is_file()


def cache_size(card: ModelCard, home: Path) -> int | None:
    """Bytes of the cached weights file, None when the model is not cached."""
    if not is_cached(card, home):
        return None
    try:
        return cached_path(card, home).stat().st_size
    except FileNotFoundError:  # removed meanwhile
        return None


def remove_stale_parts(card: ModelCard, home: Path) -> int:
    """Delete every ``.part`` file (and temp file of the record) in the model's folder; returns how many.

    Call only while holding :func:`model_lock`: every writer of ``.part`` files holds the lock while its file
    exists, so any ``.part`` seen then was left by a process that was killed (or lost power) mid-transfer.
    """
    folder = model_dir(card, home)
    removed = remove_stale_temp_files([record_path(card, home)])
    with suppress(FileNotFoundError):
        for entry in os.scandir(folder):
            if entry.name.endswith(PART_SUFFIX) and entry.is_file(follow_symlinks=False):
                Path(entry.path).unlink(missing_ok=True)
                log.debug("removed leftover partial file %s", entry.path)
                removed += 1
    return removed


# ------------------------------------------------------------------------------------------------ locking

_held = threading.local()  # {lock path: (fd, depth)} of the locks this thread holds


@contextmanager
def model_lock(card: ModelCard, home: Path) -> Iterator[None]:
    """Hold the model's exclusive lock (``fcntl.flock`` on ``<model_dir>/.lock``), waiting for it if needed.

    Excludes other processes and other threads (each thread opens its own descriptor). Re-entrant within one
    thread, so a caller holding the lock can call :func:`install_file`, which takes it too.
    """
    folder = model_dir(card, home)
    key = str(folder / LOCK_NAME)
    held: dict[str, list[int]] = _held.__dict__.setdefault("locks", {})
    if key in held:
        held[key][1] += 1
        try:
            yield
        finally:
            held[key][1] -= 1
        return
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(key, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        raise WeightsError(
            f"cannot write to the weights cache {folder}: {exc.strerror or exc}",
            hint="point HISTOSTAIN_HOME (or home in the settings file) at a writable folder",
        ) from None
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log.info("waiting for another histostain process that is writing %s", card.name)
                fcntl.flock(fd, fcntl.LOCK_EX)
        held[key] = [fd, 1]
        try:
            yield
        finally:
            del held[key]
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


# ------------------------------------------------------------------------------------------------ install


def _fsync_dir(folder: Path) -> None:
    with suppress(OSError):  # not every platform/filesystem lets a folder be opened or fsynced
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _copy_to(src: Path, dst: Path) -> None:
    with src.open("rb") as reader, dst.open("xb") as writer:
        shutil.copyfileobj(reader, writer, _COPY_CHUNK)
        writer.flush()
        os.fsync(writer.fileno())


def expected_digest(card: ModelCard) -> str:
    """How the card's digest reads in messages: the full sha256, or ``<prefix>...``."""
    if card.sha256:
        return card.sha256
    if card.sha256_prefix:
        return f"{card.sha256_prefix}..."
    return "unknown"


def mismatch_message(card: ModelCard, digest: str, origin: str) -> str:
    return f"checksum mismatch for {card.name} from {origin}: expected sha256 {expected_digest(card)}, got {digest}"


def install_file(
    card: ModelCard, home: Path, src: Path, *, source: str, origin: str, move: bool = False
) -> CacheRecord:
    """Put ``src`` into the cache as the weights of ``card`` and write its record; returns the record.

    The file installed is hashed and checked against the card (a wrong digest is a WeightsError naming both
    digests and installs nothing). With ``move=True`` ``src`` must be a temporary file in the model's folder
    (a finished download) and is renamed into place; otherwise it is copied to a ``.part`` file there first
    (and ``src`` is left as it is). ``src`` is never deleted on failure: the caller owns it. Runs under
    :func:`model_lock`. The old record is removed before the file is replaced and the new one written after,
    so at no moment does a record describe another file.
    """
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, not {source!r}")
    src = Path(src)
    folder = model_dir(card, home)
    with model_lock(card, home):
        if move:
            if src.parent.resolve() != folder.resolve():
                raise ValueError(f"move=True needs a temporary file in {folder}, not {src}")
            staged = src
        else:
            if not src.is_file():
                raise WeightsError(f"{src} is not a file")
            staged = part_path(card, home)
        try:
            if not move:
                try:
                    _copy_to(src, staged)
                except OSError as exc:
                    raise WeightsError(f"cannot copy {src} into the cache: {exc.strerror or exc}") from None
            digest = sha256_file(staged)
            size = staged.stat().st_size
            matches = card.matches_digest(digest)
            if matches is False:
                raise WeightsError(
                    mismatch_message(card, digest, origin),
                    hint="the file is not the published one (corrupted, truncated or another version)",
                )
            checked = "sha256" if card.sha256 else "sha256_prefix" if card.sha256_prefix else "recorded"
            if checked == "recorded":
                previous = _previous_record(card, home)
                if previous is not None and previous.sha256 != digest:
                    log.warning(
                        "%s: the new file's sha256 %s replaces the recorded %s", card.name, digest, previous.sha256
                    )
            record = CacheRecord(
                name=card.name,
                filename=card.filename,
                sha256=digest,
                size_bytes=size,
                source=source,
                origin=origin,
                created=datetime.now(UTC).isoformat(timespec="seconds"),
                checked_against=checked,
            )
            record_file = record_path(card, home)
            record_file.unlink(missing_ok=True)
            if move:  # the finished download was fsynced by its writer; make sure of it here too
                with staged.open("rb+") as handle:
                    os.fsync(handle.fileno())
            os.chmod(staged, 0o666 & ~_umask())
            os.replace(staged, cached_path(card, home))
            _fsync_dir(folder)
            atomic_write_text(record_file, json.dumps(record.to_dict(), indent=2) + "\n")
            return record
        finally:
            if not move:
                staged.unlink(missing_ok=True)


def _previous_record(card: ModelCard, home: Path) -> CacheRecord | None:
    try:
        return read_record(card, home)
    except WeightsError:
        return None


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# ------------------------------------------------------------------------------------------------ verify


def verify(card: ModelCard, home: Path) -> tuple[bool, str]:
    """Re-hash the cached file; ``(ok, one-line message)``.

    The file must match the card's digest (sha256 or published prefix) when the card has one, and the digest
    in its record in every case (the record is the only reference when the registry gives no digest). A
    packaged card's shipped file (no cache, no record) must match the card's sha256.
    """
    if card.packaged is not None:
        return _verify_packaged(card)
    path = cached_path(card, home)
    if not path.is_file():
        return False, f"{card.name}: not in the cache"
    try:
        record = read_record(card, home)
    except WeightsError as exc:
        return False, f"{card.name}: {exc.one_line()}"
    if record is None:
        return False, (
            f"{card.name}: {path} has no record.json (run `histostain weights download {card.name} --force` "
            f"or `histostain weights import {card.name} FILE`)"
        )
    try:
        digest = sha256_file(path)
    except OSError as exc:
        return False, f"{card.name}: cannot read {path}: {exc.strerror or exc}"
    fix = f"run `histostain weights download {card.name} --force` or import the file again"
    if card.sha256 and digest != card.sha256:
        return False, f"{card.name}: checksum mismatch: expected sha256 {card.sha256}, got {digest} ({fix})"
    if digest != record.sha256:
        kind = "in record.json" if card.sha256 else "(recorded)"
        return False, f"{card.name}: checksum mismatch: expected sha256 {record.sha256} {kind}, got {digest} ({fix})"
    if card.matches_digest(digest) is False:  # the record matches, but not the card's published prefix
        return False, f"{card.name}: checksum mismatch: expected sha256 {expected_digest(card)}, got {digest} ({fix})"
    against = {"sha256": "registry sha256", "sha256_prefix": "registry sha256 prefix", "recorded": "recorded sha256"}
    basis = against["sha256" if card.sha256 else "sha256_prefix" if card.sha256_prefix else "recorded"]
    return True, f"{card.name}: ok ({basis} {digest[:12]}..., {path.stat().st_size} bytes)"


def _verify_packaged(card: ModelCard) -> tuple[bool, str]:
    path = card.packaged_path()
    assert path is not None
    if not path.is_file():
        return False, f"{card.name}: the packaged file {path} is missing (reinstall histostain)"
    digest = sha256_file(path)
    if card.matches_digest(digest) is False:
        expected = expected_digest(card)
        return False, f"{card.name}: checksum mismatch: expected sha256 {expected}, got {digest} (reinstall histostain)"
    basis = "registry sha256" if card.sha256 else "registry sha256 prefix" if card.sha256_prefix else "no digest"
    return True, f"{card.name}: ok, packaged ({basis} {digest[:12]}..., {path.stat().st_size} bytes)"


__all__ = [
    "CHECKED_AGAINST",
    "CacheRecord",
    "cache_size",
    "cached_path",
    "install_file",
    "is_cached",
    "model_dir",
    "model_lock",
    "part_path",
    "read_record",
    "record_path",
    "remove_stale_parts",
    "verify",
]
