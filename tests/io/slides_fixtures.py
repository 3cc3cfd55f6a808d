"""Synthetic whole-slide files written with tifffile, so slide tests need no download.

The mosaic is a grid of ``synth`` H&E tiles with a few cells left as glass (near-white with faint noise), so
tissue detection has a known answer. Writers follow the layouts real scanners produce (see
``../shared/reference/segment_outputs.md`` section 5 for the Aperio recipe that OpenSlide, tiffslide and
tifffile all accept).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import tifffile

from histostain.synth import generate_tile
from histostain.synth.constants import GLASS as SYNTH_GLASS

CELL = 256
ROWS, COLS = 6, 8  # 1536 x 2048 px
# Glass cells: a corner block, a strip on the right edge, and one cell enclosed by tissue.
GLASS: frozenset[tuple[int, int]] = frozenset({(0, 0), (0, 1), (1, 0), (2, 7), (3, 7), (4, 7), (5, 7), (3, 3)})
MPP = 0.25
APERIO_HEAD = "Aperio Image Library v12.0.0 \n"


@functools.cache
def _build(rows: int, cols: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    mosaic = np.empty((rows * CELL, cols * CELL, 3), dtype=np.uint8)
    truth = np.zeros(mosaic.shape[:2], dtype=bool)
    layout = np.ones((rows, cols), dtype=bool)
    rng = np.random.default_rng(15)
    for r in range(rows):
        for c in range(cols):
            cell = (slice(r * CELL, (r + 1) * CELL), slice(c * CELL, (c + 1) * CELL))
            if (r, c) in GLASS:  # real glass is faintly tinted and noisy, never pure grey
                layout[r, c] = False
                mosaic[cell] = np.clip(rng.normal((238, 236, 241), 2, size=(CELL, CELL, 3)), 0, 255).astype(np.uint8)
            else:
                tile = generate_tile(100 + r * cols + c, CELL)
                mosaic[cell] = tile.he
                truth[cell] = tile.compartments != SYNTH_GLASS
    for array in (mosaic, layout, truth):
        array.flags.writeable = False
    return mosaic, layout, truth


def make_mosaic(rows: int = ROWS, cols: int = COLS) -> tuple[np.ndarray, np.ndarray]:
    """The mosaic (read-only uint8 RGB) and its layout (``rows x cols`` bool, True = tissue cell)."""
    mosaic, layout, _ = _build(rows, cols)
    return mosaic, layout


def mosaic_truth(rows: int = ROWS, cols: int = COLS) -> np.ndarray:
    """Per-pixel ground truth of the mosaic: True where ``synth`` drew tissue (lumens included)."""
    return _build(rows, cols)[2]


def downscale(image: np.ndarray, factor: int) -> np.ndarray:
    """Area-average downscale by an integer factor, as the writers store the lower levels."""
    h, w = image.shape[:2]
    return cv2.resize(np.ascontiguousarray(image), (w // factor, h // factor), interpolation=cv2.INTER_AREA)


def write_svs(path: Path, mosaic: np.ndarray, *, mpp: float | None = MPP, quality: int = 90) -> Path:
    """Aperio-style SVS: tiled JPEG level 0, stripped thumbnail, tiled levels 1/4 and 1/16, label and macro."""
    h, w = mosaic.shape[:2]
    fields = "|AppMag = 40" + (f"|MPP = {mpp}" if mpp is not None else "")
    head = f"{APERIO_HEAD}{w}x{h} [0,0 {w}x{h}] (256x256) JPEG/RGB Q={quality}"
    jpeg = {"photometric": "rgb", "compression": "jpeg", "compressionargs": {"level": quality}, "metadata": None}
    with tifffile.TiffWriter(path) as tw:
        tw.write(mosaic, tile=(256, 256), description=head + fields, **jpeg)
        thumb = downscale(mosaic, 8)
        tw.write(thumb, description=f"{APERIO_HEAD}{w}x{h} -> {thumb.shape[1]}x{thumb.shape[0]} - {fields}", **jpeg)
        for factor in (4, 16):
            level = downscale(mosaic, factor)
            desc = f"{head} -> {level.shape[1]}x{level.shape[0]}{fields}"
            tw.write(level, tile=(256, 256), description=desc, **jpeg)
        label = np.full((96, 96, 3), 200, dtype=np.uint8)
        tw.write(
            label,
            photometric="rgb",
            compression="lzw",
            subfiletype=1,
            description=f"{APERIO_HEAD}label 96x96",
            metadata=None,
        )
        macro = downscale(mosaic, 16)
        tw.write(macro, subfiletype=9, description=f"{APERIO_HEAD}macro 128x96", **jpeg)
    return path


def write_ome_tiff(path: Path, mosaic: np.ndarray, *, mpp: float = MPP) -> Path:
    """OME-TIFF with a SubIFD pyramid (1, 1/4, 1/16), tiled and zlib-compressed so pixels compare exactly."""
    opts = {"photometric": "rgb", "tile": (256, 256), "compression": "zlib"}
    with tifffile.TiffWriter(path, ome=True) as tw:
        metadata = {
            "axes": "YXS",
            "PhysicalSizeX": mpp,
            "PhysicalSizeY": mpp,
            "PhysicalSizeXUnit": "µm",
            "PhysicalSizeYUnit": "µm",
        }
        tw.write(mosaic, subifds=2, metadata=metadata, **opts)
        for factor in (4, 16):
            tw.write(downscale(mosaic, factor), subfiletype=1, **opts)
    return path


def write_pyramid_tiff(path: Path, mosaic: np.ndarray, *, mpp: float = MPP) -> Path:
    """Generic pyramidal TIFF: reduced-resolution pages (subfiletype 1), pixel size in the resolution tags."""
    opts = {
        "photometric": "rgb",
        "tile": (256, 256),
        "compression": "zlib",
        "metadata": None,
        "resolutionunit": "CENTIMETER",
    }
    with tifffile.TiffWriter(path) as tw:
        tw.write(mosaic, resolution=(1e4 / mpp, 1e4 / mpp), **opts)
        for factor in (4, 16):
            res = 1e4 / (mpp * factor)
            tw.write(downscale(mosaic, factor), subfiletype=1, resolution=(res, res), **opts)
    return path


def large_tile(index: int) -> np.ndarray:
    """Tile ``index`` of the large slide: the mosaic's cells in turn, so the expected pixels are known."""
    mosaic, _ = make_mosaic()
    r, c = divmod(index % (ROWS * COLS), COLS)
    return mosaic[r * CELL : (r + 1) * CELL, c * CELL : (c + 1) * CELL]


def write_large_tiff(path: Path, side: int = 8192) -> Path:
    """A ``side x side`` single-level tiled JPEG TIFF written tile by tile (never whole in memory)."""
    per_row = side // CELL

    def tiles() -> Iterator[np.ndarray]:
        for index in range(per_row * per_row):
            yield large_tile(index)

    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        tw.write(
            tiles(),
            shape=(side, side, 3),
            dtype=np.uint8,
            tile=(CELL, CELL),
            photometric="rgb",
            compression="jpeg",
            compressionargs={"level": 85},
            metadata=None,
        )
    return path


def large_expected(x: int, y: int, width: int, height: int, side: int = 8192) -> np.ndarray:
    """The pixels :func:`write_large_tiff` encoded in a rectangle (before JPEG), built from the tiles touched."""
    per_row = side // CELL
    out = np.empty((height, width, 3), dtype=np.uint8)
    for r in range(y // CELL, (y + height - 1) // CELL + 1):
        for c in range(x // CELL, (x + width - 1) // CELL + 1):
            tile = large_tile(r * per_row + c)
            y0, x0 = max(y, r * CELL), max(x, c * CELL)
            y1, x1 = min(y + height, (r + 1) * CELL), min(x + width, (c + 1) * CELL)
            out[y0 - y : y1 - y, x0 - x : x1 - x] = tile[y0 - r * CELL : y1 - r * CELL, x0 - c * CELL : x1 - c * CELL]
    return out
