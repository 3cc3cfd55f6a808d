"""The one result shape every ``evaluate`` service returns, so the CLI renders and saves them all alike."""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from histostain.io.atomic import atomic_write_text
from histostain.provenance import Provenance


def _plain(value: Any) -> Any:
    """JSON-safe numbers: numpy scalars to Python, NaN/inf to None (JSON has no NaN)."""
    if hasattr(value, "item") and not isinstance(value, (list, dict, str)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


@dataclass
class EvaluationResult:
    """What an evaluation produced.

    ``summary``: the headline numbers (name -> value), shown in the table and stored in JSON.
    ``per_image``: one dict per image/pair (written as the per-image CSV).
    ``tables``: further named tables (per class, per tissue, per threshold), each a list of row dicts.
    ``meta``: how the numbers were made (N, radius, protocol, unmatched stems, weights file, ...).
    ``warnings``: sentences the CLI shows in yellow (e.g. "N = 500 < 2048: FID is biased upwards").
    ``provenance``: who asked for it: the command line as typed, the version, the time and the resolved options.
    The file-based services always fill it (the CLI's record, or one they capture for a library caller); the
    array-level scorers leave it None unless given one, since their caller (e.g. the pipeline) keeps its own
    run record. JSON holds ``"provenance": null`` then.
    """

    metric: str
    summary: dict[str, float | int | None]
    per_image: list[dict[str, Any]] = field(default_factory=list)
    tables: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    provenance: Provenance | None = None

    def to_json(self) -> dict[str, Any]:
        return _plain(
            {
                "metric": self.metric,
                "summary": self.summary,
                "tables": self.tables,
                "meta": self.meta,
                "warnings": self.warnings,
                "provenance": None if self.provenance is None else self.provenance.to_dict(),
                "per_image": self.per_image,
            }
        )

    def write(self, path: Path) -> list[Path]:
        """Write ``path`` (JSON) and, when there are per-image rows, ``<stem>_per_image.csv`` beside it."""
        written = [atomic_write_text(path, json.dumps(self.to_json(), indent=2) + "\n")]
        if self.per_image:
            written.append(atomic_write_text(path.with_name(f"{path.stem}_per_image.csv"), rows_to_csv(self.per_image)))
        return written


def rows_to_csv(rows: list[dict[str, Any]]) -> str:
    """CSV text with the union of the rows' keys as header (first-seen order)."""
    header: list[str] = []
    for row in rows:
        header.extend(key for key in row if key not in header)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=header, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: _plain(value) for key, value in row.items()})
    return buffer.getvalue()
