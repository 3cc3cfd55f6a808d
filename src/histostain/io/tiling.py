"""Tiling of images of any size for fixed-size models: tile plans, cutting and batching, seamless stitching.

Models (CycleGAN generators, HoVer-Net) work on fixed-size tiles; slides and large crops do not come in
multiples of that size. The engine here:

1. :func:`plan_tiles` lays a regular grid of *output* tiles over the image: ``stride = output_tile - overlap``,
   enough tiles to cover every pixel. The image is virtually reflect-padded (right/bottom, plus ``margin`` on
   every side) so each input tile is full size, even for images smaller than one tile.
2. :func:`iter_tiles` yields the input tiles (copies, so callers may modify them).
3. :class:`Stitcher` accumulates each tile output multiplied by a smooth weight window and divides by the
   summed weights at the end, then crops to the original size.

The window is separable: flat 1 in the interior with raised-cosine ramps of length ``overlap`` only on the
sides that have a neighbouring tile. Sides at the image border keep full weight (a ramp there would leave the
corners with almost no weight). Facing ramps of neighbours sum to exactly 1, so an identity model is
reproduced exactly and tile-to-tile differences fade in over ``overlap`` pixels instead of showing a seam.

``margin`` supports models whose output is a centre crop of their input (HoVer-Net: 256 in, 164 out,
margin 46): input tiles are ``tile`` pixels, output tiles ``tile - 2 * margin``, and the grid is laid out so
the *output* tiles cover the image; the input context around them comes from the image or its reflection.
Only output scale factor 1 is supported (output pixels correspond one to one with input pixels).

On top of the grid, :func:`plan_image` decides how a whole-image model (a CycleGAN generator) runs one image:
in one pass when it fits in a tile, else on the tile side (a multiple of 4 between ``tile / 2`` and ``tile``)
that computes the fewest pixels. :class:`TileBatcher` stacks tiles of equal size, also from consecutive
images, into one forward pass each, so small images do not leave the device idle.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from typing import Generic, TypeVar

import numpy as np
import numpy.typing as npt

from histostain.errors import ConfigError, InputError
from histostain.io.defaults import DEFAULT_BATCH_SIZE, DEFAULT_OVERLAP, DEFAULT_TILE

log = logging.getLogger(__name__)

WEIGHT_FLOOR = 1e-3  # keeps every pixel's accumulated weight positive even at the thin end of a ramp
MIN_SIDE = 16  # smallest generator input: the residual blocks reflect-pad a H/4 x W/4 map by 1
K = TypeVar("K")


@dataclass(frozen=True)
class TileGrid:
    """A grid of tiles covering an ``height x width`` image; build it with :func:`plan_tiles`.

    Origins ``(y, x)`` are the top-left corners of the *output* tiles in image coordinates; the matching input
    tile starts ``margin`` pixels further up and left (outside the image where needed: reflect padding).
    Tiles are numbered row by row.
    """

    height: int
    width: int
    tile: int
    overlap: int
    margin: int
    rows: int
    cols: int
    _index: dict[tuple[int, int], int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_index", {origin: i for i, origin in enumerate(self.origins)})

    @property
    def output_tile(self) -> int:
        """Side of the output tile: the input tile minus the margin on both sides."""
        return self.tile - 2 * self.margin

    @property
    def stride(self) -> int:
        """Distance between the origins of neighbouring tiles."""
        return self.output_tile - self.overlap

    @property
    def padded_height(self) -> int:
        """Height covered by the output tiles (>= ``height``; the excess is cropped after stitching)."""
        return (self.rows - 1) * self.stride + self.output_tile

    @property
    def padded_width(self) -> int:
        """Width covered by the output tiles (>= ``width``)."""
        return (self.cols - 1) * self.stride + self.output_tile

    @cached_property
    def origins(self) -> tuple[tuple[int, int], ...]:
        """Output-tile origins ``(y, x)``, row-major."""
        return tuple((r * self.stride, c * self.stride) for r in range(self.rows) for c in range(self.cols))

    def __len__(self) -> int:
        return self.rows * self.cols

    def index_of(self, origin: tuple[int, int]) -> int:
        """Tile number of an origin returned by :func:`iter_tiles` (KeyError if it is not on the grid)."""
        return self._index[(int(origin[0]), int(origin[1]))]


def _count(size: int, output_tile: int, stride: int) -> int:
    """Tiles needed along one axis: one, plus enough strides for the last tile to reach the far edge.

    Integer ceiling division, so the count is exact for any size (no float rounding).
    """
    if size <= output_tile:
        return 1
    return 1 + -(-(size - output_tile) // stride)


def plan_tiles(height: int, width: int, tile: int, overlap: int = 0, margin: int = 0) -> TileGrid:
    """Plan tiles of side ``tile`` with ``overlap`` pixels shared by neighbours (``margin``: see module doc).

    Raises :class:`ConfigError` for impossible tile settings (they come from user options) and ValueError for
    an empty image.
    """
    if height < 1 or width < 1:
        raise ValueError(f"cannot tile an empty image of size {height} x {width}")
    if tile < 1:
        raise ConfigError(f"tile size must be positive, got {tile}")
    if margin < 0 or tile - 2 * margin < 1:
        raise ConfigError(
            f"margin {margin} does not fit tile {tile}", hint="the margin must satisfy 0 <= 2 * margin < tile"
        )
    output_tile = tile - 2 * margin
    if not 0 <= overlap < output_tile:
        raise ConfigError(
            f"overlap {overlap} must be >= 0 and smaller than the output tile ({output_tile} pixels)",
            hint="an overlap of 1/8 to 1/2 of the tile works well",
        )
    stride = output_tile - overlap
    return TileGrid(
        height=height,
        width=width,
        tile=tile,
        overlap=overlap,
        margin=margin,
        rows=_count(height, output_tile, stride),
        cols=_count(width, output_tile, stride),
    )


# ------------------------------------------------------------------------------------ whole-image plans


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


@dataclass(frozen=True)
class TilePlan:
    """How one image is run: whole (``grid is None``, padded to ``padded``) or as a tile grid."""

    height: int
    width: int
    padded: tuple[int, int]  # network input size of the whole-image pass (or the tile size)
    grid: TileGrid | None

    @property
    def tiles(self) -> int:
        return 1 if self.grid is None else len(self.grid)

    @property
    def computed_pixels(self) -> int:
        """Pixels the network computes for this image (tiles x tile area)."""
        return self.tiles * self.padded[0] * self.padded[1]

    @property
    def overhead(self) -> float:
        """Extra computed pixels per output pixel (0.0 = none recomputed)."""
        return self.computed_pixels / (self.height * self.width) - 1.0


def plan_image(height: int, width: int, tile: int = DEFAULT_TILE, overlap: int = DEFAULT_OVERLAP) -> TilePlan:
    """Choose the whole-image pass or the tile side (multiple of 4, <= ``tile``) computing the fewest pixels.

    Multiples of 4 because a CycleGAN generator's two stride-2 stages need them (the reference otherwise
    changes the size); the side is fitted per image because a fixed 512 grid over a 1000 x 700 image computes
    125 % extra pixels where 384-pixel tiles compute 26 %.
    """
    if height < 1 or width < 1:
        raise InputError(f"cannot process an empty image of size {height} x {width}")
    tile = (tile // 4) * 4
    if tile < MIN_SIDE:
        raise ConfigError(f"tile must be at least {MIN_SIDE} pixels, got {tile}")
    largest = tile // 2 - 2  # a fitted side >= 2 * overlap + 4 must exist, so ramps never cross a whole tile
    if not 0 <= overlap <= largest:
        raise ConfigError(
            f"overlap {overlap} must be >= 0 and at most {largest} for tile {tile} (less than half the tile)",
            hint=f"the default is {DEFAULT_OVERLAP} of {DEFAULT_TILE}",
        )
    ph, pw = max(_round_up(height, 4), MIN_SIDE), max(_round_up(width, 4), MIN_SIDE)
    if ph <= tile and pw <= tile:
        return TilePlan(height, width, (ph, pw), None)
    lowest = max(MIN_SIDE, _round_up(2 * overlap + 4, 4), _round_up(tile // 2, 4))

    def cost(side: int) -> tuple[int, int]:  # (computed pixels, -side): fewest pixels, then the larger tile
        stride = side - overlap
        return _count(height, side, stride) * _count(width, side, stride) * side * side, -side

    side = min(range(tile, lowest - 1, -4), key=cost)
    return TilePlan(height, width, (side, side), plan_tiles(height, width, side, overlap))


class TileBatcher(Generic[K]):
    """Stack tiles of equal shape, also from consecutive images, into one forward pass each.

    ``forward(N x H x W x C) -> N x ...`` runs the model; every output goes back to
    ``deliver(owner, index, output)`` with the owner and tile index it was added with, in the order added. A
    batch is run when it holds ``batch_size`` tiles, when a tile of another shape arrives (they cannot be
    stacked) and on :meth:`flush` (call it after the last tile). Why across images: a folder of 256-pixel tiles
    is one tile per image, and one image at a time would leave a GPU mostly idle.
    """

    def __init__(
        self,
        forward: Callable[[np.ndarray], np.ndarray],
        batch_size: int = DEFAULT_BATCH_SIZE,
        deliver: Callable[[K, int, np.ndarray], None] | None = None,
    ) -> None:
        if batch_size < 1:
            raise ConfigError(f"batch size must be at least 1, got {batch_size}")
        self.forward = forward
        self.batch_size = batch_size
        self.deliver = deliver
        self._pending: list[tuple[K, int, np.ndarray]] = []

    def add(self, owner: K, index: int, tile: np.ndarray) -> None:
        """Queue one tile; runs the queued batch first if ``tile`` has another shape, and after it if full."""
        if self._pending and self._pending[0][2].shape != tile.shape:
            self.flush()
        self._pending.append((owner, index, tile))
        if len(self._pending) >= self.batch_size:
            self.flush()

    def flush(self) -> None:
        """Run the queued tiles (if any) and deliver their outputs."""
        if not self._pending:
            return
        batch, self._pending = self._pending, []
        outputs = self.forward(np.stack([tile for _, _, tile in batch]))
        if self.deliver is None:
            return
        for (owner, index, _), output in zip(batch, outputs, strict=True):
            self.deliver(owner, index, output)


# ----------------------------------------------------------------------------------------------- cutting


def reflect_indices(start: int, length: int, size: int) -> np.ndarray:
    """Indices ``start .. start+length-1`` folded into ``[0, size)`` by repeated reflection (edge not repeated).

    The same values as ``np.pad(..., mode="reflect")`` for pads of any length (also longer than the axis, and
    a single-pixel axis simply repeats that pixel), but as an index map, so one tile can be cut without
    materialising the padded image.
    """
    positions = np.arange(start, start + length)
    if size == 1:
        return np.zeros(length, dtype=np.intp)
    period = 2 * (size - 1)
    folded = np.mod(positions, period)
    return np.where(folded < size, folded, period - folded).astype(np.intp)


def extract_region(image: np.ndarray, y: int, x: int, height: int, width: int) -> np.ndarray:
    """A ``height x width`` window of ``image`` at ``(y, x)``, reflect-padded where it leaves the image (a copy)."""
    rows, cols = image.shape[0], image.shape[1]
    if y >= 0 and x >= 0 and y + height <= rows and x + width <= cols:
        return image[y : y + height, x : x + width].copy()
    return image[np.ix_(reflect_indices(y, height, rows), reflect_indices(x, width, cols))]


def pad_to_grid(image: np.ndarray, grid: TileGrid) -> np.ndarray:
    """The whole reflect-padded image the tiles are cut from (``margin`` around, right/bottom filler)."""
    _check_image(image, grid)
    return extract_region(
        image, -grid.margin, -grid.margin, grid.padded_height + 2 * grid.margin, grid.padded_width + 2 * grid.margin
    )


def _check_image(image: np.ndarray, grid: TileGrid) -> None:
    if image.ndim not in (2, 3) or image.shape[:2] != (grid.height, grid.width):
        raise ValueError(
            f"image of shape {image.shape} does not match the tile grid for {grid.height} x {grid.width} "
            "(expected H x W or H x W x C)"
        )


def iter_tiles(image: np.ndarray, grid: TileGrid) -> Iterator[tuple[int, int, int, np.ndarray]]:
    """Yield ``(index, y, x, tile)`` for every tile: ``tile`` is ``tile x tile (x C)`` with the image dtype.

    ``(y, x)`` is the output origin in image coordinates (pass it or ``index`` to :meth:`Stitcher.add`). Tiles
    are cut lazily, so the padded image is never held in memory.
    """
    _check_image(image, grid)
    for index, (y, x) in enumerate(grid.origins):
        yield index, y, x, extract_region(image, y - grid.margin, x - grid.margin, grid.tile, grid.tile)


def _ramp(length: int) -> np.ndarray:
    """Raised-cosine ramp sampled at pixel centres; ``ramp[i] + ramp[length - 1 - i] == 1`` exactly in theory."""
    i = np.arange(length, dtype=np.float64)
    return 0.5 - 0.5 * np.cos(np.pi * (i + 0.5) / length)


def window_1d(size: int, ramp: int, ramp_start: bool, ramp_end: bool) -> np.ndarray:
    """Weights along one axis: 1 inside, a ramp of length ``ramp`` on the requested ends, floored above 0."""
    weights = np.ones(size, dtype=np.float64)
    if ramp > 0:
        up = _ramp(ramp)
        if ramp_start:
            weights[:ramp] *= up
        if ramp_end:
            weights[size - ramp :] *= up[::-1]
    return np.maximum(weights, WEIGHT_FLOOR)


class Stitcher:
    """Blend per-tile outputs back into one ``H x W (x C)`` float image.

    ``channels=None`` means 2-D outputs (``out x out``); otherwise outputs are ``out x out x channels``. An
    output may also be given at the full input-tile size, in which case its centre (without ``margin``) is
    used. Memory: one float canvas of the padded image size plus one weight plane.
    """

    def __init__(self, grid: TileGrid, channels: int | None = None, dtype: npt.DTypeLike = np.float32) -> None:
        if channels is not None and channels < 1:
            raise ValueError(f"channels must be positive or None, got {channels}")
        self.grid = grid
        self.channels = channels
        self.dtype = np.dtype(dtype)
        if self.dtype.kind != "f":
            raise ValueError(f"the stitching canvas must be floating point, got {self.dtype}")
        shape: tuple[int, ...] = (grid.padded_height, grid.padded_width)
        self._canvas = np.zeros(shape if channels is None else (*shape, channels), dtype=self.dtype)
        self._weight = np.zeros(shape, dtype=self.dtype)
        self._added = np.zeros(len(grid), dtype=bool)
        self._windows: dict[tuple[bool, bool, bool, bool], np.ndarray] = {}

    def _window(self, row: int, col: int) -> np.ndarray:
        """The 2-D weight window of a tile; ramps only where a neighbouring tile overlaps it."""
        grid = self.grid
        key = (row > 0, row < grid.rows - 1, col > 0, col < grid.cols - 1)
        window = self._windows.get(key)
        if window is None:
            wy = window_1d(grid.output_tile, grid.overlap, key[0], key[1])
            wx = window_1d(grid.output_tile, grid.overlap, key[2], key[3])
            window = np.outer(wy, wx).astype(self.dtype)
            self._windows[key] = window
        return window

    def add(self, index_or_origin: int | tuple[int, int], tile_output: np.ndarray) -> None:
        """Accumulate one tile's output (its weights are applied here)."""
        grid = self.grid
        index = grid.index_of(index_or_origin) if isinstance(index_or_origin, tuple) else int(index_or_origin)
        if not 0 <= index < len(grid):
            raise IndexError(f"tile index {index} outside the grid of {len(grid)} tiles")
        output = np.asarray(tile_output)
        expected_ndim = 2 if self.channels is None else 3
        if output.ndim != expected_ndim or (self.channels is not None and output.shape[2] != self.channels):
            raise ValueError(
                f"tile output of shape {output.shape} does not match channels={self.channels} of this stitcher"
            )
        side = grid.output_tile
        if output.shape[:2] == (grid.tile, grid.tile) and grid.margin:
            output = output[grid.margin : grid.margin + side, grid.margin : grid.margin + side]
        if output.shape[:2] != (side, side):
            raise ValueError(
                f"tile output of size {output.shape[:2]} must be {side} x {side} "
                f"(or the full input size {grid.tile} x {grid.tile})"
            )
        y, x = grid.origins[index]
        window = self._window(index // grid.cols, index % grid.cols)
        weighted = output * (window if self.channels is None else window[..., None])
        self._canvas[y : y + side, x : x + side] += weighted
        self._weight[y : y + side, x : x + side] += window
        self._added[index] = True

    @property
    def complete(self) -> bool:
        """Whether every tile of the grid has been added."""
        return bool(self._added.all())

    @property
    def weight(self) -> np.ndarray:
        """Accumulated blending weight per image pixel (``height x width``): about 1 everywhere once complete."""
        return self._weight[: self.grid.height, : self.grid.width]

    def result(self) -> np.ndarray:
        """The blended image cropped to ``height x width``; every tile must have been added."""
        missing = int((~self._added).sum())
        if missing:
            raise RuntimeError(f"{missing} of {len(self.grid)} tiles were never added to the stitcher")
        weight = self.weight
        canvas = self._canvas[: self.grid.height, : self.grid.width]
        return canvas / (weight if self.channels is None else weight[..., None])


__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_OVERLAP",
    "DEFAULT_TILE",
    "MIN_SIDE",
    "WEIGHT_FLOOR",
    "Stitcher",
    "TileBatcher",
    "TileGrid",
    "TilePlan",
    "extract_region",
    "iter_tiles",
    "pad_to_grid",
    "plan_image",
    "plan_tiles",
    "reflect_indices",
    "window_1d",
]
