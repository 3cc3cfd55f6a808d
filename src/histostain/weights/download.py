"""Checksummed downloads of named models into the weights cache.

A download streams the first working URL of the card (``https://``, ``http://`` or ``file://``) into a
``.part`` file in the model's cache folder, with a progress bar, checks that every announced byte arrived,
hashes it against the card and renames it into place (:func:`histostain.weights.cache.install_file`). Every
failure (HTTP status, timeout, truncated transfer, checksum mismatch, Ctrl-C) removes the ``.part`` file and
is a one-line :class:`~histostain.errors.WeightsError`. TLS is always verified (the default SSL context).

The whole transfer runs under the model's lock, so two processes asked for the same model at once do not both
fetch it: the second waits, then finds it cached. An interrupted download is restarted from the beginning,
not resumed: ``.part`` files of a killed process are deleted when the next download of that model takes the
lock. With ``HISTOSTAIN_OFFLINE=1`` nothing here touches the network.
"""

from __future__ import annotations

import http.client
import logging
import os
import shutil
import ssl
import urllib.error
import urllib.request
from pathlib import Path

from histostain.errors import WeightsError
from histostain.runtime.progress import progress_task
from histostain.weights.cache import (
    CacheRecord,
    install_file,
    is_cached,
    model_lock,
    part_path,
    read_record,
    record_path,
    remove_stale_parts,
)
from histostain.weights.registry import ModelCard

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 60.0
OFFLINE_ENV = "HISTOSTAIN_OFFLINE"
CHUNK_SIZE = 1 << 20


def offline_from_env() -> bool:
    """Whether ``HISTOSTAIN_OFFLINE`` asks for no network (``1``, ``true`` or ``yes``)."""
    return os.environ.get(OFFLINE_ENV, "").strip().lower() in ("1", "true", "yes")


def import_command(card: ModelCard) -> str:
    return f"histostain weights import {card.name} FILE"


def offline_message(card: ModelCard) -> str:
    """The one line for a model that is not cached while offline: where to get it and how to import it."""
    where = card.urls[0] if card.urls else (card.manual_download or "the weights file")
    return (
        f"{card.name} is not in the cache and {OFFLINE_ENV} is set; download {where} elsewhere and run: "
        f"{import_command(card)}"
    )


def _cached_record(card: ModelCard, home: Path) -> CacheRecord | None:
    """The record of a cached model; None when it is not cached or its record is damaged (then re-fetched)."""
    if not is_cached(card, home):
        return None
    try:
        return read_record(card, home)
    except WeightsError as exc:
        log.warning("%s; downloading it again", exc.one_line())
        return None


def download(
    card: ModelCard,
    home: Path,
    *,
    offline: bool = False,
    timeout: float = DEFAULT_TIMEOUT,
    force: bool = False,
) -> CacheRecord:
    """Make sure ``card``'s weights are in the cache under ``home``; returns their record.

    A cached model is returned without touching the network (unless ``force``). ``offline`` (or
    ``HISTOSTAIN_OFFLINE`` in the environment, which ``offline=False`` does not override) forbids the network:
    a model that is not cached is then an error naming the URL and the ``weights import`` command. URLs are
    tried in order; the error of each failed one is reported if none works.
    """
    home = Path(home)
    if not force:
        record = _cached_record(card, home)
        if record is not None:
            return record
    if offline or offline_from_env():
        raise WeightsError(offline_message(card))
    if not card.urls:
        note = card.manual_download or "the registry gives no URL for it"
        raise WeightsError(
            f"{card.name} has no direct download URL: {note}",
            hint=f"download it by hand, then run: {import_command(card)}",
        )
    with model_lock(card, home):
        remove_stale_parts(card, home)
        if not force:  # another process may have finished it while this one waited for the lock
            record = _cached_record(card, home)
            if record is not None:
                return record
        errors: list[WeightsError] = []
        for number, url in enumerate(card.urls, start=1):
            part = part_path(card, home)
            try:
                _fetch(card, url, part, timeout)
                record = install_file(card, home, part, source="download", origin=url, move=True)
            except WeightsError as exc:
                errors.append(exc)
                if number < len(card.urls):
                    log.warning("%s; trying the next URL", exc.message)
                continue
            finally:
                part.unlink(missing_ok=True)
            if record.checked_against == "recorded":
                log.info(
                    "%s: the registry gives no sha256; recorded sha256 %s in %s (later loads are checked against it)",
                    card.name,
                    record.sha256,
                    record_path(card, home),
                )
            return record
    if len(errors) == 1:
        raise errors[0]
    raise WeightsError("; ".join(exc.message for exc in errors), hint=errors[-1].hint)


def _network_hint(card: ModelCard, url: str) -> str:
    return f"check the network (and proxy settings), or download {url} elsewhere and run: {import_command(card)}"


def _reason(reason: object) -> str:
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror
    return " ".join(str(reason).split()) or type(reason).__name__


def _fetch(card: ModelCard, url: str, part: Path, timeout: float) -> None:
    """Stream ``url`` into the new file ``part``; every failure is a WeightsError (``part`` may remain)."""
    failed = f"download of {card.name} failed"
    hint = _network_hint(card, url)
    timed_out = WeightsError(f"{failed}: timed out after {timeout:g}s ({url})", hint=hint)
    request = urllib.request.Request(url, headers={"User-Agent": _user_agent()})
    try:
        response = urllib.request.urlopen(request, timeout=timeout, context=ssl.create_default_context())
    except urllib.error.HTTPError as exc:
        exc.close()
        raise WeightsError(f"{failed}: HTTP {exc.code} from {url}", hint=hint) from None
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, TimeoutError):
            raise timed_out from None
        raise WeightsError(f"{failed}: {_reason(exc.reason)} ({url})", hint=hint) from None
    except TimeoutError:
        raise timed_out from None
    except (OSError, http.client.HTTPException, ValueError) as exc:
        raise WeightsError(f"{failed}: {_reason(exc)} ({url})", hint=hint) from None
    with response:
        total = _content_length(response)
        if total is not None:
            _check_space(card, part.parent, total)
        read = getattr(response, "read1", response.read)  # what has arrived, so progress moves with the bytes
        received = 0
        with part.open("xb") as handle, progress_task(f"Downloading {card.name}", total=total, unit="B") as task:
            while True:
                try:
                    chunk = read(CHUNK_SIZE)
                except http.client.IncompleteRead as exc:
                    received += len(exc.partial)
                    expected = total if total is not None else received + (exc.expected or 0)
                    raise _truncated(failed, received, expected, url, hint) from None
                except TimeoutError:
                    raise timed_out from None
                except (OSError, http.client.HTTPException) as exc:
                    raise WeightsError(f"{failed}: {_reason(exc)} after {received} bytes ({url})", hint=hint) from None
                if not chunk:
                    break
                try:
                    handle.write(chunk)
                except OSError as exc:
                    raise WeightsError(f"cannot write {part}: {_reason(exc)}") from None
                received += len(chunk)
                task.advance(len(chunk))
            handle.flush()
            os.fsync(handle.fileno())
    if total is not None and received < total:
        raise _truncated(failed, received, total, url, hint)


def _truncated(failed: str, received: int, expected: int, url: str, hint: str) -> WeightsError:
    return WeightsError(f"{failed}: transfer truncated at {received} of {expected} bytes ({url})", hint=hint)


def _content_length(response: object) -> int | None:
    headers = getattr(response, "headers", None)
    value = headers.get("Content-Length") if headers is not None else None
    try:
        length = int(value) if value is not None else None
    except ValueError:
        return None
    return length if length is not None and length >= 0 else None


def _check_space(card: ModelCard, folder: Path, needed: int) -> None:
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return
    if free < needed:
        raise WeightsError(
            f"not enough space for {card.name}: {needed} bytes needed, {free} free in {folder}",
            hint="free some space or point HISTOSTAIN_HOME at a larger disk",
        )


def _user_agent() -> str:
    from histostain import __version__

    return f"histostain/{__version__}"


__all__ = ["DEFAULT_TIMEOUT", "OFFLINE_ENV", "download", "import_command", "offline_from_env", "offline_message"]
