"""Nuclei annotations in the exchange formats other tools read: EndoNuke centroid txt, hover_net JSON, QuPath
GeoJSON and a flat CSV.

Everything is converted to one in-memory model, :class:`Nucleus`, with coordinates as ``(x, y)`` pixels
(x = column, y = row) and bounding boxes as ``(x0, y0, x1, y1)`` with the maximum exclusive. Only hover_net
JSON stores boxes as ``[[y0, x0], [y1, x1]]``; the swap happens at that boundary and nowhere else.

Readers raise :class:`~histostain.errors.InputError` naming the file and the line or field at fault, so a
user can fix the file. Writers go through :func:`~histostain.io.atomic.atomic_write_text`, so an interrupted
run never leaves a half-written annotation file. The page ``docs/formats-annotations.md`` describes each
format exactly as it is read and written here.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from histostain.errors import ConfigError, InputError
from histostain.io.annotations._shared import (
    _load_json,
    format_number,
    polygon_centroid,
)
from histostain.io.annotations.centroids_txt import (
    read_centroids_txt,
    write_centroids_txt,
)
from histostain.io.annotations.classes import (
    IHC_CLASS_COLOURS,
    IHC_CLASS_NAMES,
    class_colour,
    colours_for_names,
    name_colour,
)
from histostain.io.annotations.csv_table import (
    read_csv,
    write_csv,
)
from histostain.io.annotations.geojson import (
    _geojson_from_data,
    geojson_feature_id,
    geojson_features,
    read_geojson,
    write_geojson,
)
from histostain.io.annotations.hovernet_json import (
    _hovernet_from_data,
    hovernet_dict,
    read_hovernet_json,
    write_hovernet_json,
)
from histostain.io.annotations.model import (
    CSV_COLUMNS,
    EXTENSIONS,
    FORMATS,
    GEOJSON_ID_NAMESPACE,
    GEOJSON_OBJECT_TYPES,
    RESERVED_MEASUREMENTS,
    Nucleus,
    centroids_array,
    types_array,
)
from histostain.io.annotations.qupath_check import assert_qupath_geojson, qupath_geojson_problems

PathLike = str | os.PathLike[str]

# --------------------------------------------------------------------------------------------- dispatch


def _resolve_format(path: Path, fmt: str | None) -> str | None:
    """The format name, or None for a .json file whose content decides."""
    if fmt is not None:
        if fmt not in FORMATS:
            raise ConfigError(f"unknown annotation format {fmt!r}", hint=f"use one of {', '.join(FORMATS)}")
        return fmt
    suffix = path.suffix.lower()
    if suffix not in EXTENSIONS:
        raise InputError(
            f"{path}: cannot tell the annotation format from the extension {suffix or '(none)'!r}",
            hint=f"use one of {', '.join(EXTENSIONS)} or pass the format explicitly ({', '.join(FORMATS)})",
        )
    return EXTENSIONS[suffix]


def _applicable(func: Callable[..., Any], options: dict[str, Any], all_funcs: Sequence[Callable[..., Any]]) -> dict:
    """The options ``func`` accepts; options no function in ``all_funcs`` knows are a programming error."""
    known = {name for f in all_funcs for name in _keyword_options(f)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise TypeError(f"unexpected annotation option(s): {', '.join(unknown)}")
    accepted = _keyword_options(func)
    return {k: v for k, v in options.items() if k in accepted}


def _keyword_options(func: Callable[..., Any]) -> set[str]:
    return {p.name for p in inspect.signature(func).parameters.values() if p.kind is inspect.Parameter.KEYWORD_ONLY}


_READERS: dict[str, Callable[..., list[Nucleus]]] = {
    "txt": read_centroids_txt,
    "hovernet": read_hovernet_json,
    "geojson": read_geojson,
    "csv": read_csv,
}
_WRITERS: dict[str, Callable[..., Path]] = {
    "txt": write_centroids_txt,
    "hovernet": write_hovernet_json,
    "geojson": write_geojson,
    "csv": write_csv,
}


def read_annotations(path: PathLike, fmt: str | None = None, **options: Any) -> list[Nucleus]:
    """Read nuclei in any supported format, chosen by ``fmt`` or the extension.

    ``.json`` is hover_net JSON unless its top level is a FeatureCollection, a Feature or a list (GeoJSON).
    Options that do not apply to the chosen format (e.g. ``type_names`` for a txt file) are ignored, so one
    call site can read every format.
    """
    path = Path(path)
    name = _resolve_format(path, fmt)
    if name is None:
        data = _load_json(path)
        is_geojson = isinstance(data, list) or (
            isinstance(data, dict) and data.get("type") in ("FeatureCollection", "Feature")
        )
        name = "geojson" if is_geojson else "hovernet"
        kw = _applicable(_READERS[name], options, list(_READERS.values()))
        if is_geojson:
            return _geojson_from_data(
                data,
                path,
                type_names=kw.get("type_names"),
                object_types=kw.get("object_types"),
                image_size=kw.get("image_size"),
            )
        return _hovernet_from_data(data, path, kw.get("image_size"))
    return _READERS[name](path, **_applicable(_READERS[name], options, list(_READERS.values())))


def write_annotations(path: PathLike, nuclei: Iterable[Nucleus], fmt: str | None = None, **options: Any) -> Path:
    """Write nuclei in the format chosen by ``fmt`` or the extension (``.json`` means hover_net JSON).

    Options that do not apply to the chosen format (e.g. ``mag`` for GeoJSON) are ignored.
    """
    path = Path(path)
    name = _resolve_format(path, fmt) or "hovernet"
    writer = _WRITERS[name]
    return writer(path, nuclei, **_applicable(writer, options, list(_WRITERS.values())))


__all__ = [
    "CSV_COLUMNS",
    "EXTENSIONS",
    "GEOJSON_OBJECT_TYPES",
    "FORMATS",
    "GEOJSON_ID_NAMESPACE",
    "IHC_CLASS_COLOURS",
    "IHC_CLASS_NAMES",
    "RESERVED_MEASUREMENTS",
    "Nucleus",
    "assert_qupath_geojson",
    "centroids_array",
    "class_colour",
    "colours_for_names",
    "format_number",
    "geojson_feature_id",
    "geojson_features",
    "hovernet_dict",
    "name_colour",
    "polygon_centroid",
    "qupath_geojson_problems",
    "read_annotations",
    "read_centroids_txt",
    "read_csv",
    "read_geojson",
    "read_hovernet_json",
    "types_array",
    "write_annotations",
    "write_centroids_txt",
    "write_csv",
    "write_geojson",
    "write_hovernet_json",
]
