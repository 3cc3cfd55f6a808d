"""The nuclei found in one image: the one result every segmenter returns and every output writer reads.

Arrays, not one object per nucleus, because images hold thousands of nuclei and the writers, the metrics and
the chunk merge all work column-wise. Coordinates follow the project contract: ``(x, y)`` in pixels of the
input image, x = column, y = row; bounding boxes are ``(x0, y0, x1, y1)`` with ``x1``/``y1`` exclusive (only the
hover_net JSON writer turns them into its ``[[y0, x0], [y1, x1]]``). Nucleus ``i`` of the arrays is the pixels
``inst_map == ids[i]``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from histostain.io.annotations import Nucleus


@dataclass
class Nuclei:
    """Instance and type maps of one image, and one row per nucleus.

    ``types``/``type_probs`` are None when the segmenter has no type branch. ``type_prob`` is what the model
    reports (hover_net: the fraction of the nucleus' pixels that voted for its type, not a softmax
    probability). ``measurements`` holds further per-nucleus columns (``dab_od``, ``positivity``, ...), each
    ``(n,)``; ``type_names`` names the type codes; ``mpp`` is the scale of the coordinates (um per pixel).
    ``point_radius`` (pixels) marks nuclei found as points by a detector (:mod:`histostain.segmentation.points`):
    the centroids are the points, each instance is a disk of that radius around its point, the contours are
    empty, and writers show points (no outline, no area).
    """

    inst_map: np.ndarray
    type_map: np.ndarray | None
    ids: np.ndarray
    centroids: np.ndarray
    bboxes: np.ndarray
    contours: list[np.ndarray]
    areas: np.ndarray
    types: np.ndarray | None = None
    type_probs: np.ndarray | None = None
    measurements: dict[str, np.ndarray] = field(default_factory=dict)
    type_names: Mapping[int, str] | None = None
    mpp: float | None = None
    point_radius: float | None = None

    def __post_init__(self) -> None:
        n = len(self.ids)
        if self.inst_map.ndim != 2:
            raise ValueError(f"inst_map must be H x W, got shape {self.inst_map.shape}")
        if self.type_map is not None and self.type_map.shape != self.inst_map.shape:
            raise ValueError(f"type_map {self.type_map.shape} does not match inst_map {self.inst_map.shape}")
        shapes = {"centroids": (n, 2), "bboxes": (n, 4), "areas": (n,)}
        for name, shape in shapes.items():
            if getattr(self, name).shape != shape:
                raise ValueError(f"{name} must have shape {shape}, got {getattr(self, name).shape}")
        if len(self.contours) != n:
            raise ValueError(f"{len(self.contours)} contours for {n} nuclei")
        for name in ("types", "type_probs"):
            column = getattr(self, name)
            if column is not None and column.shape != (n,):
                raise ValueError(f"{name} must have shape ({n},), got {column.shape}")
        for name, column in self.measurements.items():
            if np.shape(column) != (n,):
                raise ValueError(f"measurement {name!r} must have shape ({n},), got {np.shape(column)}")

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def shape(self) -> tuple[int, int]:
        """``(height, width)`` of the image."""
        return (int(self.inst_map.shape[0]), int(self.inst_map.shape[1]))

    @classmethod
    def empty(cls, height: int, width: int, typed: bool = False) -> Nuclei:
        """No nucleus in a ``height x width`` image."""
        return cls(
            inst_map=np.zeros((height, width), np.int32),
            type_map=np.zeros((height, width), np.uint8) if typed else None,
            ids=np.zeros(0, np.int32),
            centroids=np.zeros((0, 2), np.float64),
            bboxes=np.zeros((0, 4), np.int64),
            contours=[],
            areas=np.zeros(0, np.int64),
            types=np.zeros(0, np.int64) if typed else None,
            type_probs=np.zeros(0, np.float64) if typed else None,
        )

    def to_annotations(self) -> list[Nucleus]:
        """One :class:`~histostain.io.annotations.Nucleus` per nucleus, for the exchange-format writers."""
        from histostain.io.annotations import Nucleus

        records = []
        points = self.point_radius is not None  # a point has no outline and no measured area
        for i, nucleus_id in enumerate(self.ids.tolist()):
            records.append(
                Nucleus(
                    id=nucleus_id,
                    centroid=(float(self.centroids[i, 0]), float(self.centroids[i, 1])),
                    type=None if self.types is None else int(self.types[i]),
                    type_prob=None if self.type_probs is None else float(self.type_probs[i]),
                    contour=None if points else self.contours[i],
                    bbox=tuple(int(v) for v in self.bboxes[i]),  # type: ignore[arg-type]
                    area=None if points else float(self.areas[i]),
                )
            )
        return records


__all__ = ["Nuclei"]
