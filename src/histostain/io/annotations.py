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

import csv
import inspect
import io
import json
import math
import os
import uuid
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from histostain.errors import ConfigError, InputError
from histostain.io.atomic import atomic_write_text

PathLike = str | os.PathLike[str]
RGB = tuple[int, int, int]

# PanNuke classes in the order of the mask channels 0..4, as CellViT names and colours them (type 0 = background).
PANNUKE_TYPE_NAMES: dict[int, str] = {1: "Neoplastic", 2: "Inflammatory", 3: "Connective", 4: "Dead", 5: "Epithelial"}
PANNUKE_TYPE_COLORS: dict[int, RGB] = {
    1: (255, 0, 0),
    2: (34, 221, 77),
    3: (35, 92, 236),
    4: (254, 255, 0),
    5: (255, 159, 68),
}
# EndoNuke class codes as the dataset authors use them (0 stroma, 1 epithelium, 2 other nuclei). The colours are
# histostain's own choice; the dataset defines none.
ENDONUKE_TYPE_NAMES: dict[int, str] = {0: "stroma", 1: "epithelium", 2: "other"}
ENDONUKE_TYPE_COLORS: dict[int, RGB] = {0: (35, 92, 236), 1: (255, 0, 0), 2: (254, 255, 0)}

# Fixed namespace of the deterministic GeoJSON feature ids (uuid5), so the same nuclei always get the same ids.
GEOJSON_ID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://histostain/annotations/nucleus")

GEOJSON_OBJECT_TYPES = ("detection", "annotation", "cell")
FORMATS = ("txt", "hovernet", "geojson", "csv")
# Extension -> format; ".json" is hover_net JSON or GeoJSON, told apart by the top-level structure.
EXTENSIONS: dict[str, str | None] = {".txt": "txt", ".json": None, ".geojson": "geojson", ".csv": "csv"}

CSV_COLUMNS = ("id", "x", "y", "type", "type_prob", "area")

# QuPath v0.2 wrote Java class names instead of object types.
_LEGACY_OBJECT_TYPES = {
    "PathAnnotationObject": "annotation",
    "PathDetectionObject": "detection",
    "PathCellObject": "cell",
    "PathTileObject": "tile",
    "TMACoreObject": "tmaCore",
    "PathRootObject": "root",
}


@dataclass(eq=False)
class Nucleus:
    """One nucleus (or one point annotation) in pixel coordinates of its image.

    ``centroid`` is ``(x, y)``; ``contour`` a ``K x 2`` array of ``(x, y)`` points (an open ring: the first point
    is not repeated); ``bbox`` is ``(x0, y0, x1, y1)`` with ``x1``/``y1`` exclusive. ``type_name`` is only set by
    the GeoJSON reader when a class name could not be mapped to a code, so the name is not lost.
    """

    id: int
    centroid: tuple[float, float]
    type: int | None = None
    type_prob: float | None = None
    contour: np.ndarray | None = None
    bbox: tuple[int, int, int, int] | None = None
    area: float | None = None
    score: float | None = None
    type_name: str | None = None

    def __post_init__(self) -> None:
        # Normalise numpy scalars and lists once here, so every writer can rely on plain Python numbers.
        self.id = int(self.id)
        x, y = self.centroid
        self.centroid = (float(x), float(y))
        if self.type is not None:
            self.type = int(self.type)
        for name in ("type_prob", "area", "score"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, float(value))
        if self.contour is not None:
            contour = np.asarray(self.contour)
            if contour.ndim != 2 or contour.shape[1] != 2:
                raise ValueError(f"contour must be a K x 2 array of (x, y) points, got shape {contour.shape}")
            self.contour = contour
        if self.bbox is not None:
            if len(self.bbox) != 4:
                raise ValueError(f"bbox must be (x0, y0, x1, y1), got {self.bbox!r}")
            x0, y0, x1, y1 = (int(v) for v in self.bbox)
            self.bbox = (x0, y0, x1, y1)

    def __eq__(self, other: object) -> bool:
        """Exact equality; contours compare by value (the generated one would fail on arrays)."""
        if not isinstance(other, Nucleus):
            return NotImplemented
        for f in fields(self):
            a, b = getattr(self, f.name), getattr(other, f.name)
            if f.name == "contour":
                if (a is None) != (b is None) or (a is not None and not np.array_equal(a, b)):
                    return False
            elif a != b:
                return False
        return True

    __hash__ = None  # type: ignore[assignment]  # mutable, compared by value


# --------------------------------------------------------------------------------------------- array helpers


def centroids_array(nuclei: Sequence[Nucleus]) -> np.ndarray:
    """Centroids as an ``(N, 2)`` float64 array of ``(x, y)``, the shape the detection metrics take."""
    if not nuclei:
        return np.zeros((0, 2), dtype=np.float64)
    return np.array([n.centroid for n in nuclei], dtype=np.float64)


def types_array(nuclei: Sequence[Nucleus]) -> np.ndarray:
    """Class codes as an ``(N,)`` int64 array, with -1 for untyped nuclei (no class code is negative)."""
    return np.array([-1 if n.type is None else n.type for n in nuclei], dtype=np.int64)


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


# --------------------------------------------------------------------------------------------- QuPath GeoJSON


def geojson_feature_id(nucleus_id: int, image_name: str | None = None) -> str:
    """Deterministic UUID for a nucleus, so re-running a command writes byte-identical GeoJSON."""
    key = f"{image_name}/{nucleus_id}" if image_name else str(nucleus_id)
    return str(uuid.uuid5(GEOJSON_ID_NAMESPACE, key))


def _class_name(nucleus: Nucleus, names: Mapping[int, str]) -> str | None:
    if nucleus.type is not None:
        return names.get(nucleus.type, str(nucleus.type))
    return nucleus.type_name


def geojson_features(
    nuclei: Iterable[Nucleus],
    *,
    object_type: str = "detection",
    type_names: Mapping[int, str] | None = None,
    type_colors: Mapping[int, RGB] | None = None,
    image_name: str | None = None,
) -> list[dict[str, Any]]:
    """QuPath v0.4+ features, one per nucleus (see :func:`write_geojson`)."""
    if object_type not in GEOJSON_OBJECT_TYPES:
        raise ConfigError(
            f"unknown QuPath object type {object_type!r}", hint=f"use one of {', '.join(GEOJSON_OBJECT_TYPES)}"
        )
    names = PANNUKE_TYPE_NAMES if type_names is None else type_names
    colors = PANNUKE_TYPE_COLORS if type_colors is None else type_colors
    nuclei = list(nuclei)
    _check_unique_ids(nuclei)
    features = []
    for n in nuclei:
        measurements: dict[str, float | int] = {"nucleus_id": n.id}
        if n.contour is not None and len(n.contour) >= 3:
            ring = _contour_list(n.contour)
            if ring[0] != ring[-1]:
                ring.append(list(ring[0]))  # GeoJSON rings are closed
            geometry: dict[str, Any] = {"type": "Polygon", "coordinates": [ring]}
            # The polygon's own centroid differs slightly from the pixel-mask centroid; keep the latter exactly.
            measurements["centroid_x"], measurements["centroid_y"] = n.centroid
        else:
            geometry = {"type": "Point", "coordinates": [n.centroid[0], n.centroid[1]]}
        for name in ("type_prob", "area", "score"):
            value = getattr(n, name)
            if value is not None:
                measurements[name] = value
        properties: dict[str, Any] = {"objectType": object_type}
        class_name = _class_name(n, names)
        if class_name is not None:
            classification: dict[str, Any] = {"name": class_name}
            if n.type is not None and n.type in colors:
                classification["color"] = [int(c) for c in colors[n.type]]
            properties["classification"] = classification
        properties["measurements"] = measurements
        feature: dict[str, Any] = {"type": "Feature", "id": geojson_feature_id(n.id, image_name), "geometry": geometry}
        if object_type == "cell":
            feature["nucleusGeometry"] = geometry  # no cell boundary is known: the nucleus is the whole cell
        feature["properties"] = properties
        features.append(feature)
    return features


def write_geojson(
    path: PathLike,
    nuclei: Iterable[Nucleus],
    *,
    object_type: str = "detection",
    type_names: Mapping[int, str] | None = None,
    type_colors: Mapping[int, RGB] | None = None,
    image_name: str | None = None,
) -> Path:
    """Write a QuPath-importable FeatureCollection, one Feature per nucleus.

    A contour of 3 or more points becomes a closed Polygon, anything else a Point at the centroid. Classes are
    named through ``type_names`` (PanNuke names by default; an unnamed code is written as its number) and
    coloured through ``type_colors``. Ids are uuid5 of the nucleus id and ``image_name``, so output is
    reproducible. ``object_type`` is "detection" (default), "annotation" or "cell".
    """
    features = geojson_features(
        nuclei, object_type=object_type, type_names=type_names, type_colors=type_colors, image_name=image_name
    )
    return atomic_write_text(path, _dump_json({"type": "FeatureCollection", "features": features}))


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
    centroid is its area centroid unless histostain stored the exact one. Class names map back to codes through
    ``type_names`` (PanNuke by default); an unknown name gives ``type=None`` and keeps the name in ``type_name``.
    ``object_types`` (e.g. ``{"detection"}``) keeps only those QuPath objects, e.g. to skip a region annotation.
    """
    path = Path(path)
    return _geojson_from_data(
        _load_json(path), path, type_names=type_names, object_types=object_types, image_size=image_size
    )


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
    "ENDONUKE_TYPE_COLORS",
    "ENDONUKE_TYPE_NAMES",
    "FORMATS",
    "GEOJSON_ID_NAMESPACE",
    "PANNUKE_TYPE_COLORS",
    "PANNUKE_TYPE_NAMES",
    "Nucleus",
    "centroids_array",
    "format_number",
    "geojson_feature_id",
    "geojson_features",
    "hovernet_dict",
    "polygon_centroid",
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
