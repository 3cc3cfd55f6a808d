"""One progress helper for every loop over files, batches or epochs.

On a terminal it draws a rich progress bar on stderr. When stderr is not a terminal (CI, ``nohup``, a pipe)
or progress is disabled, it logs a line every ``log_interval`` seconds instead, and one at the end. With
``--quiet`` nothing is shown (the CLI raises the log level to WARNING).
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class _Config:
    enabled: bool | None = None  # None: bars when stderr is a terminal
    log_interval: float = 5.0


_config = _Config()


def configure(enabled: bool | None = None, log_interval: float = 5.0) -> None:
    """Set the progress mode: True (bars), False (log lines only) or None (bars only on a terminal)."""
    _config.enabled = enabled
    _config.log_interval = log_interval


def bars_enabled() -> bool:
    if _config.enabled is not None:
        return _config.enabled
    return sys.stderr.isatty()


class ProgressTask:
    """Handle for one running loop: ``advance()`` it and optionally show a short status text."""

    def __init__(self, description: str, total: int | None, unit: str) -> None:
        self.description = description
        self.total = total
        self.unit = unit
        self.completed = 0
        self.status = ""
        self._start = time.monotonic()
        self._last_log = self._start
        self._progress: Any = None
        self._task_id: Any = None

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self._start

    @property
    def rate(self) -> float:
        return self.completed / self.elapsed if self.elapsed > 0 else 0.0

    def advance(self, n: int = 1, status: str | None = None) -> None:
        self.completed += n
        if status is not None:
            self.status = status
        if self._progress is not None:
            self._progress.update(self._task_id, advance=n, status=self.status)
            return
        now = time.monotonic()
        if now - self._last_log >= _config.log_interval:
            self._last_log = now
            self._log_line()

    def set_status(self, status: str) -> None:
        self.advance(0, status=status)

    def _log_line(self, final: bool = False) -> None:
        done = f"{self.completed}/{self.total}" if self.total else str(self.completed)
        pct = f" ({100.0 * self.completed / self.total:.0f}%)" if self.total else ""
        tail = f" {self.status}" if self.status else ""
        word = "done" if final else "at"
        log.info(
            "%s %s %s%s, %.1f %s/s, %.1fs%s",
            self.description,
            word,
            done,
            pct,
            self.rate,
            self.unit,
            self.elapsed,
            tail,
        )


@contextmanager
def progress_task(description: str, total: int | None = None, unit: str = "it") -> Iterator[ProgressTask]:
    """Context manager around one loop; use ``task.advance()`` inside it."""
    task = ProgressTask(description, total, unit)
    if bars_enabled():
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[status]}"),
            console=Console(stderr=True),
            transient=False,
        )
        with progress:
            task._progress = progress
            task._task_id = progress.add_task(description, total=total, status="")
            yield task
        return
    yield task
    task._log_line(final=True)


def track(iterable: Iterable[T], description: str, total: int | None = None, unit: str = "it") -> Iterator[T]:
    """Iterate with progress: ``for path in track(paths, "Reading tiles", unit="tile"):``."""
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    with progress_task(description, total=total, unit=unit) as task:
        for item in iterable:
            yield item
            task.advance()
