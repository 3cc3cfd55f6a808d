"""What the loop logs: ``metrics.csv`` (one row per logging interval and per validation) and TensorBoard events."""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from histostain.io.atomic import atomic_write_text

log = logging.getLogger(__name__)


class MetricsLog:
    """``metrics.csv``: one row per logging interval (and per validation), columns grow as new keys appear."""

    def __init__(self, path: Path, enabled: bool = True) -> None:
        self.path = path
        self.enabled = enabled
        self.columns: list[str] = []
        if enabled and path.is_file():
            with path.open(newline="") as handle:
                header = next(csv.reader(handle), None)
            self.columns = list(header or [])

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
            self.columns += new
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


class TensorBoard:
    """Scalars to TensorBoard when ``torch.utils.tensorboard`` (i.e. the tensorboard package) is importable."""

    def __init__(self, folder: Path, enabled: bool) -> None:
        self.writer: Any = None
        if not enabled:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except Exception:  # tensorboard is optional: any import problem just means no events
            log.debug("tensorboard is not installed; no event files will be written")
            return
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


__all__ = ["MetricsLog", "TensorBoard"]
