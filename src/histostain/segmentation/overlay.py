"""The overlay picture of ``segment``: the input image with every nucleus outlined in its class colour, and a
legend (class, colour, count) in a white strip below the image.

The strip is added below rather than drawn over the tissue, so no nucleus is hidden and the image part keeps
the input's pixel grid: pixel (x, y) of the overlay is pixel (x, y) of the input for every ``y < H``. Colours
and classes follow :mod:`histostain.segmentation.output_classes`, the same as the QuPath classification.
Drawing is Pillow's ``ImageDraw``: no dependency beyond the ones histostain has.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from histostain.segmentation.nuclei import Nuclei
from histostain.segmentation.output_classes import NO_CLASS, UNCLASSIFIED, OutputClasses, output_classes
from histostain.vocabulary import RGB

# Nuclei without a class: bright green shows on hematoxylin blue, eosin pink and DAB brown alike.
NUCLEUS_COLOUR: RGB = (0, 255, 0)
LEGEND_BACKGROUND: RGB = (255, 255, 255)
LEGEND_TEXT: RGB = (0, 0, 0)
THICK_LINES_FROM = 1024  # images with a side of this many pixels or more get 2 px contours


def line_width(shape: tuple[int, int]) -> int:
    """Contour width in pixels: 1 on tiles, where 2 px would cover small nuclei; 2 on large images."""
    return 2 if max(shape) >= THICK_LINES_FROM else 1


def font_size(width: int) -> int:
    """Legend text height: readable on a 256 px tile, not oversized on a whole-slide region."""
    return int(np.clip(round(width / 24), 11, 36))


@lru_cache(maxsize=8)
def _font(size: int) -> Any:
    """Pillow's bundled font at ``size`` px (FreeType); its fixed bitmap font where FreeType is missing."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has no sized default font
        return ImageFont.load_default()


def _as_rgb(image: np.ndarray) -> np.ndarray:
    array = np.asarray(image)
    if array.dtype != np.uint8:
        raise ValueError(f"the overlay needs a uint8 image, got {array.dtype}")
    if array.ndim == 2:
        return np.repeat(array[..., None], 3, axis=-1)
    if array.ndim == 3 and array.shape[-1] in (3, 4):
        return np.ascontiguousarray(array[..., :3])
    raise ValueError(f"the overlay needs an H x W or H x W x 3 image, got shape {array.shape}")


def _colour_of(classes: OutputClasses, index: int) -> RGB:
    code = int(classes.codes[index])
    return NUCLEUS_COLOUR if code == NO_CLASS else classes.colours[code]


def _draw_nucleus(
    draw: ImageDraw.ImageDraw, contour: np.ndarray, centroid: np.ndarray, colour: RGB, width: int
) -> None:
    """Outline a nucleus along its contour (pixel centres are integer coordinates, as in Pillow)."""
    points = [(float(x), float(y)) for x, y in np.asarray(contour, dtype=np.float64).reshape(-1, 2)]
    if len(points) >= 3:
        draw.line([*points, points[0]], fill=colour, width=width, joint="curve" if width > 1 else None)
    elif len(points) == 2:
        draw.line(points, fill=colour, width=width)
    else:  # no contour: a dot at the centroid
        x, y = (float(v) for v in centroid)
        draw.rectangle([x - width, y - width, x + width, y + width], fill=colour)


def _draw_point(draw: ImageDraw.ImageDraw, centroid: np.ndarray, colour: RGB, radius: float) -> None:
    """A detector's point: a dot in the class colour with a dark rim (visible on pale and on brown tissue)."""
    x, y = (float(v) for v in centroid)
    draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=colour, outline=(20, 20, 20))


Entry = tuple[str, int, RGB | None]  # label, count, swatch colour (None: no swatch)


def legend_entries(classes: OutputClasses, total: int) -> list[Entry]:
    """The legend: all nuclei, then every class (zeros included) with its count and colour."""
    if classes.kind == "none":
        return [("Nuclei", total, NUCLEUS_COLOUR)]
    entries: list[Entry] = [("Nuclei", total, None)]
    for code, count in classes.counts().items():
        if code == NO_CLASS:
            entries.append((UNCLASSIFIED, count, NUCLEUS_COLOUR))
        else:
            entries.append((str(classes.name(code)), count, classes.colours[code]))
    return entries


def _layout(entries: list[Entry], width: int, size: int) -> list[tuple[int, int]]:
    """Top-left ``(x, y)`` of each entry, flowing left to right and wrapping at ``width``."""
    font = _font(size)
    pad, gap, x, y, placed = max(4, size // 2), max(6, size), max(4, size // 2), max(4, size // 2), []
    for label, count, swatch in entries:
        entry_width = _text_x(swatch, size) + int(
            np.ceil(font.getlength(label) + size / 3 + font.getlength(str(count)))
        )
        if x > pad and x + entry_width > width - pad:
            x, y = pad, y + size + pad
        placed.append((x, y))
        x += entry_width + gap
    return placed


def _text_x(swatch: RGB | None, size: int) -> int:
    return size + size // 3 if swatch is not None else 0


def render_legend(entries: list[Entry], width: int) -> np.ndarray:
    """The legend strip: ``H_legend x width x 3`` uint8, white, each entry a swatch, its label and its count.

    Label and count are drawn apart (a third of the text height between them): the bundled font's space is
    too narrow to separate them at small sizes.
    """
    size = font_size(width)
    placed = _layout(entries, width, size)
    pad = max(4, size // 2)
    height = max(y for _, y in placed) + size + pad
    strip = Image.new("RGB", (width, height), LEGEND_BACKGROUND)
    draw = ImageDraw.Draw(strip)
    font = _font(size)
    for (label, count, swatch), (x, y) in zip(entries, placed, strict=True):
        if swatch is not None:
            # A dark border keeps a yellow swatch visible on white.
            draw.rectangle([x, y, x + size - 1, y + size - 1], fill=swatch, outline=(64, 64, 64))
        text_x = x + _text_x(swatch, size)
        draw.text((text_x, y + size / 2), label, fill=LEGEND_TEXT, font=font, anchor="lm")
        count_x = text_x + font.getlength(label) + size / 3
        draw.text((count_x, y + size / 2), str(count), fill=LEGEND_TEXT, font=font, anchor="lm")
    return np.asarray(strip)


def render_overlay(image: np.ndarray, nuclei: Nuclei, *, width: int | None = None) -> np.ndarray:
    """The overlay: ``image`` with every contour (a detector's points: a dot) in its class colour, above the
    legend strip.

    ``image`` is the segmented image (uint8, ``H x W`` or ``H x W x 3``; alpha is dropped) and must have the
    nuclei's shape. ``width`` is the contour width in pixels (default :func:`line_width`). Without nuclei the
    image part is the input unchanged. Returns ``(H + legend) x W x 3`` uint8.
    """
    rgb = _as_rgb(image)
    if rgb.shape[:2] != nuclei.shape:
        raise ValueError(f"image {rgb.shape[:2]} and nuclei {nuclei.shape} have different sizes")
    classes = output_classes(nuclei)
    canvas = Image.fromarray(rgb)
    draw = ImageDraw.Draw(canvas)
    stroke = line_width(nuclei.shape) if width is None else width
    if nuclei.point_radius is not None:  # points: a dot of about half a nucleus radius, at least 2 px
        dot = max(2.0, 0.5 * nuclei.point_radius, float(stroke))
        for index in range(len(nuclei)):
            _draw_point(draw, nuclei.centroids[index], _colour_of(classes, index), dot)
    else:
        for index, contour in enumerate(nuclei.contours):
            _draw_nucleus(draw, contour, nuclei.centroids[index], _colour_of(classes, index), stroke)
    legend = render_legend(legend_entries(classes, len(nuclei)), rgb.shape[1])
    return np.vstack([np.asarray(canvas), legend])


__all__ = [
    "NUCLEUS_COLOUR",
    "font_size",
    "legend_entries",
    "line_width",
    "render_legend",
    "render_overlay",
]
