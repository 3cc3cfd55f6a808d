"""Check a GeoJSON file against every rule QuPath's importer imposes on detections (0.3 to 0.7).

The rules, and why each exists, are in the reference notes (segment_outputs.md §1): QuPath reads the object
type only from ``properties`` (``objectType`` in 0.4+, ``object_type`` in 0.3) and reads a ``type`` property
as the object type; it rejects a classification without a colour; 0.3 reads measurements only as a list; JTS
rejects rings that are open or shorter than 4 points, and invalid rings break imports in 0.6+; ids that are
not UUIDs are replaced. The writer follows these rules by construction; this check is how tests (and users
debugging an import) confirm it on the written file.
"""

from __future__ import annotations

import json
import math
import os
import uuid
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from histostain.io.annotations.polygons import ring_problem

PathLike = str | os.PathLike[str]


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _classification_problems(value: Any) -> list[str]:
    if not isinstance(value, dict):
        return [f"classification must be an object {{name, color}}, got {type(value).__name__}"]
    problems = []
    if not isinstance(value.get("name"), str) or not value["name"].strip():
        problems.append("classification has no name")
    color = value.get("color")
    if not (
        isinstance(color, list)
        and len(color) == 3
        and all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 255 for c in color)
    ):
        problems.append(f"classification needs a color [r, g, b] of 0..255 integers (QuPath 0.4+), got {color!r}")
    return problems


def _measurement_problems(value: Any) -> list[str]:
    if not isinstance(value, list):
        return ["measurements must be a list of {name, value} (QuPath 0.3 reads no other form)"]
    problems = []
    names = []
    for item in value:
        if not (isinstance(item, dict) and set(item) == {"name", "value"} and isinstance(item["name"], str)):
            problems.append(f"measurement entry {item!r} is not {{name, value}}")
        elif not _is_number(item["value"]):
            problems.append(f"measurement {item['name']!r} has a non-finite or non-numeric value")
        else:
            names.append(item["name"])
    if len(set(names)) != len(names):
        problems.append("measurement names repeat")
    return problems


def _geometry_problems(geometry: Any, allow_points: bool, image_size: tuple[int, int] | None) -> list[str]:
    if not isinstance(geometry, dict):
        return ["geometry missing"]
    kind, coords = geometry.get("type"), geometry.get("coordinates")
    positions: list[Any]
    if kind == "Polygon":
        problem = ring_problem(coords)
        if problem is not None:
            return [f"polygon: {problem}"]
        positions = coords[0]
    elif kind == "Point" and allow_points:
        if not (isinstance(coords, list) and len(coords) == 2 and all(_is_number(c) for c in coords)):
            return [f"point: expected [x, y], got {coords!r}"]
        positions = [coords]
    else:
        allowed = "Polygon or Point" if allow_points else "Polygon"
        return [f"geometry must be a {allowed}, got {kind!r}"]
    if image_size is not None:
        width, height = image_size
        outside = [p for p in positions if not (0 <= p[0] <= width and 0 <= p[1] <= height)]
        if outside:
            return [f"{len(outside)} position(s) outside the {width}x{height} image, e.g. {outside[0]}"]
    return []


def _feature_problems(
    feature: Any, object_type: str, allow_points: bool, image_size: tuple[int, int] | None
) -> list[str]:
    if not isinstance(feature, dict) or feature.get("type") != "Feature":
        return ["not a GeoJSON Feature"]
    problems = []
    try:
        uuid.UUID(str(feature.get("id")))
        if not isinstance(feature.get("id"), str):
            raise ValueError
    except ValueError:
        problems.append(f"id {feature.get('id')!r} is not a UUID string (QuPath would assign a new one)")
    if "objectType" in feature or "classification" in feature or "measurements" in feature:
        problems.append("QuPath keys at the Feature level are ignored; they belong in properties")
    problems += _geometry_problems(feature.get("geometry"), allow_points, image_size)
    if object_type != "cell" and "nucleusGeometry" in feature:
        problems.append("nucleusGeometry is only read for cells")
    properties = feature.get("properties")
    if not isinstance(properties, dict):
        return [*problems, "properties missing"]
    for key in ("objectType", "object_type"):
        if properties.get(key) != object_type:
            problems.append(f"properties.{key} must be {object_type!r}, got {properties.get(key)!r}")
    if "type" in properties:
        problems.append("properties.type is read by QuPath as the object type; it must not be there")
    if "classification" in properties:
        problems += _classification_problems(properties["classification"])
    if "measurements" in properties:
        problems += _measurement_problems(properties["measurements"])
    return problems


def qupath_geojson_problems(
    source: PathLike | dict[str, Any] | list[Any],
    *,
    object_type: str = "detection",
    allow_points: bool = False,
    image_size: tuple[int, int] | None = None,
) -> list[str]:
    """Every way a GeoJSON file (or its parsed JSON) breaks the rules for QuPath ``object_type`` objects.

    An empty list means QuPath 0.3 to 0.7 imports each feature as one ``object_type`` object with its class,
    colour and measurements. ``allow_points`` accepts Point geometries (point annotations, the detector's
    nuclei); the other segmenters' output must be polygons only. ``image_size=(W, H)`` also checks every
    position lies in ``[0, W] x [0, H]``.
    Each problem names its feature, e.g. ``features[3]: polygon: ring is not closed ...``.
    """
    if not isinstance(source, str | os.PathLike):
        data: Any = source
    else:
        try:
            data = json.loads(Path(source).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            return [f"cannot read {source} as JSON: {exc}"]
    if not isinstance(data, dict) or data.get("type") != "FeatureCollection":
        return ["top level must be a FeatureCollection"]
    features = data.get("features")
    if not isinstance(features, list):
        return ["FeatureCollection has no features list"]
    problems: list[str] = []
    ids: list[Any] = []
    for index, feature in enumerate(features):
        problems += [
            f"features[{index}]: {p}" for p in _feature_problems(feature, object_type, allow_points, image_size)
        ]
        if isinstance(feature, dict):
            ids.append(feature.get("id"))
    duplicates = sorted(str(i) for i, count in Counter(map(str, ids)).items() if count > 1)
    if duplicates:
        problems.append(f"ids repeat: {', '.join(duplicates[:3])}")
    return problems


def assert_qupath_geojson(source: PathLike | dict[str, Any], **options: Any) -> None:
    """Raise ``AssertionError`` listing the problems of :func:`qupath_geojson_problems`, if any."""
    problems: Sequence[str] = qupath_geojson_problems(source, **options)
    if problems:
        shown = "\n  ".join(problems[:20])
        raise AssertionError(f"{len(problems)} QuPath GeoJSON problem(s):\n  {shown}")


__all__ = ["assert_qupath_geojson", "qupath_geojson_problems"]
