"""A slide (or a region of it) cut into chunks at a model's scale: what `segment`, `translate` and `pipeline` walk.

A model works at one scale (HoVer-Net 0.25 um/px, the classical segmenter 0.5), a slide has a few pyramid
levels at others. :func:`plan_slide` picks the level closest to the model's scale from above
(``Slide.best_level``) and resamples only the difference, so every chunk arrives as pixels *at the model's
scale* ("processing pixels"). The chunks are those of ``segmentation.chunks.plan_chunks`` over the processing
image: square cores that tile it without overlap, each with a margin of real pixels around it, so a slide is
cut exactly as the same pixels saved as one image would be cut by the in-memory commands.

Coordinates: processing pixels inside the plan; :meth:`SlidePlan.to_level0` maps them to level-0 slide pixels,
the frame every output (GeoJSON, CSV, OME-TIFF) and QuPath use. ``--roi x,y,w,h`` is in level-0 pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from histostain.errors import InputError
from histostain.segmentation.chunks import DEFAULT_CHUNK, DEFAULT_MARGIN, Chunk, plan_chunks

if TYPE_CHECKING:
    from histostain.io.slides import Slide
    from histostain.io.tissue import TissueMask

TISSUE_MIN_FRACTION = 0.001  # a chunk core with less tissue than this (of its area) is glass and skipped
SCALE_TOLERANCE = 0.05  # slide levels within 5 % of the model's scale are used as they are (as for images)


@dataclass(frozen=True)
class Roi:
    """A rectangle of the slide in level-0 pixels."""

    x: int
    y: int
    width: int
    height: int

    def to_list(self) -> list[int]:
        return [self.x, self.y, self.width, self.height]


def parse_roi(text: str | None) -> Roi | None:
    """``--roi x,y,w,h`` (level-0 pixels, non-negative, positive size) as a :class:`Roi`; None for no ROI."""
    if text is None or not str(text).strip():
        return None
    parts = [p.strip() for p in str(text).split(",")]
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if len(values) != 4 or values[0] < 0 or values[1] < 0 or values[2] <= 0 or values[3] <= 0:
        raise InputError(
            f"--roi {text}: expected x,y,width,height as four whole numbers (level-0 pixels, size > 0)",
            hint="e.g. --roi 10000,12000,4096,4096",
        )
    return Roi(*values)


def _clip_roi(roi: Roi | None, slide: Slide) -> Roi:
    height, width = slide.dimensions
    if roi is None:
        return Roi(0, 0, width, height)
    if roi.x >= width or roi.y >= height:
        raise InputError(
            f"--roi {','.join(map(str, roi.to_list()))} starts outside the slide {slide.path.name}"
            f" ({width} x {height})",
            hint="the ROI is x,y,width,height in level-0 pixels",
        )
    return Roi(roi.x, roi.y, min(roi.width, width - roi.x), min(roi.height, height - roi.y))


@dataclass(frozen=True)
class SlidePlan:
    """The chunks of one slide (or ROI) at the processing scale, and how to read and place them."""

    slide: Slide
    roi: Roi  # the processed rectangle in level-0 pixels (the whole slide without --roi)
    level: int  # the pyramid level read
    scale: float  # level-0 pixels per processing pixel
    mpp: float | None  # um per processing pixel (None: the slide's scale is unknown and the model has none)
    shape: tuple[int, int]  # (height, width) of the ROI in processing pixels
    chunks: tuple[Chunk, ...]  # plan_chunks over ``shape``, in its order
    chunk: int
    margin: int

    def level0_box(self, y0: int, x0: int, y1: int, x1: int) -> tuple[int, int, int, int]:
        """A processing-pixel box as level-0 ``(x, y, width, height)``, widened to whole pixels."""
        s = self.scale
        lx0, ly0 = self.roi.x + math.floor(x0 * s), self.roi.y + math.floor(y0 * s)
        lx1, ly1 = self.roi.x + math.ceil(x1 * s), self.roi.y + math.ceil(y1 * s)
        return lx0, ly0, lx1 - lx0, ly1 - ly0

    def read(self, part: Chunk) -> np.ndarray:
        """The chunk's extended region as uint8 RGB at the processing scale (``ey1-ey0 x ex1-ex0 x 3``)."""
        return self.read_box(part.ey0, part.ex0, part.ey1, part.ex1)

    def read_box(self, y0: int, x0: int, y1: int, x1: int) -> np.ndarray:
        """Any processing-pixel box of the ROI as uint8 RGB at the processing scale."""
        height, width = y1 - y0, x1 - x0
        if self.scale == 1.0 and self.level == 0:
            return self.slide.read_region(self.roi.x + x0, self.roi.y + y0, width, height, 0)
        ds = self.slide.downsamples[self.level]
        s = self.scale
        lx, ly = self.roi.x + x0 * s, self.roi.y + y0 * s  # exact level-0 corner (may be fractional)
        read_w, read_h = max(1, math.ceil(width * s / ds)), max(1, math.ceil(height * s / ds))
        pixels = self.slide.read_region(math.floor(lx), math.floor(ly), read_w, read_h, self.level)
        if pixels.shape[:2] == (height, width):
            return pixels
        shrinking = read_w > width
        return cv2.resize(pixels, (width, height), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)

    def to_level0(self, points: np.ndarray) -> np.ndarray:
        """``(..., 2)`` ``(x, y)`` processing-pixel coordinates as level-0 slide coordinates (float64)."""
        points = np.asarray(points, dtype=np.float64)
        return points * self.scale + np.array([self.roi.x, self.roi.y], dtype=np.float64)

    def in_tissue(self, part: Chunk, mask: TissueMask | None) -> bool:
        """Whether the chunk's core holds any tissue (always, without a mask)."""
        if mask is None:
            return True
        x, y, w, h = self.level0_box(part.y0, part.x0, part.y1, part.x1)
        return mask.covers(x, y, w, h, min_fraction=TISSUE_MIN_FRACTION)

    def glass_pixels(self, part: Chunk, mask: TissueMask | None) -> np.ndarray | None:
        """Per pixel of the chunk's extended region (processing scale): True where the tissue mask says glass,
        with the tissue widened by one mask pixel so no tissue edge counts as glass; None without a mask.

        A translator must not paint glass: on near-uniform glass a CycleGAN's instance norm amplifies the noise
        into textured blocks that follow its tiles, which a segmenter may then take for nuclei.
        """
        if mask is None:
            return None
        from scipy import ndimage

        mh, mw = mask.mask.shape
        sy, sx = mh / self.slide.dimensions[0], mw / self.slide.dimensions[1]
        ys = (self.roi.y + (np.arange(part.ey0, part.ey1) + 0.5) * self.scale) * sy
        xs = (self.roi.x + (np.arange(part.ex0, part.ex1) + 0.5) * self.scale) * sx
        rows = np.clip(ys.astype(np.int64), 0, mh - 1)
        cols = np.clip(xs.astype(np.int64), 0, mw - 1)
        r0, r1 = max(0, int(rows[0]) - 1), min(mh, int(rows[-1]) + 2)
        c0, c1 = max(0, int(cols[0]) - 1), min(mw, int(cols[-1]) + 2)
        window = ndimage.binary_dilation(mask.mask[r0:r1, c0:c1], structure=np.ones((3, 3), bool))
        return ~window[np.ix_(rows - r0, cols - c0)]

    def describe(self) -> dict[str, Any]:
        """What decides the chunks (recorded with a run and compared when it resumes)."""
        return {
            "slide": self.slide.path.name,
            "slide_size": [self.slide.dimensions[1], self.slide.dimensions[0]],
            "roi": self.roi.to_list(),
            "level": self.level,
            "scale": round(self.scale, 9),
            "mpp": None if self.mpp is None else round(self.mpp, 9),
            "processing_size": [self.shape[1], self.shape[0]],
            "chunk": self.chunk,
            "margin": self.margin,
            "chunks": len(self.chunks),
        }


def plan_slide(
    slide: Slide,
    target_mpp: float | None,
    *,
    roi: Roi | None = None,
    chunk: int = DEFAULT_CHUNK,
    margin: int = DEFAULT_MARGIN,
) -> SlidePlan:
    """The chunks of ``slide`` (or ``roi``) at ``target_mpp`` um/px (None: level 0 as it is).

    A slide level within 5 % of the target is used unresampled (the same tolerance images get), so a 0.499 um/px
    scan runs at its own pixels for a 0.5 um/px model.
    """
    area = _clip_roi(roi, slide)
    if target_mpp is None:
        level, scale, mpp = 0, 1.0, slide.mpp
    else:
        level, residual = slide.best_level(target_mpp)
        level_mpp = slide.level_mpp(level)
        assert level_mpp is not None  # best_level refuses a slide without a scale
        if abs(residual - 1.0) <= SCALE_TOLERANCE:
            residual = 1.0
        scale = slide.downsamples[level] * residual
        mpp = level_mpp * residual
    height = max(1, round(area.height / scale))
    width = max(1, round(area.width / scale))
    chunks = tuple(plan_chunks(height, width, chunk, margin))
    return SlidePlan(slide, area, level, scale, mpp, (height, width), chunks, int(chunk), int(margin))


__all__ = ["TISSUE_MIN_FRACTION", "Roi", "SlidePlan", "parse_roi", "plan_slide"]
