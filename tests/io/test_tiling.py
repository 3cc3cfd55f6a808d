"""Tests for histostain.io.tiling: grid planning, whole-image plans, tile batching, reflect padding, stitching."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest

from histostain.errors import ConfigError, InputError
from histostain.io.tiling import (
    MIN_SIDE,
    Stitcher,
    TileBatcher,
    iter_tiles,
    pad_to_grid,
    plan_image,
    plan_tiles,
    reflect_indices,
    window_1d,
)

SIZES = [(3, 5), (64, 64), (100, 173), (300, 257)]


def _stitch(
    image: np.ndarray,
    tile: int,
    overlap: int,
    margin: int = 0,
    model: Callable[[int, np.ndarray], np.ndarray] | None = None,
) -> np.ndarray:
    """Run ``model(index, tile) -> output`` over the tiles (identity by default) and stitch the outputs."""
    grid = plan_tiles(image.shape[0], image.shape[1], tile, overlap, margin)
    channels = None if image.ndim == 2 else image.shape[2]
    stitcher = Stitcher(grid, channels)
    for index, y, x, tile_array in iter_tiles(image, grid):
        output = tile_array.astype(np.float32) if model is None else model(index, tile_array)
        stitcher.add((y, x) if index % 2 else index, output)  # both addressing forms
    return stitcher.result()


# ------------------------------------------------------------------------------------------------- planning


@pytest.mark.parametrize(
    ("height", "width", "tile", "overlap", "rows", "cols"),
    [
        # stride 48: rows 1 + ceil((100 - 64) / 48) = 2; cols 1 + ceil((173 - 64) / 48) = 1 + ceil(2.27) = 4
        (100, 173, 64, 16, 2, 4),
        # stride 32: rows 1 + ceil(236 / 32) = 1 + 8 = 9; cols 1 + ceil(193 / 32) = 1 + 7 = 8
        (300, 257, 64, 32, 9, 8),
        # exact fit without overlap: 128 = 2 * 64
        (128, 64, 64, 0, 2, 1),
        # one pixel more needs a third row of tiles
        (129, 65, 64, 0, 3, 2),
        # smaller than a tile: a single tile
        (3, 5, 64, 32, 1, 1),
    ],
)
def test_tile_count_matches_hand_computation(
    height: int, width: int, tile: int, overlap: int, rows: int, cols: int
) -> None:
    grid = plan_tiles(height, width, tile, overlap)
    assert (grid.rows, grid.cols, len(grid)) == (rows, cols, rows * cols)
    assert grid.stride == tile - overlap
    assert len(set(grid.origins)) == len(grid)


@pytest.mark.parametrize("seed", range(5))
def test_every_pixel_covered_with_no_wasted_tiles(seed: int) -> None:
    rng = np.random.default_rng(seed)
    for _ in range(20):
        height, width = (int(v) for v in rng.integers(1, 400, size=2))
        tile = int(rng.integers(8, 96))
        margin = int(rng.integers(0, (tile - 1) // 2 + 1)) if rng.random() < 0.5 else 0
        out = tile - 2 * margin
        overlap = int(rng.integers(0, out))
        grid = plan_tiles(height, width, tile, overlap, margin)
        coverage = np.zeros((grid.padded_height, grid.padded_width), np.int32)
        for y, x in grid.origins:
            coverage[y : y + out, x : x + out] += 1
        assert coverage[:height, :width].min() >= 1
        assert coverage.min() >= 1  # the padded canvas is exactly the union of the tiles
        # minimality: one row / column fewer would not reach the far edge
        if grid.rows > 1:
            assert (grid.rows - 2) * grid.stride + out < height
        if grid.cols > 1:
            assert (grid.cols - 2) * grid.stride + out < width


@pytest.mark.parametrize(("tile", "overlap", "margin"), [(64, 64, 0), (64, 70, 0), (64, -1, 0), (0, 0, 0), (64, 0, 32)])
def test_invalid_settings_are_config_errors(tile: int, overlap: int, margin: int) -> None:
    with pytest.raises(ConfigError):
        plan_tiles(100, 100, tile, overlap, margin)


def test_overlap_bounded_by_output_tile_in_margin_mode() -> None:
    plan_tiles(100, 100, 64, 43, margin=10)  # output tile 44
    with pytest.raises(ConfigError, match="44"):
        plan_tiles(100, 100, 64, 44, margin=10)


# ------------------------------------------------------------------------------------ whole-image plans


def test_plan_keeps_overlap_overhead_low_and_tiles_legal() -> None:
    whole = plan_image(256, 256)
    assert whole.grid is None and whole.overhead == 0.0
    big = plan_image(2048, 2048)
    assert big.grid is not None and big.padded[0] <= 512 and big.padded[0] % 4 == 0 and big.grid.overlap == 64
    # naive grid of 512 tiles at stride 448 would compute 25 * 512^2 = 56% extra; the fitted tile far less
    assert big.overhead < 0.30
    assert plan_image(1000, 700).overhead < 0.30
    assert plan_image(30, 10).padded == (32, 16)
    # the figures docs/commands/translate.md quotes
    assert (big.tiles, big.padded[0]) == (25, 464)
    assert (plan_image(1000, 700).tiles, plan_image(1000, 700).padded[0]) == (6, 384)
    assert (plan_image(768, 768).tiles, plan_image(768, 768).padded[0]) == (4, 416)


def _tiles_along(size: int, side: int, overlap: int) -> int:
    n = 1
    while (n - 1) * (side - overlap) + side < size:
        n += 1
    return n


@pytest.mark.parametrize("seed", range(3))
def test_plan_picks_the_cheapest_legal_side(seed: int) -> None:
    """Brute force over every side by covering each axis tile by tile (no shared counting code)."""
    rng = np.random.default_rng(seed)
    for _ in range(15):
        height, width = (int(v) for v in rng.integers(100, 3000, size=2))
        tile, overlap = int(rng.choice([128, 256, 512])), int(rng.choice([0, 8, 32]))
        plan = plan_image(height, width, tile, overlap)

        sides = [s for s in range(MIN_SIDE, tile + 1, 4) if s >= tile // 2 and s >= 2 * overlap + 4]
        costs = {s: _tiles_along(height, s, overlap) * _tiles_along(width, s, overlap) * s * s for s in sides}
        if max(height, width) <= tile:
            assert plan.grid is None
            continue
        assert plan.grid is not None and plan.computed_pixels == min(costs.values())
        assert plan.padded[0] == max(s for s, c in costs.items() if c == min(costs.values()))  # ties: larger


def test_plan_rejects_impossible_settings_and_empty_images() -> None:
    with pytest.raises(ConfigError):
        plan_image(100, 100, tile=128, overlap=64)
    with pytest.raises(ConfigError):
        plan_image(100, 100, tile=8)
    with pytest.raises(ConfigError, match="at most 62"):
        plan_image(1000, 1000, tile=128, overlap=63)  # used to end in a bare AssertionError
    assert plan_image(1000, 1000, tile=128, overlap=62).grid is not None
    with pytest.raises(InputError):
        plan_image(0, 10)


def test_batcher_stacks_equal_shapes_across_owners_in_order() -> None:
    shapes: list[tuple[int, ...]] = []
    delivered: list[tuple[str, int, np.ndarray]] = []

    def forward(batch: np.ndarray) -> np.ndarray:
        shapes.append(batch.shape)
        return batch * 2

    batcher: TileBatcher[str] = TileBatcher(forward, 3, lambda o, i, out: delivered.append((o, i, out)))
    rng = np.random.default_rng(0)
    added = [("A", 0, 8), ("A", 1, 8), ("A", 2, 8), ("B", 0, 8), ("C", 0, 12), ("C", 1, 12), ("D", 0, 8)]
    tiles = {(o, i): rng.integers(0, 100, (s, s, 3)) for o, i, s in added}
    for owner, index, _ in added:
        batcher.add(owner, index, tiles[(owner, index)])
    assert shapes == [(3, 8, 8, 3), (1, 8, 8, 3), (2, 12, 12, 3)]  # full; shape change; shape change
    batcher.flush()
    assert shapes[-1] == (1, 8, 8, 3)
    assert [(o, i) for o, i, _ in delivered] == [(o, i) for o, i, _ in added]
    for owner, index, output in delivered:
        np.testing.assert_array_equal(output, tiles[(owner, index)] * 2)
    batcher.flush()  # nothing pending: no empty forward
    assert len(shapes) == 4
    with pytest.raises(ConfigError):
        TileBatcher(forward, 0)


# ---------------------------------------------------------------------------------------------- padding


def test_reflect_indices_match_numpy_reflect_padding() -> None:
    for size in (1, 2, 3, 5, 17):
        for before, after in ((0, 0), (2, 3), (5, 61), (40, 0)):
            expected = np.pad(np.arange(size), (before, after), mode="reflect")
            np.testing.assert_array_equal(reflect_indices(-before, size + before + after, size), expected)


def test_tiny_image_in_big_tile_is_reflected() -> None:
    image = np.arange(15, dtype=np.uint8).reshape(3, 5) * 10
    grid = plan_tiles(3, 5, 64, 16)
    tiles = list(iter_tiles(image, grid))
    assert len(tiles) == 1
    _, y, x, tile = tiles[0]
    assert (y, x) == (0, 0) and tile.shape == (64, 64)
    rows = [0, 1, 2, 1]  # by hand: reflection without repeating the edge has period 2 * (n - 1)
    cols = [0, 1, 2, 3, 4, 3, 2, 1]
    expected = image[np.ix_([rows[i % 4] for i in range(64)], [cols[j % 8] for j in range(64)])]
    np.testing.assert_array_equal(tile, expected)


def test_tiles_are_cut_from_the_padded_image() -> None:
    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, size=(70, 90, 3), dtype=np.uint8)
    grid = plan_tiles(70, 90, 32, 8, margin=4)
    padded = pad_to_grid(image, grid)
    m = grid.margin
    np.testing.assert_array_equal(
        padded,
        np.pad(
            image,
            ((m, grid.padded_height - 70 + m), (m, grid.padded_width - 90 + m), (0, 0)),
            mode="reflect",
        ),
    )
    for _, y, x, tile in iter_tiles(image, grid):
        assert tile.dtype == image.dtype and tile.shape == (32, 32, 3)
        np.testing.assert_array_equal(tile, padded[y : y + 32, x : x + 32])


def test_tiles_are_independent_copies() -> None:
    image = np.zeros((100, 100), np.float32)
    grid = plan_tiles(100, 100, 64, 16)
    for _, _, _, tile in iter_tiles(image, grid):
        tile += 1
    assert not image.any()


# ------------------------------------------------------------------------------------------------ weights


def test_window_ramps_are_complementary_and_positive() -> None:
    for ramp in (1, 2, 16, 32):
        left = window_1d(64, ramp, ramp_start=False, ramp_end=True)
        right = window_1d(64, ramp, ramp_start=True, ramp_end=False)
        stride = 64 - ramp
        # in the shared strip the two neighbours' weights sum to 1 (up to the tiny floor)
        np.testing.assert_allclose(left[stride:] + right[:ramp], 1.0, atol=2e-3)
        assert left.min() > 0 and right.min() > 0
    border = window_1d(64, 16, ramp_start=False, ramp_end=False)
    np.testing.assert_array_equal(border, 1.0)  # edges at the image border keep full weight


@pytest.mark.parametrize(("height", "width", "overlap"), [(300, 257, 32), (100, 173, 16), (64, 64, 0), (3, 5, 16)])
def test_accumulated_weight_is_one_everywhere_including_corners(height: int, width: int, overlap: int) -> None:
    """Neighbours' ramps are complementary and border edges are not ramped, so weights form a partition of 1."""
    grid = plan_tiles(height, width, 64, overlap)
    stitcher = Stitcher(grid)
    for index in range(len(grid)):
        stitcher.add(index, np.zeros((64, 64), np.float32))
    assert stitcher.complete
    np.testing.assert_allclose(stitcher.weight, 1.0, atol=2e-3)
    for corner in [(0, 0), (0, width - 1), (height - 1, 0), (height - 1, width - 1)]:
        assert stitcher.weight[corner] == pytest.approx(1.0)


# ----------------------------------------------------------------------------------------------- stitching


@pytest.mark.parametrize("overlap", [0, 16, 32])
@pytest.mark.parametrize(("height", "width"), SIZES)
def test_identity_model_is_reproduced(height: int, width: int, overlap: int) -> None:
    rng = np.random.default_rng(height * 1000 + width)
    image = rng.random((height, width, 3)).astype(np.float32)
    result = _stitch(image, 64, overlap)
    assert result.shape == image.shape and result.dtype == np.float32
    np.testing.assert_allclose(result, image, atol=1e-5, rtol=0)


def test_identity_on_2d_and_many_channels() -> None:
    rng = np.random.default_rng(5)
    gray = rng.random((90, 70)).astype(np.float32)
    np.testing.assert_allclose(_stitch(gray, 32, 8), gray, atol=1e-5, rtol=0)
    stack = rng.random((50, 41, 7)).astype(np.float32)
    np.testing.assert_allclose(_stitch(stack, 16, 4), stack, atol=1e-5, rtol=0)


@pytest.mark.parametrize(("height", "width"), SIZES)
@pytest.mark.parametrize(("tile", "margin", "overlap"), [(64, 10, 0), (64, 10, 12), (64, 16, 16), (48, 20, 1)])
def test_centre_crop_model_is_reproduced(height: int, width: int, tile: int, margin: int, overlap: int) -> None:
    """A HoVer-Net-like model: input tile -> its centre (tile - 2 * margin), here the identity on the centre."""
    rng = np.random.default_rng(11)
    image = rng.random((height, width, 2)).astype(np.float32)
    out = tile - 2 * margin

    def centre(_index: int, tile_array: np.ndarray) -> np.ndarray:
        assert tile_array.shape[:2] == (tile, tile)
        return tile_array[margin : margin + out, margin : margin + out].astype(np.float32)

    np.testing.assert_allclose(_stitch(image, tile, overlap, margin, centre), image, atol=1e-5, rtol=0)
    # a model returning the full input size has its centre used automatically
    full = _stitch(image, tile, overlap, margin, lambda _i, t: t.astype(np.float32))
    np.testing.assert_allclose(full, image, atol=1e-5, rtol=0)


def test_margin_context_comes_from_the_real_neighbourhood() -> None:
    image = np.arange(200 * 200, dtype=np.float32).reshape(200, 200)
    grid = plan_tiles(200, 200, 64, 8, margin=10)
    for _, y, x, tile in iter_tiles(image, grid):
        if y >= 10 and x >= 10 and y - 10 + 64 <= 200 and x - 10 + 64 <= 200:
            np.testing.assert_array_equal(tile, image[y - 10 : y + 54, x - 10 : x + 54])


def _max_adjacent_jump(values: np.ndarray) -> float:
    return float(max(np.abs(np.diff(values, axis=0)).max(), np.abs(np.diff(values, axis=1)).max()))


@pytest.mark.parametrize("overlap", [8, 16, 32])
def test_per_tile_offsets_leave_no_seam(overlap: int) -> None:
    """Each tile adds its own constant. Blended, neighbouring pixels differ by at most ``dc * sin(pi / 2L)``.

    Why: the stitched value is sum_t c_t * a_t(y) * b_t(x) with row weights a and column weights b that each
    sum to 1 (separable window, normalised). Along x only the two overlapping columns of tiles change weight,
    by opposite amounts, so a step changes the value by (c_right - c_left) * (b(x + 1) - b(x)). The ramp is
    r_i = (1 - cos(pi (i + 1/2) / L)) / 2, whose largest step is sin(pi / 2L) * max_i sin(pi (i + 1) / L)
    <= sin(pi / 2L). The 10 % slack covers the 1e-3 weight floor.
    """
    rng = np.random.default_rng(overlap)
    height, width, tile = 300, 257, 64
    grid = plan_tiles(height, width, tile, overlap)
    offsets = rng.uniform(0.0, 50.0, size=len(grid))
    zeros = np.zeros((height, width), np.float32)
    blended = _stitch(zeros, tile, overlap, model=lambda i, t: t.astype(np.float32) + np.float32(offsets[i]))
    spread = offsets.max() - offsets.min()
    bound = spread * math.sin(math.pi / (2 * overlap)) * 1.1
    assert _max_adjacent_jump(blended) <= bound
    assert bound < 0.25 * spread  # the bound is meaningful: far below the jump without blending

    # the same offsets without overlap: seams jump by exactly the offset difference of the neighbours
    hard_grid = plan_tiles(height, width, tile, 0)
    hard_offsets = rng.uniform(0.0, 50.0, size=len(hard_grid))
    hard = _stitch(zeros, tile, 0, model=lambda i, t: t.astype(np.float32) + np.float32(hard_offsets[i]))
    table = hard_offsets.reshape(hard_grid.rows, hard_grid.cols)
    neighbour_diffs = np.concatenate([np.abs(np.diff(table, axis=0)).ravel(), np.abs(np.diff(table, axis=1)).ravel()])
    assert _max_adjacent_jump(hard) == pytest.approx(neighbour_diffs.max(), abs=1e-4)


def test_blended_offsets_stay_within_tile_values() -> None:
    """Blending is a convex combination: no output exceeds the range of the tiles covering it."""
    grid = plan_tiles(150, 150, 64, 24)
    offsets = np.linspace(-3.0, 7.0, len(grid))
    result = _stitch(np.zeros((150, 150), np.float32), 64, 24, model=lambda i, t: np.full(t.shape, offsets[i]))
    assert result.min() >= offsets.min() - 1e-5 and result.max() <= offsets.max() + 1e-5


def test_stitcher_checks_its_inputs() -> None:
    grid = plan_tiles(100, 100, 64, 16)
    stitcher = Stitcher(grid, channels=3)
    with pytest.raises(ValueError):
        stitcher.add(0, np.zeros((64, 64), np.float32))  # missing channel axis
    with pytest.raises(ValueError):
        stitcher.add(0, np.zeros((32, 32, 3), np.float32))  # wrong size
    with pytest.raises(KeyError):
        stitcher.add((5, 5), np.zeros((64, 64, 3), np.float32))  # not a grid origin
    with pytest.raises(IndexError):
        stitcher.add(len(grid), np.zeros((64, 64, 3), np.float32))
    stitcher.add(0, np.zeros((64, 64, 3), np.float32))
    assert not stitcher.complete
    with pytest.raises(RuntimeError, match="never added"):
        stitcher.result()
    with pytest.raises(ValueError):
        Stitcher(grid, channels=3, dtype=np.int32)
    with pytest.raises(ValueError):
        list(iter_tiles(np.zeros((99, 100)), grid))  # image does not match the grid
