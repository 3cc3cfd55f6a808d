"""CSV tables of nuclei: ``id,x,y,type,type_prob,area[,score]``."""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from histostain.errors import InputError
from histostain.io.annotations._shared import (
    _check_in_image,
    _full_number,
    _read_text,
    _snippet,
)
from histostain.io.annotations.model import (
    CSV_COLUMNS,
    Nucleus,
)
from histostain.io.atomic import atomic_write_text

PathLike = str | os.PathLike[str]

# --------------------------------------------------------------------------------------------- CSV


def write_csv(path: PathLike, nuclei: Iterable[Nucleus]) -> Path:
    """Write ``id,x,y,type,type_prob,area`` (plus ``score`` when any nucleus has one); empty cells for None.

    Full float precision: this is the table for analysis in pandas or a spreadsheet.
    """
    nuclei = list(nuclei)
    columns = list(CSV_COLUMNS) + (["score"] if any(n.score is not None for n in nuclei) else [])
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for n in nuclei:
        values = {
            "id": n.id,
            "x": n.centroid[0],
            "y": n.centroid[1],
            "type": n.type,
            "type_prob": n.type_prob,
            "area": n.area,
            "score": n.score,
        }
        writer.writerow(["" if values[c] is None else _full_number(values[c]) for c in columns])
    return atomic_write_text(path, buffer.getvalue())


def _csv_cell(text: str | None, cast: Callable[[str], Any], where: str, column: str, expected: str) -> Any:
    if text is None or not text.strip():
        return None
    try:
        value = cast(text.strip())
    except ValueError:
        raise InputError(f"{where}: column {column!r}: expected {expected}, got {_snippet(text)!r}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise InputError(f"{where}: column {column!r}: expected a finite number, got {_snippet(text)!r}")
    return value


def _int_text(text: str) -> int:
    value = float(text)
    if not value.is_integer():
        raise ValueError(text)
    return int(value)


def read_csv(path: PathLike, *, image_size: tuple[int, int] | None = None) -> list[Nucleus]:
    """Read a nuclei table with at least ``x`` and ``y`` columns; ``id``, ``type``, ``type_prob``, ``area`` and
    ``score`` are used when present, other columns ignored. Missing ids are numbered by row (1..N)."""
    path = Path(path)
    text = _read_text(path)
    if not text.strip():
        return []
    reader = csv.reader(io.StringIO(text))
    header = [h.strip() for h in next(reader)]
    index = {name: i for i, name in reversed(list(enumerate(header)))}  # first occurrence wins
    missing = [c for c in ("x", "y") if c not in index]
    if missing:
        raise InputError(
            f"{path}:1: missing column(s) {', '.join(missing)} in header {_snippet(','.join(header))!r}",
            hint="the header needs at least x,y (pixels, x = column)",
        )
    nuclei = []
    for row in reader:
        if not any(cell.strip() for cell in row):
            continue
        where = f"{path}:{reader.line_num}"

        def cell(name: str, row: list[str] = row) -> str | None:
            i = index.get(name)
            return row[i] if i is not None and i < len(row) else None

        x = _csv_cell(cell("x"), float, where, "x", "a number")
        y = _csv_cell(cell("y"), float, where, "y", "a number")
        if x is None or y is None:
            raise InputError(f"{where}: x and y are required, got an empty cell")
        _check_in_image((x, y), image_size, where)
        nucleus_id = _csv_cell(cell("id"), _int_text, where, "id", "an integer")
        nuclei.append(
            Nucleus(
                id=len(nuclei) + 1 if nucleus_id is None else nucleus_id,
                centroid=(x, y),
                type=_csv_cell(cell("type"), _int_text, where, "type", "an integer class code"),
                type_prob=_csv_cell(cell("type_prob"), float, where, "type_prob", "a number"),
                area=_csv_cell(cell("area"), float, where, "area", "a number"),
                score=_csv_cell(cell("score"), float, where, "score", "a number"),
            )
        )
    return nuclei
