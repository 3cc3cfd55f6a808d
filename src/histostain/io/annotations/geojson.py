"""QuPath GeoJSON: a FeatureCollection (or bare list) of detection / annotation / cell features.

The writer follows what QuPath's reader accepts in every version from 0.3 to 0.7 (reference
segment_outputs.md §1): object type under both ``objectType`` and ``object_type`` inside ``properties`` and no
``type`` property, classifications with a colour, measurements as a list, valid closed polygon rings, UUID
ids. :func:`~histostain.io.annotations.qupath_check.qupath_geojson_problems` checks a file against these rules.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Collection, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from histostain.errors import ConfigError, InputError
from histostain.io.annotations._shared import (
    _as_int,
    _check_in_image,
    _check_unique_ids,
    _dump_json,
    _finite,
    _load_json,
    _short,
    polygon_centroid,
)
from histostain.io.annotations.classes import class_colour, colours_for_names, name_colour
from histostain.io.annotations.hovernet_json import (
    _parse_points,
)
from histostain.io.annotations.model import (
    _LEGACY_OBJECT_TYPES,
    GEOJSON_ID_NAMESPACE,
    GEOJSON_OBJECT_TYPES,
    RESERVED_MEASUREMENTS,
    Nucleus,
)
from histostain.io.annotations.polygons import qupath_rings
from histostain.io.atomic import atomic_write_text
from histostain.vocabulary import PANNUKE_TYPE_NAMES, RGB

PathLike = str | os.PathLike[str]

# --------------------------------------------------------------------------------------------- QuPath GeoJSON


_NAMESPACE_BYTES = GEOJSON_ID_NAMESPACE.bytes


def geojson_feature_id(nucleus_id: int, image_name: str | None = None) -> str:
    """Deterministic UUID for a nucleus, so re-running a command writes byte-identical GeoJSON.

    ``uuid.uuid5(GEOJSON_ID_NAMESPACE, "<image_name>/<id>")``, computed directly from the SHA-1 as RFC 4122
    defines it (``uuid.UUID`` objects cost more than the hash on images of tens of thousands of nuclei).
    """
    key = f"{image_name}/{nucleus_id}" if image_name else str(nucleus_id)
    raw = bytearray(hashlib.sha1(_NAMESPACE_BYTES + key.encode("utf-8")).digest()[:16])
    raw[6] = (raw[6] & 0x0F) | 0x50  # version 5
    raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _class_name(nucleus: Nucleus, names: Mapping[int, str]) -> str | None:
    if nucleus.type is not None:
        return names.get(nucleus.type, str(nucleus.type))
    return nucleus.type_name


def _classification(nucleus: Nucleus, names: Mapping[int, str], colors: Mapping[int, RGB]) -> dict[str, Any] | None:
    """``{"name", "color"}``: QuPath 0.4+ refuses a class without a colour, so every class gets one."""
    name = _class_name(nucleus, names)
    if name is None:
        return None
    color = class_colour(nucleus.type, colors) if nucleus.type is not None else name_colour(name)
    return {"name": name, "color": [int(c) for c in color]}


def _measurement_list(nucleus: Nucleus, exact_centroid: bool) -> list[dict[str, Any]]:
    """QuPath measurements as a list of ``{name, value}``, the one form every QuPath from 0.3 to 0.7 reads.

    Non-finite values are left out: NaN is not JSON, and QuPath before 0.5 rejects the "NaN" string.
    """
    values: dict[str, float | int] = {"nucleus_id": nucleus.id}
    if exact_centroid:
        # The polygon's own centroid differs slightly from the pixel-mask centroid; keep the latter exactly.
        values["centroid_x"], values["centroid_y"] = nucleus.centroid
    for name in ("type_prob", "area", "score"):
        value = getattr(nucleus, name)
        if value is not None:
            values[name] = value
    for name, value in nucleus.measurements.items():
        if name in RESERVED_MEASUREMENTS:
            raise ValueError(f"measurement name {name!r} is reserved for a Nucleus field")
        values[name] = value
    return [{"name": name, "value": value} for name, value in values.items() if math.isfinite(value)]


def _features(
    nuclei: Iterable[Nucleus],
    object_type: str,
    type_names: Mapping[int, str] | None,
    type_colors: Mapping[int, RGB] | None,
    image_name: str | None,
    image_size: tuple[int, int] | None,
) -> Iterator[tuple[str, str, Any, dict[str, Any]]]:
    """Per nucleus ``(id, geometry type, coordinates, properties)``; coordinates of a Polygon are its ring."""
    if object_type not in GEOJSON_OBJECT_TYPES:
        raise ConfigError(
            f"unknown QuPath object type {object_type!r}", hint=f"use one of {', '.join(GEOJSON_OBJECT_TYPES)}"
        )
    names = PANNUKE_TYPE_NAMES if type_names is None else type_names
    colors = colours_for_names(type_names) if type_colors is None else type_colors
    nuclei = list(nuclei)
    _check_unique_ids(nuclei)
    with_contour = [n for n in nuclei if n.contour is not None]
    contours = [n.contour for n in with_contour]
    rings = iter(qupath_rings(contours, [n.bbox for n in with_contour], [n.centroid for n in with_contour], image_size))
    for n in nuclei:
        if n.contour is None:
            kind, coordinates = "Point", [n.centroid[0], n.centroid[1]]
        else:
            kind, coordinates = "Polygon", next(rings)[0]
        # Both type keys: QuPath 0.4+ reads objectType, 0.3 only object_type. Never "type": QuPath would read
        # it as the object type.
        properties: dict[str, Any] = {"objectType": object_type, "object_type": object_type}
        classification = _classification(n, names, colors)
        if classification is not None:
            properties["classification"] = classification
        properties["measurements"] = _measurement_list(n, exact_centroid=n.contour is not None)
        yield geojson_feature_id(n.id, image_name), kind, coordinates, properties


def geojson_features(
    nuclei: Iterable[Nucleus],
    *,
    object_type: str = "detection",
    type_names: Mapping[int, str] | None = None,
    type_colors: Mapping[int, RGB] | None = None,
    image_name: str | None = None,
    image_size: tuple[int, int] | None = None,
) -> list[dict[str, Any]]:
    """The features :func:`write_geojson` writes, as dicts (for callers that embed them in other JSON)."""
    features = []
    for feature_id, kind, coordinates, properties in _features(
        nuclei, object_type, type_names, type_colors, image_name, image_size
    ):
        if kind == "Polygon":
            coordinates = [coordinates.tolist()]
        geometry = {"type": kind, "coordinates": coordinates}
        feature: dict[str, Any] = {"type": "Feature", "id": feature_id, "geometry": geometry}
        if object_type == "cell":
            feature["nucleusGeometry"] = geometry  # no cell boundary is known: the nucleus is the whole cell
        feature["properties"] = properties
        features.append(feature)
    return features


def _ring_text(ring: np.ndarray) -> str:
    """A Polygon's coordinates as JSON text, as ``json.dumps`` writes them (str of an int or float is its
    JSON form). Built as text because nested lists for tens of thousands of rings cost more than the rest."""
    values = ring.ravel().tolist()
    return "[[" + ",".join(map("[{},{}]".format, values[0::2], values[1::2])) + "]]"


def _feature_texts(
    nuclei: Iterable[Nucleus],
    object_type: str,
    type_names: Mapping[int, str] | None,
    type_colors: Mapping[int, RGB] | None,
    image_name: str | None,
    image_size: tuple[int, int] | None,
) -> Iterator[str]:
    """Each feature as compact JSON text: the same bytes ``json.dumps`` gives for :func:`geojson_features`."""
    for feature_id, kind, coordinates, properties in _features(
        nuclei, object_type, type_names, type_colors, image_name, image_size
    ):
        coordinates_text = _ring_text(coordinates) if kind == "Polygon" else _dump_json(coordinates).rstrip("\n")
        geometry = f'{{"type":"{kind}","coordinates":{coordinates_text}}}'
        nucleus = f',"nucleusGeometry":{geometry}' if object_type == "cell" else ""
        props = _dump_json(properties).rstrip("\n")
        yield f'{{"type":"Feature","id":"{feature_id}","geometry":{geometry}{nucleus},"properties":{props}}}'


def write_geojson(
    path: PathLike,
    nuclei: Iterable[Nucleus],
    *,
    object_type: str = "detection",
    type_names: Mapping[int, str] | None = None,
    type_colors: Mapping[int, RGB] | None = None,
    image_name: str | None = None,
    image_size: tuple[int, int] | None = None,
) -> Path:
    """Write a FeatureCollection that QuPath 0.3 to 0.7 imports, one Feature per nucleus.

    A nucleus with a contour becomes a valid closed Polygon (repaired, or its pixel bounding box when the
    contour has no area: ``polygons.qupath_rings``); one without a contour (a point annotation) a Point.
    Classes are named through ``type_names`` (PanNuke names by default; an unnamed code is written as its
    number) and always coloured: ``type_colors``, else the colours of the named table, else the palette.
    Measurements are a list of ``{name, value}``. Ids are uuid5 of the nucleus id and ``image_name``, so output
    is reproducible. ``object_type`` is "detection" (default), "annotation" or "cell". With
    ``image_size=(W, H)`` polygon points are clipped to the image, ``[0, W] x [0, H]``.
    """
    features = ",".join(_feature_texts(nuclei, object_type, type_names, type_colors, image_name, image_size))
    return atomic_write_text(path, f'{{"type":"FeatureCollection","features":[{features}]}}\n')


def _object_type(properties: Mapping[str, Any]) -> str:
    """QuPath's type key (objectType, legacy object_type, or type); a missing one means annotation, as in QuPath."""
    for key in ("objectType", "object_type", "type"):
        value = properties.get(key)
        if isinstance(value, str):
            return _LEGACY_OBJECT_TYPES.get(value, value)
    return "annotation"


def _classification_name(value: Any, where: str) -> str | None:
    """A class name from a plain string, {name, color}, legacy {name, colorRGB}, or a derived {names: [...]}."""
    if value is None:
        return None
    if isinstance(value, str):
        return value or None
    if isinstance(value, dict):
        if isinstance(value.get("name"), str):
            return value["name"] or None
        names = value.get("names")
        if isinstance(names, list) and names and all(isinstance(s, str) for s in names):
            return ": ".join(names)  # QuPath shows derived classes as "Tumor: Positive"
    raise InputError(f'{where}.classification: expected a name or {{"name": ...}}, got {_short(value)}')


def _measurements(value: Any, where: str) -> dict[str, float]:
    """Measurements as an object (QuPath v0.4+) or a list of {name, value} (older QuPath); non-numbers dropped."""
    if value is None:
        return {}
    if isinstance(value, dict):
        return {str(k): v for k, v in value.items() if _finite(v)}
    if isinstance(value, list):
        out = {}
        for item in value:
            if isinstance(item, dict) and isinstance(item.get("name"), str) and _finite(item.get("value")):
                out[item["name"]] = item["value"]
        return out
    raise InputError(f"{where}.measurements: expected an object or a list, got {_short(value)}")


def _ring(coords: Any, where: str) -> np.ndarray:
    """The exterior ring of a Polygon's coordinates as an open K x 2 ring (holes are ignored: nuclei have none)."""
    if not isinstance(coords, list) or not coords:
        raise InputError(f"{where}: expected a list of rings, got {_short(coords)}")
    ring = _parse_points(coords[0])
    if ring is None or len(ring) < 3:
        raise InputError(f"{where}: expected a ring of at least 3 [x, y] points, got {_short(coords[0])}")
    if np.array_equal(ring[0], ring[-1]):
        ring = ring[:-1]
    if len(ring) < 3:
        raise InputError(f"{where}: polygon has fewer than 3 distinct points")
    return ring


def _point(coords: Any, where: str) -> tuple[float, float]:
    # GeoJSON positions may carry a third (z) value; QuPath never writes one but other tools might.
    if not (isinstance(coords, list) and len(coords) in (2, 3) and all(_finite(c) for c in coords)):
        raise InputError(f"{where}: expected a position [x, y], got {_short(coords)}")
    return float(coords[0]), float(coords[1])


def _geometry_parts(geometry: Any, where: str) -> list[tuple[tuple[float, float], np.ndarray | None]]:
    """(centroid, contour) per nucleus in a geometry: Multi* geometries hold one nucleus per part."""
    if not isinstance(geometry, dict) or not isinstance(geometry.get("type"), str):
        raise InputError(f"{where}: expected a GeoJSON geometry object, got {_short(geometry)}")
    kind, coords = geometry["type"], geometry.get("coordinates")
    if kind == "Point":
        return [(_point(coords, f"{where}.coordinates"), None)]
    if kind == "MultiPoint":
        if not isinstance(coords, list):
            raise InputError(f"{where}.coordinates: expected a list of positions, got {_short(coords)}")
        return [(_point(c, f"{where}.coordinates[{i}]"), None) for i, c in enumerate(coords)]
    if kind == "Polygon":
        ring = _ring(coords, f"{where}.coordinates")
        return [(polygon_centroid(ring), ring)]
    if kind == "MultiPolygon":
        if not isinstance(coords, list):
            raise InputError(f"{where}.coordinates: expected a list of polygons, got {_short(coords)}")
        parts = []
        for i, polygon in enumerate(coords):
            ring = _ring(polygon, f"{where}.coordinates[{i}]")
            parts.append((polygon_centroid(ring), ring))
        return parts
    raise InputError(
        f"{where}: unsupported geometry type {kind!r} (nuclei must be Point, MultiPoint, Polygon or MultiPolygon)",
        hint="export only the nuclei, or skip other objects with object_types=",
    )


def _type_code(name: str, reverse: Mapping[str, int], folded: Mapping[str, int]) -> int | None:
    """Map a class name back to its code: exact name, then case-insensitive, then a name that is a number."""
    if name in reverse:
        return reverse[name]
    if name.casefold() in folded:
        return folded[name.casefold()]
    stripped = name.strip()
    if stripped.lstrip("-").isdigit():
        return int(stripped)
    return None


def _geojson_from_data(
    data: Any,
    path: Path,
    *,
    type_names: Mapping[int, str] | None,
    object_types: Collection[str] | None,
    image_size: tuple[int, int] | None,
) -> list[Nucleus]:
    if isinstance(data, dict) and data.get("type") == "FeatureCollection":
        features = data.get("features")
        prefix = "features"
        if not isinstance(features, list):
            raise InputError(f"{path}: FeatureCollection has no 'features' list")
    elif isinstance(data, dict) and data.get("type") == "Feature":
        features, prefix = [data], "feature"
    elif isinstance(data, list):
        features, prefix = data, ""
    else:
        raise InputError(
            f"{path}: not GeoJSON (expected a FeatureCollection or a list of Features)",
            hint="QuPath: File > Export objects as GeoJSON",
        )
    names = PANNUKE_TYPE_NAMES if type_names is None else type_names
    reverse = {name: code for code, name in names.items()}
    folded = {name.casefold(): code for name, code in reverse.items()}
    wanted = None if object_types is None else {_LEGACY_OBJECT_TYPES.get(t, t) for t in object_types}

    records: list[tuple[Nucleus, int | None]] = []  # nucleus and its stored id, if any
    for index, feature in enumerate(features):
        where = f"{path}: {prefix}[{index}]" if prefix != "feature" else f"{path}: feature"
        if not isinstance(feature, dict) or feature.get("type") != "Feature":
            raise InputError(f"{where}: expected a GeoJSON Feature, got {_short(feature)}")
        properties = feature.get("properties") or {}
        if not isinstance(properties, dict):
            raise InputError(f"{where}.properties: expected an object, got {_short(properties)}")
        kind = _object_type(properties)
        if wanted is not None and kind not in wanted:
            continue
        # For QuPath cells the nucleus is nucleusGeometry; geometry is the whole cell.
        key = "nucleusGeometry" if kind == "cell" and feature.get("nucleusGeometry") else "geometry"
        if feature.get(key) is None:
            raise InputError(f"{where}: feature has no geometry")
        parts = _geometry_parts(feature[key], f"{where}.{key}")

        class_name = _classification_name(properties.get("classification"), f"{where}.properties")
        code = None if class_name is None else _type_code(class_name, reverse, folded)
        unmapped = class_name if class_name is not None and code is None else None
        m = _measurements(properties.get("measurements"), f"{where}.properties")
        single = len(parts) == 1  # measurements of a Multi* feature describe the whole group, not one nucleus
        stored_id = _as_int(m.get("nucleus_id")) if single else None
        for centroid, contour in parts:
            if single and contour is not None and _finite(m.get("centroid_x")) and _finite(m.get("centroid_y")):
                centroid = (float(m["centroid_x"]), float(m["centroid_y"]))
            _check_in_image(centroid, image_size, where)
            nucleus = Nucleus(
                id=0,
                centroid=centroid,
                type=code,
                type_prob=m.get("type_prob") if single else None,
                contour=contour,
                area=m.get("area") if single else None,
                score=m.get("score") if single else None,
                type_name=unmapped,
                measurements={k: v for k, v in m.items() if k not in RESERVED_MEASUREMENTS} if single else {},
            )
            records.append((nucleus, stored_id))

    # Keep the ids histostain wrote when every nucleus has a distinct one; otherwise number them in file order.
    stored = [sid for _, sid in records]
    keep = all(sid is not None for sid in stored) and len(set(stored)) == len(stored)
    nuclei = []
    for number, (nucleus, sid) in enumerate(records, start=1):
        nucleus.id = sid if keep and sid is not None else number
        nuclei.append(nucleus)
    return nuclei


def read_geojson(
    path: PathLike,
    *,
    type_names: Mapping[int, str] | None = None,
    object_types: Collection[str] | None = None,
    image_size: tuple[int, int] | None = None,
) -> list[Nucleus]:
    """Read QuPath/CellViT GeoJSON: a FeatureCollection, a single Feature, or a bare list of Features.

    Point and Polygon features are one nucleus each; MultiPoint/MultiPolygon one nucleus per part. A polygon's
    centroid is its area centroid unless histostain stored the exact one. Measurements may be a list of
    ``{name, value}`` or an object; those without a Nucleus field of their own go to ``Nucleus.measurements``.
    Class names map back to codes through
    ``type_names`` (PanNuke by default); an unknown name gives ``type=None`` and keeps the name in ``type_name``.
    ``object_types`` (e.g. ``{"detection"}``) keeps only those QuPath objects, e.g. to skip a region annotation.
    """
    path = Path(path)
    return _geojson_from_data(
        _load_json(path), path, type_names=type_names, object_types=object_types, image_size=image_size
    )
