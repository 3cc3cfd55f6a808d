"""Augmentations for training on prepared data: the 8 dihedral transforms, random crops, colour jitter.

Geometry
    The 8 *dihedral* transforms (flips and 90-degree rotations) move whole pixels, so they are exact: no
    interpolation, no new label values, no mirror padding. Transform ``k`` (0..7) is "flip left-right if
    ``k >= 4``, then rotate ``k % 4`` quarter turns counter-clockwise" (``np.rot90`` on the row/column axes);
    ``k = 0`` is the identity. The same ``k`` applied with :func:`dihedral` to an image and its label maps and
    with :func:`dihedral_points` to its keypoints keeps them aligned.

Coordinates
    Points are ``(x, y)`` with x = column and y = row, in the pixel-centre convention used everywhere in
    histostain: the centre of pixel ``[row, col]`` is ``(col, row)`` (a centroid computed as the mean of pixel
    indices). A left-right flip maps ``x -> W - 1 - x``; a quarter turn maps ``(x, y) -> (y, W - 1 - x)`` with
    ``W`` the width before the turn. The formulas are affine, so fractional coordinates are transformed
    exactly too, and nothing is clipped: a point outside the pixel centres (EndoNuke allows ``x == W``) stays
    the same distance outside after the transform.

Colour
    :func:`colour_jitter` perturbs the image only (never label maps): ``"hed"`` scales and shifts the
    haematoxylin, eosin and DAB concentrations of the Beer-Lambert model with the stain vectors of
    ``skimage.color`` (``c' = c * U(1 - s, 1 + s) + U(-s, s)`` in natural-log optical density units);
    ``"hsv"`` shifts hue by ``U(-s/2, s/2)`` turns and scales saturation and value by ``U(1 - s, 1 + s)``.
    ``s = 0`` returns the image unchanged. Typical strengths are 0.02-0.1.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

N_DIHEDRAL = 8
JitterSpace = Literal["hed", "hsv"]
JITTER_SPACES: tuple[str, ...] = ("hed", "hsv")


def _check_k(k: int) -> int:
    if not 0 <= int(k) < N_DIHEDRAL:
        raise ValueError(f"dihedral transform index must be 0..7, got {k}")
    return int(k)


def dihedral(array: np.ndarray, k: int) -> np.ndarray:
    """Apply dihedral transform ``k`` to an ``H x W`` or ``H x W x C`` array (a contiguous copy)."""
    k = _check_k(k)
    if array.ndim < 2:
        raise ValueError(f"expected an H x W (x C) array, got shape {array.shape}")
    out = array[:, ::-1] if k >= 4 else array
    out = np.rot90(out, k % 4, axes=(0, 1))
    return np.ascontiguousarray(out)


def dihedral_many(arrays: Sequence[np.ndarray], k: int) -> list[np.ndarray]:
    """Apply the same transform to several arrays of the same height and width (image and label maps)."""
    shapes = {a.shape[:2] for a in arrays}
    if len(shapes) > 1:
        raise ValueError(f"arrays must share height and width to be transformed together, got {sorted(shapes)}")
    return [dihedral(a, k) for a in arrays]


def dihedral_shape(height: int, width: int, k: int) -> tuple[int, int]:
    """``(height, width)`` after transform ``k`` (odd quarter turns swap them)."""
    return (width, height) if _check_k(k) % 2 else (height, width)


def dihedral_points(points: np.ndarray, k: int, height: int, width: int) -> np.ndarray:
    """Transform ``(N, 2)`` ``(x, y)`` points of an ``height x width`` image as :func:`dihedral` moves pixels."""
    k = _check_k(k)
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    x, y = pts[:, 0].copy(), pts[:, 1].copy()
    w, h = width, height
    if k >= 4:
        x = (w - 1) - x
    for _ in range(k % 4):
        # np.rot90 (counter-clockwise): new[i, j] = old[j, W - 1 - i], so old (row y, col x) -> (W - 1 - x, y).
        x, y = y, (w - 1) - x
        w, h = h, w
    return np.stack([x, y], axis=1)


def inverse_dihedral(k: int) -> int:
    """The index of the transform undoing ``k`` (flips are their own inverse; rotations reverse)."""
    k = _check_k(k)
    return k if k >= 4 else (4 - k) % 4


def random_dihedral(rng: np.random.Generator) -> int:
    """One of the 8 transforms, uniformly."""
    return int(rng.integers(N_DIHEDRAL))


def random_crop_origin(rng: np.random.Generator, height: int, width: int, size: int) -> tuple[int, int]:
    """Top-left ``(y0, x0)`` of a uniformly placed ``size x size`` window inside ``height x width``."""
    if size > height or size > width:
        raise ValueError(f"crop {size} is larger than the image ({height} x {width})")
    return int(rng.integers(height - size + 1)), int(rng.integers(width - size + 1))


def centre_crop_origin(height: int, width: int, size: int) -> tuple[int, int]:
    """Top-left ``(y0, x0)`` of the centred ``size x size`` window (rounded down)."""
    if size > height or size > width:
        raise ValueError(f"crop {size} is larger than the image ({height} x {width})")
    return (height - size) // 2, (width - size) // 2


def crop(array: np.ndarray, y0: int, x0: int, size: int) -> np.ndarray:
    """The ``size x size`` window of ``array`` at ``(y0, x0)`` (a view)."""
    return array[y0 : y0 + size, x0 : x0 + size]


# ---------------------------------------------------------------------------------------------------- colour


_OD_TABLE = (-np.log((np.arange(256, dtype=np.float64) + 1.0) / 256.0)).astype(np.float32)


def _stain_matrices() -> tuple[np.ndarray, np.ndarray]:
    from skimage.color import rgb_from_hed

    forward = np.asarray(rgb_from_hed, dtype=np.float64)  # rows: H, E, DAB optical-density vectors
    return forward, np.linalg.inv(forward)


def hed_jitter(image: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Scale and shift the H, E and DAB concentrations of a uint8 RGB image (see the module docstring)."""
    _check_rgb(image)
    if strength <= 0:
        return image
    forward, inverse = _stain_matrices()
    alpha = rng.uniform(1 - strength, 1 + strength, size=3)
    beta = rng.uniform(-strength, strength, size=3)
    # OD -> concentrations -> jitter -> OD is one affine map, folded into a 3 x 3 matrix and an offset.
    matrix = (inverse * alpha) @ forward
    offset = beta @ forward
    # I = 256 exp(-OD) - 1 is exactly invertible on 0..255 and avoids log(0); the log is a 256-entry table.
    od = _OD_TABLE[image]
    od = od @ matrix.astype(np.float32) + offset.astype(np.float32)
    np.negative(od, out=od)
    np.exp(od, out=od)
    od *= np.float32(256.0)
    od -= np.float32(1.0)
    return np.clip(np.rint(od), 0, 255).astype(np.uint8)


def hsv_jitter(image: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Shift hue and scale saturation and value of a uint8 RGB image (see the module docstring)."""
    _check_rgb(image)
    if strength <= 0:
        return image
    from skimage.color import hsv2rgb, rgb2hsv

    hue = rng.uniform(-strength / 2, strength / 2)
    saturation, value = rng.uniform(1 - strength, 1 + strength, size=2)
    hsv = rgb2hsv(image)
    hsv[..., 0] = (hsv[..., 0] + hue) % 1.0
    hsv[..., 1] = np.clip(hsv[..., 1] * saturation, 0.0, 1.0)
    hsv[..., 2] = np.clip(hsv[..., 2] * value, 0.0, 1.0)
    return np.clip(np.rint(hsv2rgb(hsv) * 255.0), 0, 255).astype(np.uint8)


def colour_jitter(
    image: np.ndarray, rng: np.random.Generator, strength: float, space: JitterSpace | str = "hed"
) -> np.ndarray:
    """Jitter the colours of a uint8 RGB image in ``space`` (``"hed"`` or ``"hsv"``); the image only."""
    if space == "hed":
        return hed_jitter(image, rng, strength)
    if space == "hsv":
        return hsv_jitter(image, rng, strength)
    raise ValueError(f"colour jitter space must be one of {', '.join(JITTER_SPACES)}, got {space!r}")


def _check_rgb(image: np.ndarray) -> None:
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"expected a uint8 H x W x 3 RGB image, got {image.dtype} {image.shape}")


__all__ = [
    "JITTER_SPACES",
    "N_DIHEDRAL",
    "centre_crop_origin",
    "colour_jitter",
    "crop",
    "dihedral",
    "dihedral_many",
    "dihedral_points",
    "dihedral_shape",
    "hed_jitter",
    "hsv_jitter",
    "inverse_dihedral",
    "random_crop_origin",
    "random_dihedral",
]
