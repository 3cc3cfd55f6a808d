"""The one result shape every ``evaluate`` service returns, so the CLI renders and saves them all alike.

``--out DIR`` is a folder, as in every histostain command: a result is written as ``DIR/<metric>.json`` and,
when it has per-image rows, ``DIR/<metric>_per_image.csv`` (:meth:`EvaluationResult.write`, names from
:func:`output_files`). :func:`check_output` asks up front whether those files can be written, so a bad ``--out``
costs one line before any computation instead of a traceback after it.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from histostain.errors import InputError
from histostain.io.atomic import atomic_write_text
from histostain.io.writable import check_output_file, check_output_folder
from histostain.provenance import Provenance

# Which evaluations have per-image rows (and so a CSV beside the JSON); FID and KID compare two sets as a whole.
PER_IMAGE_METRICS = frozenset({"celldet", "instance", "paired"})


def output_files(folder: Path, metric: str) -> tuple[Path, Path | None]:
    """``(DIR/<metric>.json, DIR/<metric>_per_image.csv)``; no CSV for metrics without per-image rows."""
    folder = Path(folder)
    csv_path = folder / f"{metric}_per_image.csv" if metric in PER_IMAGE_METRICS else None
    return folder / f"{metric}.json", csv_path


def check_output(folder: Path, metric: str, option: str = "--out") -> Path:
    """Fail now, in one line, when ``folder`` cannot hold this metric's files (a file in its place, a path
    through a file, an existing folder where a file is expected, a location that is not writable).

    Creates nothing: a run that fails later leaves no empty folder behind.
    """
    folder = check_output_folder(folder, option)
    for path in output_files(folder, metric):
        if path is None:
            continue
        if path.is_dir():  # the file goes inside --out, so the fix is there, not a longer --out
            raise InputError(
                f"cannot write {option} {folder}: {path} is a folder, not a file",
                hint=f"remove or rename {path}, or choose another {option} folder",
            )
        check_output_file(path, option)
    return folder


@dataclass(frozen=True)
class TableView:
    """How a terminal shows one of :attr:`EvaluationResult.tables`: the columns worth a glance (the JSON and CSV
    keep every column) and a legend line for terms a reader cannot guess, so wide tables fit 80 columns.

    A column given as a tuple of names shows the first of them the rows have (e.g. ``("name", "class")``: the
    class name when known, else its code), so one view serves tables with and without optional columns.
    """

    columns: tuple[str | tuple[str, ...], ...]
    title: str | None = None
    legend: str | None = None

    def shown(self, rows: list[dict[str, Any]]) -> list[str]:
        """The columns of ``rows`` this view shows, in its order."""
        present = {key for row in rows for key in row}
        chosen: list[str] = []
        for column in self.columns:
            options = (column,) if isinstance(column, str) else column
            chosen += [name for name in options if name in present][:1]
        return chosen


def json_safe(value: Any) -> Any:
    """JSON-safe numbers: numpy scalars to Python, NaN/inf to None (JSON has no NaN)."""
    if hasattr(value, "item") and not isinstance(value, (list, dict, str)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


@dataclass
class EvaluationResult:
    """What an evaluation produced.

    ``summary``: the headline numbers (name -> value), shown in the table and stored in JSON.
    ``per_image``: one dict per image/pair (written as the per-image CSV).
    ``tables``: further named tables (per class, per tissue, per threshold), each a list of row dicts.
    ``meta``: how the numbers were made (N, radius, protocol, unmatched stems, weights file, ...).
    ``warnings``: sentences the CLI shows once, in yellow (e.g. "N = 500 < 2048: FID is biased upwards"). Services
    keep them here and log them at DEBUG only, so the CLI's log handler does not print them a second time.
    ``provenance``: who asked for it: the command line as typed, the version, the time and the resolved options.
    The file-based services always fill it (the CLI's record, or one they capture for a library caller); the
    array-level scorers leave it None unless given one, since their caller (e.g. the pipeline) keeps its own
    run record. JSON holds ``"provenance": null`` then.

    Presentation only (not in the JSON, whose ``meta`` holds the same facts): ``scope`` says which part of the
    data was scored (``"split test"``), added to every table title; ``notes`` are text rows of the summary table
    (e.g. whether the FID weights are the published ones); ``views`` say how a terminal shows a table (by table
    name: one or more column selections, e.g. scores and error counts of ``per_class`` side by side would not
    fit 80 columns, so they are two small tables); a table without a view shows every column.
    """

    metric: str
    summary: dict[str, float | int | None]
    per_image: list[dict[str, Any]] = field(default_factory=list)
    tables: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    provenance: Provenance | None = None
    scope: str | None = None
    notes: dict[str, str] = field(default_factory=dict)
    views: dict[str, list[TableView]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return json_safe(
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

    def write(self, folder: Path) -> list[Path]:
        """Write ``folder/<metric>.json`` and, when there are per-image rows, ``folder/<metric>_per_image.csv``.

        The folder is created if needed; each file is written atomically, the CSV first, so the JSON that
        describes the run appears last.
        """
        json_path, csv_path = output_files(Path(folder), self.metric)
        written = []
        if self.per_image:
            if csv_path is None:  # a metric outside PER_IMAGE_METRICS that still has rows: keep them anyway
                csv_path = json_path.with_name(f"{self.metric}_per_image.csv")
            written.append(atomic_write_text(csv_path, rows_to_csv(self.per_image)))
        written.insert(0, atomic_write_text(json_path, json.dumps(self.to_json(), indent=2) + "\n"))
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
        writer.writerow({key: json_safe(value) for key, value in row.items()})
    return buffer.getvalue()
