"""EndoNuke-style centroid text files: one ``x y [class]`` line per nucleus."""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from pathlib import Path

from histostain.errors import InputError
from histostain.io.annotations._shared import (
    _check_in_image,
    _read_text,
    _snippet,
    format_number,
)
from histostain.io.annotations.model import (
    Nucleus,
)
from histostain.io.atomic import atomic_write_text

PathLike = str | os.PathLike[str]

# --------------------------------------------------------------------------------------------- centroid txt


def _parse_txt_tokens(tokens: list[str]) -> tuple[float, float, int | None] | None:
    """``x y [class]`` tokens as numbers; None if malformed (the class may be written as "1" or "1.0")."""
    if len(tokens) not in (2, 3):
        return None
    try:
        x, y = float(tokens[0]), float(tokens[1])
        code_value = float(tokens[2]) if len(tokens) == 3 else None
    except ValueError:
        return None
    if not (math.isfinite(x) and math.isfinite(y)):
        return None
    if code_value is None:
        return x, y, None
    if not code_value.is_integer():
        return None
    return x, y, int(code_value)


def read_centroids_txt(path: PathLike, *, image_size: tuple[int, int] | None = None) -> list[Nucleus]:
    """Read an EndoNuke-style keypoint file: one ``x y [class]`` per line, split on any whitespace.

    Blank lines are skipped (the official tools leave trailing spaces, some files end in blank lines); an empty
    file is an image without nuclei. Ids are 1..N in line order. ``image_size=(W, H)`` checks every point lies
    in [0, W] x [0, H].
    """
    path = Path(path)
    nuclei: list[Nucleus] = []
    for line_no, line in enumerate(_read_text(path).splitlines(), start=1):
        tokens = line.split()
        if not tokens:
            continue
        parsed = _parse_txt_tokens(tokens)
        if parsed is None:
            raise InputError(
                f"{path}:{line_no}: expected 'x y [class]', got '{_snippet(line)}'",
                hint="one nucleus per line: two numbers (pixels) and an optional integer class code",
            )
        x, y, code = parsed
        _check_in_image((x, y), image_size, f"{path}:{line_no}")
        nuclei.append(Nucleus(id=len(nuclei) + 1, centroid=(x, y), type=code))
    return nuclei


def write_centroids_txt(path: PathLike, nuclei: Iterable[Nucleus]) -> Path:
    """Write ``x y class`` lines (``x y`` for untyped nuclei): LF endings, no trailing spaces, 4 decimals at most.

    Only centroids and classes survive; this is the format the EndoNuke tools read.
    """
    lines = []
    for nucleus in nuclei:
        x, y = nucleus.centroid
        parts = [format_number(x), format_number(y)]
        if nucleus.type is not None:
            parts.append(str(nucleus.type))
        lines.append(" ".join(parts) + "\n")
    return atomic_write_text(path, "".join(lines))
