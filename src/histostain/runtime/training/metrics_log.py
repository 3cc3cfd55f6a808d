"""What the loop logs: ``metrics.csv`` (one row per logging interval and per validation) and TensorBoard events."""

from __future__ import annotations

import csv
import importlib.util
import io
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from histostain.io.atomic import atomic_write_text

log = logging.getLogger(__name__)


class MetricsLog:
    """``metrics.csv``: one row per logging interval (and per validation), columns grow as new keys appear.

    The header of an existing file is read at the first use, not when the log is made: a trainer is built
    before a start replaces the remains of a dead attempt, whose columns must not leak into the new run.
    """

    def __init__(self, path: Path, enabled: bool = True) -> None:
        self.path = path
        self.enabled = enabled
        self._columns: list[str] | None = None

    @property
    def columns(self) -> list[str]:
        if self._columns is None:
            self._columns = []
            if self.enabled and self.path.is_file():
                with self.path.open(newline="") as handle:
                    self._columns = list(next(csv.reader(handle), None) or [])
        return self._columns

    def _rows(self) -> list[dict[str, str]]:
        if not self.path.is_file():
            return []
        with self.path.open(newline="") as handle:
            return list(csv.DictReader(handle))

    def _rewrite(self, rows: list[Mapping[str, Any]]) -> None:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=self.columns, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _cell(v) for k, v in row.items()})
        atomic_write_text(self.path, buffer.getvalue())

    def truncate_after(self, step: int) -> None:
        """Drop rows logged after ``step`` (a resumed run continues from its checkpoint, not from the log)."""
        if not self.enabled or not self.path.is_file():
            return
        rows = self._rows()
        # a row cut short by a crash has missing fields (None): drop it with the rows after the checkpoint
        kept = [row for row in rows if None not in row.values() and 0 <= _as_int(row.get("step")) <= step]
        if len(kept) != len(rows):
            self._rewrite(kept)

    def write(self, row: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        new = [key for key in row if key not in self.columns]
        if new or not self.path.is_file():
            rows = self._rows()
            self.columns.extend(new)
            self._rewrite([*rows, row])
            return
        with self.path.open("a", newline="") as handle:
            csv.DictWriter(handle, fieldnames=self.columns, lineterminator="\n").writerow(
                {k: _cell(v) for k, v in row.items()}
            )


def _cell(value: Any) -> Any:
    if isinstance(value, float):
        return f"{value:.6g}"
    return "" if value is None else value


def _as_int(value: Any) -> int:
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return -1


def tensorboard_problem() -> str | None:
    """Why TensorBoard events cannot be written here (``"not installed"``, ``"cannot be imported (...)"``), or
    None when they can. tensorboard is optional; the training session says what this means once per run."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except Exception as exc:  # any import problem just means no events
        try:
            missing = importlib.util.find_spec("tensorboard") is None
        except (ImportError, ValueError):
            missing = True
        if missing:
            return "not installed"
        reason = " ".join(str(exc).split())[:200] or type(exc).__name__
        return f"cannot be imported ({reason})"
    return None


class TensorBoard:
    """Scalars to TensorBoard when ``torch.utils.tensorboard`` (i.e. the tensorboard package) is importable."""

    def __init__(self, folder: Path, enabled: bool) -> None:
        self.writer: Any = None
        if not enabled:
            return
        problem = tensorboard_problem()
        if problem is not None:
            log.debug("tensorboard %s; no event files will be written", problem)
            return
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(folder))

    def scalars(self, step: int, values: Mapping[str, Any]) -> None:
        if self.writer is None:
            return
        for key, value in values.items():
            if isinstance(value, int | float) and key not in {"step", "epoch"}:
                self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


__all__ = ["MetricsLog", "TensorBoard", "tensorboard_problem"]
