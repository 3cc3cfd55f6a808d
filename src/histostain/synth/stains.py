"""The Beer-Lambert stain model, with the stain vectors of ``skimage.color``.

Optical density is additive over stains: ``OD = sum_s c_s * v_s`` (per RGB channel, ``v_s`` a unit vector),
and the transmitted light is ``I = 255 * exp(-OD)``. This is the convention of ``skimage.color``: its
``combine_stains``/``separate_stains`` use natural logarithms scaled by ``-log(1e-6)``, so ``rgb2hed`` of a
rendered tile returns ``c_s / 13.8`` for unjittered vectors.
"""

from __future__ import annotations

import numpy as np
from skimage.color import rgb_from_hed

HEMATOXYLIN, EOSIN, DAB = 0, 1, 2
BASE_VECTORS = rgb_from_hed / np.linalg.norm(rgb_from_hed, axis=1, keepdims=True)
NEUTRAL = np.full(3, 1.0 / np.sqrt(3.0))
# skimage's eosin vector absorbs almost only green (magenta); eosin in real scans also absorbs some blue
# (pink). Each H&E render mixes the two by a random amount, so both looks occur.
PINK_EOSIN = np.array([0.13, 0.86, 0.47]) / np.linalg.norm([0.13, 0.86, 0.47])


def jitter_vectors(rng: np.random.Generator, spread: float = 0.04) -> np.ndarray:
    """The three standard stain vectors (rows H, E, DAB), each perturbed and renormalised."""
    base = BASE_VECTORS.copy()
    mix = rng.uniform(0.3, 0.8)
    base[EOSIN] = (1 - mix) * base[EOSIN] + mix * PINK_EOSIN
    vectors = np.abs(base + rng.normal(0.0, spread, size=base.shape))
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def optical_density(concentrations: list[np.ndarray | None], vectors: np.ndarray, neutral: float) -> np.ndarray:
    """Planar ``3 x H x W`` optical density from per-stain concentration maps (None = absent) plus a neutral floor."""
    present = [(conc, vector) for conc, vector in zip(concentrations, vectors, strict=True) if conc is not None]
    shape = present[0][0].shape
    od = np.empty((3, *shape), dtype=np.float32)
    floor = np.float32(neutral * NEUTRAL[0])
    for channel in range(3):
        out = od[channel]
        np.multiply(present[0][0], np.float32(present[0][1][channel]), out=out)
        for conc, vector in present[1:]:
            out += conc * np.float32(vector[channel])
        out += floor
    return od


def transmit(od: np.ndarray) -> np.ndarray:
    """Transmitted intensity 0..255 (float32) of an optical density image (in place)."""
    np.negative(od, out=od)
    np.exp(od, out=od)
    od *= np.float32(255.0)
    return od
