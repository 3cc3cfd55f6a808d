"""The provenance record every output carries: the command as typed, the version, the UTC time, the options.

One shape for every self-describing folder (``synth.json``, a prepared ``manifest.json``, a training run's
``config.toml``, ``translate.json``, evaluate's JSON)::

    {"command": ["histostain", "--device", "cpu", "translate", ...],   # argv as typed, global options included
     "histostain_version": "0.x.y",
     "created": "2026-11-26T12:00:00+00:00",                            # UTC, seconds
     "options": {...}}                                                   # the resolved options of the command

The CLI records the argument vector once per invocation (:func:`set_invocation`) and fills the options from
the parsed command (``cli.common.provenance``); services only pass the record on. Library callers that never
went through the CLI get ``sys.argv`` as the command.
"""

from __future__ import annotations

import enum
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import PurePath
from typing import Any

_INVOCATION: list[str] | None = None


def set_invocation(argv: Sequence[str]) -> None:
    """Record the command line of this process as the user typed it (``["histostain", *arguments]``)."""
    global _INVOCATION
    _INVOCATION = [str(arg) for arg in argv]


def invocation() -> list[str]:
    """The recorded command line, or ``sys.argv`` when histostain is used as a library."""
    return list(_INVOCATION) if _INVOCATION is not None else [str(arg) for arg in sys.argv]


def utc_now() -> str:
    """The current UTC time as ISO 8601 to the second (``2026-11-26T12:00:00+00:00``)."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def plain(value: Any) -> Any:
    """Options as JSON/TOML can hold them: paths and enums as strings, tuples and sets as lists, numpy as Python."""
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, enum.Enum):
        return plain(value.value)
    if isinstance(value, Mapping):
        return {str(key): plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [plain(item) for item in value]
    if isinstance(value, set | frozenset):
        return sorted(plain(item) for item in value)
    if hasattr(value, "item") and callable(value.item) and not isinstance(value, str | bytes):
        return value.item()  # numpy scalars
    return value


@dataclass(frozen=True)
class Provenance:
    """Who made an output, with which histostain, when, and with which resolved options."""

    command: tuple[str, ...]
    histostain_version: str
    created: str
    options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def capture(cls, options: Mapping[str, Any] | None = None, command: Sequence[str] | None = None) -> Provenance:
        """A record of now: this invocation's command line (unless given), the version, the time, ``options``."""
        from histostain import __version__

        return cls(
            command=tuple(invocation() if command is None else (str(arg) for arg in command)),
            histostain_version=__version__,
            created=utc_now(),
            options=plain(dict(options or {})),
        )

    def with_options(self, **more: Any) -> Provenance:
        """The same record with more (or replaced) options, e.g. what a service resolved itself."""
        return Provenance(self.command, self.histostain_version, self.created, {**self.options, **plain(more)})

    def to_dict(self) -> dict[str, Any]:
        return {
            "command": list(self.command),
            "histostain_version": self.histostain_version,
            "created": self.created,
            "options": plain(self.options),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Provenance:
        """Read a stored record (missing fields become empty, so older outputs still load)."""
        return cls(
            command=tuple(str(arg) for arg in data.get("command") or ()),
            histostain_version=str(data.get("histostain_version", "")),
            created=str(data.get("created", "")),
            options=dict(data.get("options") or {}),
        )


def record_or_capture(provenance: Provenance | None, **options: Any) -> Provenance:
    """The CLI's record when a service got one, else a library caller's (``sys.argv`` and ``options``)."""
    return provenance if provenance is not None else Provenance.capture(options)


__all__ = ["Provenance", "invocation", "plain", "record_or_capture", "set_invocation", "utc_now"]
