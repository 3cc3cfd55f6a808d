"""Helpers shared by the annotation format readers and writers (parsing, number formatting, geometry)."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from histostain.errors import InputError
from histostain.io.annotations.model import (
    Nucleus,
)

PathLike = str | os.PathLike[str]

# --------------------------------------------------------------------------------------------- shared helpers


def _snippet(text: str, limit: int = 60) -> str:
    """A short, single-line rendering of offending input for an error message."""
    text = text.strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _short(value: Any, limit: int = 60) -> str:
    try:
        rendered = json.dumps(value)
    except (TypeError, ValueError):
        rendered = repr(value)
    return _snippet(rendered, limit)


def _read_text(path: Path) -> str:
    """Read a UTF-8 text file (a BOM is tolerated), turning OS and decoding errors into InputError."""
    if not path.exists():
        raise InputError(f"{path}: annotation file not found", hint="check the path")
    if path.is_dir():
        raise InputError(f"{path}: is a folder, expected an annotation file")
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not a UTF-8 text file ({exc.reason} at byte {exc.start})") from exc
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror or exc})") from exc


def _load_json(path: Path) -> Any:
    text = _read_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(
            f"{path}:{exc.lineno}: invalid JSON ({exc.msg} at column {exc.colno})",
            hint="the file may be truncated or not JSON",
        ) from exc


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _finite(value: Any) -> bool:
    return _is_number(value) and math.isfinite(value)


def _as_int(value: Any) -> int | None:
    """An int from an int or an integral float (JSON writers differ); None if it is neither."""
    if isinstance(value, bool) or not _is_number(value):
        return None
    if isinstance(value, float):
        return int(value) if value.is_integer() else None
    return int(value)


def _check_in_image(point: tuple[float, float], image_size: tuple[int, int] | None, where: str) -> None:
    """Coordinates must lie in the closed box [0, W] x [0, H]: EndoNuke has points with x == W."""
    if image_size is None:
        return
    width, height = image_size
    x, y = point
    if not (0 <= x <= width and 0 <= y <= height):
        raise InputError(
            f"{where}: point ({x:g}, {y:g}) lies outside the {width}x{height} image",
            hint="coordinates are (x, y) pixels with x = column; check the image or the rescaling",
        )


def _check_unique_ids(nuclei: Sequence[Nucleus]) -> None:
    seen: set[int] = set()
    for nucleus in nuclei:
        if nucleus.id in seen:
            raise ValueError(f"duplicate nucleus id {nucleus.id}; ids must be unique within one file")
        seen.add(nucleus.id)


def format_number(value: float, decimals: int = 4) -> str:
    """Compact decimal text: integers without a point, else rounded to ``decimals`` with trailing zeros removed.

    Four decimals keep sub-pixel keypoints (e.g. after rescaling a 200 px tile to 256 px) to 1e-4 px.
    """
    if not math.isfinite(value):
        raise ValueError(f"cannot write a non-finite coordinate: {value!r}")
    text = f"{value:.{decimals}f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def _full_number(value: float | int) -> str:
    """Full-precision decimal text (for CSV): integers without a point, floats as their shortest repr."""
    if isinstance(value, int):
        return str(value)
    if not math.isfinite(value):
        raise ValueError(f"cannot write a non-finite value: {value!r}")
    return str(int(value)) if value.is_integer() else repr(value)


def _contour_list(contour: np.ndarray) -> list[list[float | int]]:
    """A contour as nested Python lists; integer arrays stay integers (hover_net writes OpenCV int points)."""
    if np.issubdtype(contour.dtype, np.integer):
        return contour.astype(np.int64).tolist()
    return contour.astype(np.float64).tolist()


def _dump_json(data: Any) -> str:
    # allow_nan=False: NaN/Infinity are not JSON and other tools would reject the file.
    return json.dumps(data, separators=(",", ":"), allow_nan=False) + "\n"


def polygon_centroid(points: np.ndarray) -> tuple[float, float]:
    """Area centroid of a simple polygon (shoelace formula); the vertex mean if the polygon has no area.

    ``points`` is an open or closed ``K x 2`` ring of ``(x, y)``.
    """
    pts = np.asarray(points, dtype=np.float64)
    if len(pts) > 1 and np.array_equal(pts[0], pts[-1]):
        pts = pts[:-1]
    if len(pts) == 0:
        raise ValueError("empty polygon")
    # Shift to the first vertex so large slide coordinates do not lose precision in the cross products.
    origin = pts[0]
    x, y = (pts - origin).T
    xn, yn = np.roll(x, -1), np.roll(y, -1)
    cross = x * yn - xn * y
    area2 = cross.sum()
    if abs(area2) < 1e-12:
        mean = pts.mean(axis=0)
        return float(mean[0]), float(mean[1])
    cx = ((x + xn) * cross).sum() / (3.0 * area2)
    cy = ((y + yn) * cross).sum() / (3.0 * area2)
    return float(cx + origin[0]), float(cy + origin[1])
