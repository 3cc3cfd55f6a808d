"""Nuclei found as points (a keypoint detector), in the :class:`~histostain.segmentation.nuclei.Nuclei` every
writer, metric and merge reads.

A detector knows where a nucleus is, not its outline. Its nuclei keep the exact points as centroids and carry
``point_radius`` (pixels): the instance map holds, for each point, the pixels within that radius that are
closer to it than to any other point (a disk clipped by its neighbours). The disk is what positivity is
measured in and what the instance TIFF shows; it is not a segmentation, so outputs treat these nuclei as points:
GeoJSON Point geometries, no contour in the hover_net JSON, no area in summary.csv.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from scipy import ndimage as ndi

from histostain.segmentation.nuclei import Nuclei


def keypoint_pixels(points: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """``(rows, cols)`` of the pixels holding ``(x, y)`` points: rounded half up (``floor(v + 0.5)``), then
    clipped into the image (EndoNuke allows ``x == W``, on the last pixel's outer edge). The detector's
    targets, its decoding and these disks all use this one rule."""
    height, width = shape
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    cols = np.clip(np.floor(points[:, 0] + 0.5), 0, width - 1).astype(np.int64)
    rows = np.clip(np.floor(points[:, 1] + 0.5), 0, height - 1).astype(np.int64)
    return rows, cols


def point_disks(points: np.ndarray, shape: tuple[int, int], radius: float) -> np.ndarray:
    """The int32 instance map: point ``i`` (id ``i + 1``) owns the pixels within ``radius`` of its pixel that
    are nearer to it than to any other point (ties: the pixel's nearest seed as ``distance_transform_edt``
    returns it). A point whose pixel another point already holds owns nothing."""
    labels = np.zeros(shape, np.int32)
    if len(points) == 0:
        return labels
    rows, cols = keypoint_pixels(points, shape)
    seeds = np.zeros(shape, np.int32)
    seeds[rows[::-1], cols[::-1]] = np.arange(len(rows), 0, -1, dtype=np.int32)  # the first point wins a pixel
    distance, (near_rows, near_cols) = ndi.distance_transform_edt(seeds == 0, return_indices=True)
    inside = distance <= radius
    labels[inside] = seeds[near_rows[inside], near_cols[inside]]
    return labels


def nuclei_from_points(
    points: np.ndarray,
    shape: tuple[int, int],
    radius: float,
    *,
    types: np.ndarray | None = None,
    type_probs: np.ndarray | None = None,
    type_names: Mapping[int, str] | None = None,
    measurements: Mapping[str, np.ndarray] | None = None,
    mpp: float | None = None,
) -> Nuclei:
    """Point nuclei in a ``shape`` image: centroids are ``points`` exactly (``(x, y)`` pixels), row ``i`` is
    id ``i + 1``, its disk (:func:`point_disks`) gives the instance map, the bounding box and the pixel count."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    n = len(points)
    height, width = int(shape[0]), int(shape[1])
    inst = point_disks(points, (height, width), float(radius))
    ids = np.arange(1, n + 1, dtype=np.int32)
    areas = np.bincount(inst.ravel(), minlength=n + 1)[1:].astype(np.int64)
    rows, cols = keypoint_pixels(points, (height, width))
    bboxes = np.stack([cols, rows, cols + 1, rows + 1], axis=1).astype(np.int64).reshape(n, 4)
    for index, found in enumerate(ndi.find_objects(inst, max_label=n)):
        if found is not None:
            bboxes[index] = (found[1].start, found[0].start, found[1].stop, found[0].stop)
    return Nuclei(
        inst_map=inst,
        type_map=None,
        ids=ids,
        centroids=points.copy(),
        bboxes=bboxes,
        contours=[np.zeros((0, 2), np.int32) for _ in range(n)],
        areas=areas,
        types=None if types is None else np.asarray(types, dtype=np.int64).reshape(n),
        type_probs=None if type_probs is None else np.asarray(type_probs, dtype=np.float64).reshape(n),
        measurements={name: np.asarray(column).reshape(n) for name, column in (measurements or {}).items()},
        type_names=None if type_names is None else dict(type_names),
        mpp=mpp,
        point_radius=float(radius),
    )


def rescale_points(found: Nuclei, shape: tuple[int, int], mpp: float | None) -> Nuclei:
    """Point nuclei ``found`` in an image resampled from a ``shape`` one, mapped back to ``shape``'s pixels:
    pixel centres map to pixel centres (``x' = (x + 0.5) * W / W_found - 0.5``), the disk radius scales with
    the width, every row and column is kept in order."""
    if found.point_radius is None:
        raise ValueError("rescale_points needs point nuclei")
    height, width = int(shape[0]), int(shape[1])
    fy, fx = height / found.shape[0], width / found.shape[1]
    points = (found.centroids + 0.5) * np.array([fx, fy]) - 0.5
    return nuclei_from_points(
        points,
        (height, width),
        found.point_radius * fx,
        types=found.types,
        type_probs=found.type_probs,
        type_names=found.type_names,
        measurements=found.measurements,
        mpp=mpp,
    )


__all__ = ["nuclei_from_points", "keypoint_pixels", "point_disks", "rescale_points"]
