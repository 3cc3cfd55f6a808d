"""The annotation data model: one Nucleus per detected or annotated nucleus, class names and colours."""

from __future__ import annotations

import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, fields

import numpy as np

PathLike = str | os.PathLike[str]


# Class names and colours are the vocabulary's (``histostain.vocabulary``): PanNuke by default.
# Fixed namespace of the deterministic GeoJSON feature ids (uuid5), so the same nuclei always get the same ids.
GEOJSON_ID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://histostain/annotations/nucleus")

GEOJSON_OBJECT_TYPES = ("detection", "annotation", "cell")
FORMATS = ("txt", "hovernet", "geojson", "csv")
# Extension -> format; ".json" is hover_net JSON or GeoJSON, told apart by the top-level structure.
EXTENSIONS: dict[str, str | None] = {".txt": "txt", ".json": None, ".geojson": "geojson", ".csv": "csv"}

CSV_COLUMNS = ("id", "x", "y", "type", "type_prob", "area")
# GeoJSON measurement names that hold a Nucleus field (or the exact centroid) rather than a free measurement.
RESERVED_MEASUREMENTS = frozenset({"nucleus_id", "centroid_x", "centroid_y", "type_prob", "area", "score"})

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
    ``measurements`` holds further named numbers (``area_um2``, ``dab_od``, ...): the GeoJSON writer writes them
    as QuPath measurements and the reader returns every measurement that has no field of its own here.
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
    measurements: dict[str, float] = field(default_factory=dict)

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
        # Integers stay integers (a positivity score reads better as 2 than 2.0); everything else is a float.
        self.measurements = {
            str(name): int(value) if isinstance(value, int | np.integer) else float(value)
            for name, value in self.measurements.items()
        }

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
