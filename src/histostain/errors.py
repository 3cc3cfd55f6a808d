"""User-facing errors.

Every error a user can fix (a bad path, a wrong layout, missing weights, an unavailable device, a bad config
value) is a :class:`HistostainError`. The CLI prints it as one line with a hint and exits with code 2; any
other exception is a bug and keeps its traceback (exit code 1).
"""

from __future__ import annotations


class HistostainError(Exception):
    """Base class of errors the user can act on."""

    exit_code = 2
    default_hint: str | None = None

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint if hint is not None else self.default_hint

    def one_line(self) -> str:
        """The message and hint on a single line (newlines folded), as the CLI prints it."""
        text = " ".join(self.message.split())
        if self.hint:
            text += f" (hint: {' '.join(self.hint.split())})"
        return text


class InputError(HistostainError):
    """An input file or folder is missing, unreadable or not what it claims to be."""


class DatasetLayoutError(HistostainError):
    """A dataset folder or archive does not have the published layout."""


class WeightsError(HistostainError):
    """Model weights are missing, corrupt, unsafe, or of another architecture."""


class DeviceError(HistostainError):
    """The requested device or precision is not available on this machine."""


class ConfigError(HistostainError):
    """A setting, config file or option value is invalid."""


__all__ = [
    "ConfigError",
    "DatasetLayoutError",
    "DeviceError",
    "HistostainError",
    "InputError",
    "WeightsError",
]
