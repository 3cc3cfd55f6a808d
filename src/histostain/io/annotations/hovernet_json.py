"""hover_net per-tile JSON: ``{"mag": ..., "nuc": {"<id>": {bbox, centroid, contour, type, type_prob}}}``."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from histostain.errors import InputError
from histostain.io.annotations._shared import (
    _as_int,
    _check_in_image,
    _check_unique_ids,
    _contour_list,
    _dump_json,
    _finite,
    _load_json,
    _short,
    polygon_centroid,
)
from histostain.io.annotations.model import (
    Nucleus,
)
from histostain.io.atomic import atomic_write_text

PathLike = str | os.PathLike[str]

# --------------------------------------------------------------------------------------------- hover_net JSON


def _parse_points(value: Any) -> np.ndarray | None:
    """A list of [x, y] number pairs as an array (int if all ints), or None if the structure is wrong."""
    if not isinstance(value, list) or not all(
        isinstance(p, list) and len(p) == 2 and all(_finite(c) for c in p) for p in value
    ):
        return None
    if not value:
        return np.zeros((0, 2), dtype=np.int64)
    return np.asarray(value)


def _hovernet_nucleus(key: str, entry: Any, where: str) -> Nucleus:
    """One ``nuc`` entry; only the centroid (or a contour to derive it from) is required."""
    try:
        nucleus_id = int(key)
    except ValueError:
        raise InputError(f"{where}: nucleus id {key!r} is not an integer") from None
    if not isinstance(entry, dict):
        raise InputError(f"{where}: expected an object with bbox/centroid/contour/type, got {_short(entry)}")

    contour = None
    if entry.get("contour") is not None:
        contour = _parse_points(entry["contour"])
        if contour is None:
            raise InputError(f"{where}.contour: expected [[x, y], ...], got {_short(entry['contour'])}")
        if len(contour) == 0:
            contour = None

    raw_centroid = entry.get("centroid")
    if raw_centroid is None:
        if contour is None:
            raise InputError(f"{where}: has neither 'centroid' nor 'contour'")
        centroid = polygon_centroid(contour)
    else:
        if not (isinstance(raw_centroid, list) and len(raw_centroid) == 2 and all(_finite(c) for c in raw_centroid)):
            raise InputError(f"{where}.centroid: expected [x, y], got {_short(raw_centroid)}")
        centroid = (float(raw_centroid[0]), float(raw_centroid[1]))

    bbox = None
    raw_bbox = entry.get("bbox")
    if raw_bbox is not None:
        corners = [
            [_as_int(v) for v in corner] if isinstance(corner, list) else []
            for corner in (raw_bbox if isinstance(raw_bbox, list) else [])
        ]
        if len(corners) != 2 or any(len(c) != 2 or None in c for c in corners):
            raise InputError(f"{where}.bbox: expected [[rmin, cmin], [rmax, cmax]] integers, got {_short(raw_bbox)}")
        (rmin, cmin), (rmax, cmax) = corners
        bbox = (cmin, rmin, cmax, rmax)  # hover_net stores (row, col) = (y, x)

    code = None
    if entry.get("type") is not None:
        code = _as_int(entry["type"])
        if code is None:
            raise InputError(f"{where}.type: expected an integer or null, got {_short(entry['type'])}")
    prob = entry.get("type_prob")
    if prob is not None and not _finite(prob):
        raise InputError(f"{where}.type_prob: expected a number or null, got {_short(prob)}")
    return Nucleus(id=nucleus_id, centroid=centroid, type=code, type_prob=prob, contour=contour, bbox=bbox)


def _hovernet_from_data(data: Any, path: Path, image_size: tuple[int, int] | None) -> list[Nucleus]:
    if not isinstance(data, dict) or not isinstance(data.get("nuc"), dict):
        raise InputError(
            f"{path}: not a hover_net JSON file (expected an object with a 'nuc' object)",
            hint='hover_net JSON looks like {"mag": null, "nuc": {"1": {"centroid": [x, y], ...}}}',
        )
    nuclei = []
    for key, entry in data["nuc"].items():
        where = f"{path}: nuc[{key!r}]"
        nucleus = _hovernet_nucleus(key, entry, where)
        _check_in_image(nucleus.centroid, image_size, where)
        nuclei.append(nucleus)
    return nuclei


def read_hovernet_json(path: PathLike, *, image_size: tuple[int, int] | None = None) -> list[Nucleus]:
    """Read hover_net's per-tile JSON (``{"mag": ..., "nuc": {"<id>": {...}}}``); ids may be non-contiguous.

    Missing optional fields (bbox, contour, type, type_prob) become None; extra fields are ignored.
    """
    path = Path(path)
    return _hovernet_from_data(_load_json(path), path, image_size)


def hovernet_dict(nuclei: Iterable[Nucleus], *, mag: float | None = None) -> dict[str, Any]:
    """The hover_net JSON structure as a dict (used by the writer, and by callers that embed it)."""
    nuclei = list(nuclei)
    _check_unique_ids(nuclei)
    nuc: dict[str, Any] = {}
    for n in nuclei:
        bbox = None
        if n.bbox is not None:
            x0, y0, x1, y1 = n.bbox
            bbox = [[y0, x0], [y1, x1]]
        nuc[str(n.id)] = {
            "bbox": bbox,
            "centroid": [n.centroid[0], n.centroid[1]],
            "contour": [] if n.contour is None else _contour_list(n.contour),
            "type": n.type,
            "type_prob": n.type_prob,
        }
    return {"mag": mag, "nuc": nuc}


def write_hovernet_json(path: PathLike, nuclei: Iterable[Nucleus], *, mag: float | None = None) -> Path:
    """Write hover_net's tile-mode JSON: bbox as [[rmin, cmin], [rmax, cmax]], ids as string keys.

    ``area`` and ``score`` are not part of the format and are dropped; unknown fields are written as null.
    """
    return atomic_write_text(path, _dump_json(hovernet_dict(nuclei, mag=mag)))
