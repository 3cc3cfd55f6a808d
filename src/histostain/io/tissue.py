"""Tissue detection on a low-resolution view of a slide, so whole-slide runs skip the glass.

Most of a slide is empty glass; running a model on it wastes hours and finds artefacts. Tissue is stained,
glass is not, so the colour *saturation* separates them better than brightness (pale fat and faint stroma are
bright but still tinted). The mask is Otsu on (log) saturation of a small level (the smallest whose longer side is
at least ~1,000 px, shrunk to ``max_side``), with a floor so an all-glass or all-tissue slide does not split
noise in two, then cleaned up: closing joins tissue across thin gaps, small holes (lumens, tears) are filled,
specks (dust, debris) are removed. The morphology sizes scale with the mask so they mean the same fraction of
the slide whatever its size.

A user can supply their own mask instead (``--tissue-mask PNG``, any size; nonzero = tissue, as in
hover_net): :func:`load_tissue_mask` scales it to the slide.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage
from skimage import morphology
from skimage.filters import threshold_otsu

from histostain.errors import InputError
from histostain.io.images import read_image
from histostain.io.slides import Slide

MIN_MASK_SOURCE_SIDE = 1000  # smallest level worth thresholding: coarser levels lose small tissue fragments
SATURATION_FLOOR = 0.05  # below this is glass whatever Otsu says (clean glass measures ~0.01-0.04)
_LOG_EPS = 0.01
DARK_VALUE = 0.1  # near-black pixels (scanner padding, pen) have unstable saturation: never tissue
_ASPECT_TOLERANCE = 0.05


@dataclass(frozen=True)
class TissueMask:
    """A boolean tissue mask over the whole slide; ``downsample`` is level-0 pixels per mask pixel."""

    mask: np.ndarray
    downsample: float
    slide_shape: tuple[int, int]  # level-0 (height, width) the mask covers

    @property
    def fraction(self) -> float:
        """Share of the slide covered by tissue."""
        return float(self.mask.mean()) if self.mask.size else 0.0

    def covers(self, x: int, y: int, width: int, height: int, min_fraction: float = 0.05) -> bool:
        """Whether the level-0 rectangle holds at least ``min_fraction`` tissue (only the part inside the slide).

        The rectangle is widened to whole mask pixels so a small tile never falls between them.
        """
        if width <= 0 or height <= 0:
            return False
        mh, mw = self.mask.shape
        sy, sx = mh / self.slide_shape[0], mw / self.slide_shape[1]
        y0, x0 = max(0, int(np.floor(y * sy))), max(0, int(np.floor(x * sx)))
        y1, x1 = min(mh, int(np.ceil((y + height) * sy))), min(mw, int(np.ceil((x + width) * sx)))
        if y1 <= y0 or x1 <= x0:
            return False
        return float(self.mask[y0:y1, x0:x1].mean()) >= min_fraction


def _mask_level(slide: Slide) -> int:
    """The smallest level whose longer side is at least MIN_MASK_SOURCE_SIDE (level 0 if none is)."""
    for level in range(len(slide.levels) - 1, -1, -1):
        if max(slide.levels[level]) >= MIN_MASK_SOURCE_SIDE:
            return level
    return 0


def _saturation(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """HSV saturation and value in [0, 1], computed directly (cheaper than a full HSV conversion)."""
    data = rgb.astype(np.float32) / 255.0
    high = data.max(axis=-1)
    low = data.min(axis=-1)
    saturation = np.where(high > 0, (high - low) / np.maximum(high, 1e-6), 0.0)
    return saturation, high


def saturation_threshold(saturation: np.ndarray) -> float:
    """Otsu on log saturation, floored: the glass / tissue split rather than the nuclei / stroma one.

    On a linear scale Otsu splits *inside* the tissue (saturated nuclei against pale stroma, ~0.2) whenever the
    tissue is richer in contrast than the glass is large; on a log scale the near-zero glass mode is spread out
    and pale tissue (~0.08-0.3) groups with the rest, so the split falls between glass and tissue (~0.09).
    """
    samples = np.log(saturation + _LOG_EPS)
    if samples.size == 0 or float(samples.max()) - float(samples.min()) < 1e-6:
        return SATURATION_FLOOR
    return max(float(np.exp(threshold_otsu(samples))) - _LOG_EPS, SATURATION_FLOOR)


def detect_tissue(rgb: np.ndarray) -> np.ndarray:
    """Boolean tissue mask of a low-resolution RGB image (Otsu on saturation, then morphology)."""
    saturation, value = _saturation(rgb)
    saturation = ndimage.gaussian_filter(saturation, 1.0)  # one pixel of smoothing: JPEG and scanner noise
    usable = value >= DARK_VALUE
    if not usable.any():
        return np.zeros(rgb.shape[:2], dtype=bool)
    mask = (saturation > saturation_threshold(saturation[usable])) & usable
    side = max(mask.shape)
    radius = max(1, round(side / 512))
    mask = ndimage.binary_closing(mask, structure=morphology.disk(radius), border_value=0)
    mask = morphology.remove_small_holes(mask, max_size=max(16, (side // 40) ** 2))
    mask = morphology.remove_small_objects(mask, max_size=max(4, (side // 100) ** 2))
    return mask


def tissue_mask(slide: Slide, *, level: int | None = None, max_side: int = 2048) -> TissueMask:
    """Detect tissue on ``level`` (default: the smallest level at least ~1,000 px a side) shrunk to ``max_side``."""
    source = _mask_level(slide) if level is None else level
    rgb = slide.read_level_scaled(source, max_side)
    mask = detect_tissue(rgb)
    return _make_mask(mask, slide)


def _make_mask(mask: np.ndarray, slide: Slide) -> TissueMask:
    h0, w0 = slide.levels[0]
    downsample = (h0 / mask.shape[0] + w0 / mask.shape[1]) / 2.0
    return TissueMask(mask=mask, downsample=downsample, slide_shape=(h0, w0))


def load_tissue_mask(png: str | os.PathLike[str], slide: Slide) -> TissueMask:
    """A user-supplied mask image (nonzero = tissue) of any size, scaled to the slide; checked for its shape."""
    path = Path(png)
    rgb = read_image(path)
    mask = rgb.max(axis=-1) > 0
    h0, w0 = slide.levels[0]
    mh, mw = mask.shape
    if abs((mw / mh) / (w0 / h0) - 1.0) > _ASPECT_TOLERANCE:
        raise InputError(
            f"tissue mask {path} is {mw} x {mh} px but the slide {slide.path.name} is {w0} x {h0}: "
            "their aspect ratios differ",
            hint="the mask must cover the whole slide (any size, same proportions)",
        )
    if not mask.any():
        raise InputError(f"tissue mask {path} marks no tissue (all pixels are 0)", hint="nonzero pixels mean tissue")
    return _make_mask(mask, slide)


__all__ = ["TissueMask", "detect_tissue", "saturation_threshold", "load_tissue_mask", "tissue_mask"]
