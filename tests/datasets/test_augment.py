"""Dihedral transforms of images, label maps and keypoints; crops; colour jitter."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from histostain.datasets import augment as aug

SHAPES = [(5, 5), (4, 7), (7, 4), (1, 6)]


class MidpointRng:
    """A stand-in generator whose uniform draws are the interval midpoints (alpha = 1, beta = 0, no hue shift)."""

    def uniform(self, low: float, high: float, size: int | None = None) -> np.ndarray | float:
        value = (low + high) / 2
        return np.full(size, value) if size is not None else value


class HighRng:
    """Uniform draws at the upper end: every stain concentration scaled up and shifted up."""

    def uniform(self, low: float, high: float, size: int | None = None) -> np.ndarray | float:
        return np.full(size, high) if size is not None else high


def asymmetric(height: int, width: int, channels: int | None = None) -> np.ndarray:
    """Every pixel distinct, so no two transforms give the same result."""
    values = np.arange(height * width * (channels or 1), dtype=np.int64).reshape(height, width, channels or 1)
    return values[..., 0] if channels is None else values


def test_k0_is_identity_and_the_eight_transforms_are_distinct() -> None:
    image = asymmetric(4, 6)
    assert np.array_equal(aug.dihedral(image, 0), image)
    results = {aug.dihedral(image, k).tobytes() + bytes(aug.dihedral(image, k).shape) for k in range(8)}
    assert len(results) == 8


def test_transform_definitions_match_numpy() -> None:
    image = asymmetric(3, 5, 2)
    assert np.array_equal(aug.dihedral(image, 4), image[:, ::-1])
    assert np.array_equal(aug.dihedral(image, 1), np.rot90(image, 1))
    assert np.array_equal(aug.dihedral(image, 6), np.rot90(image[:, ::-1], 2))
    assert aug.dihedral(image, 3).flags.c_contiguous


@pytest.mark.parametrize("k", range(8))
def test_inverse_undoes_each_transform(k: int) -> None:
    image = asymmetric(3, 5, 3)
    assert np.array_equal(aug.dihedral(aug.dihedral(image, k), aug.inverse_dihedral(k)), image)
    points = np.array([[0.25, 1.5], [4.0, 2.0], [5.0, -0.5]])
    height, width = image.shape[:2]
    moved = aug.dihedral_points(points, k, height, width)
    new_h, new_w = aug.dihedral_shape(height, width, k)
    assert np.allclose(aug.dihedral_points(moved, aug.inverse_dihedral(k), new_h, new_w), points)


@pytest.mark.parametrize(("shape", "k"), list(itertools.product(SHAPES, range(8))))
def test_keypoints_land_on_their_markers(shape: tuple[int, int], k: int) -> None:
    """Render each integer keypoint as a one-pixel marker; after the transform the moved point sits on it."""
    height, width = shape
    rng = np.random.default_rng(height * 10 + width)
    flat = rng.choice(height * width, size=min(6, height * width), replace=False)
    points = np.stack([flat % width, flat // width], axis=1).astype(float)  # (x, y)
    image = np.zeros((height, width, 3), dtype=np.uint8)
    for i, (x, y) in enumerate(points.astype(int)):
        image[y, x] = (i + 1, 200, 7)
    out = aug.dihedral(image, k)
    moved = aug.dihedral_points(points, k, height, width)
    assert out.shape[:2] == aug.dihedral_shape(height, width, k)
    assert np.array_equal(moved, np.round(moved))
    for i, (x, y) in enumerate(moved.astype(int)):
        assert 0 <= x < out.shape[1] and 0 <= y < out.shape[0]
        assert tuple(out[y, x]) == (i + 1, 200, 7)
    assert np.count_nonzero(out[..., 1]) == len(points)  # nothing else became a marker


@pytest.mark.parametrize("k", range(8))
def test_fractional_points_follow_the_same_affine_map(k: int) -> None:
    """Midpoints map to midpoints (the map is affine, no rounding), and the edge point x == W stays 1 px outside."""
    height, width = 6, 9
    a = np.array([[1.0, 2.0]])
    b = np.array([[4.0, 5.0]])
    mid = aug.dihedral_points((a + b) / 2, k, height, width)
    expected = (aug.dihedral_points(a, k, height, width) + aug.dihedral_points(b, k, height, width)) / 2
    assert np.allclose(mid, expected)
    edge = aug.dihedral_points(np.array([[float(width), 2.0]]), k, height, width)
    new_h, new_w = aug.dihedral_shape(height, width, k)
    x, y = edge[0]
    outside = min(x + 1, new_w - x, y + 1, new_h - y)
    assert outside == pytest.approx(0.0)  # exactly one pixel beyond the first or last pixel centre


def test_hand_computed_points() -> None:
    # 3 rows x 4 columns; the point in column 3, row 0 (top-right pixel).
    point = np.array([[3.0, 0.0]])
    assert aug.dihedral_points(point, 4, 3, 4).tolist() == [[0.0, 0.0]]  # flip: top-left
    assert aug.dihedral_points(point, 1, 3, 4).tolist() == [[0.0, 0.0]]  # quarter turn ccw: top-left of 4 x 3
    assert aug.dihedral_points(point, 2, 3, 4).tolist() == [[0.0, 2.0]]  # half turn: bottom-left
    assert aug.dihedral_points(point, 3, 3, 4).tolist() == [[2.0, 3.0]]  # three quarters: bottom-right of 4 x 3
    assert aug.dihedral_points(np.zeros((0, 2)), 5, 3, 4).shape == (0, 2)


@pytest.mark.parametrize("k", range(8))
def test_image_and_label_maps_stay_aligned(k: int) -> None:
    rng = np.random.default_rng(k)
    image = rng.integers(0, 256, (6, 10, 3), dtype=np.uint8)
    inst = rng.integers(0, 50, (6, 10)).astype(np.int32)
    types = rng.integers(0, 6, (6, 10)).astype(np.uint8)
    stack = np.concatenate([image.astype(np.int64), inst[..., None], types[..., None]], axis=-1)
    out_image, out_inst, out_types = aug.dihedral_many([image, inst, types], k)
    reference = aug.dihedral(stack, k)
    assert np.array_equal(out_image, reference[..., :3])
    assert np.array_equal(out_inst, reference[..., 3])
    assert np.array_equal(out_types, reference[..., 4])
    assert (out_image.dtype, out_inst.dtype, out_types.dtype) == (np.uint8, np.int32, np.uint8)
    assert sorted(np.unique(out_inst)) == sorted(np.unique(inst))


def test_dihedral_many_refuses_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="share height and width"):
        aug.dihedral_many([np.zeros((4, 5)), np.zeros((5, 4))], 1)
    with pytest.raises(ValueError, match="0..7"):
        aug.dihedral(np.zeros((2, 2)), 8)


def test_random_dihedral_is_uniform_and_seeded() -> None:
    draws = [aug.random_dihedral(np.random.default_rng(seed)) for seed in range(400)]
    counts = np.bincount(draws, minlength=8)
    assert counts.min() > 25
    assert aug.random_dihedral(np.random.default_rng(7)) == aug.random_dihedral(np.random.default_rng(7))


def test_crop_origins() -> None:
    origins = {aug.random_crop_origin(np.random.default_rng(s), 10, 7, 5) for s in range(200)}
    assert all(0 <= y0 <= 5 and 0 <= x0 <= 2 for y0, x0 in origins)
    assert (0, 0) in origins and (5, 2) in origins  # both extremes reachable
    assert aug.centre_crop_origin(10, 7, 5) == (2, 1)
    assert aug.crop(asymmetric(10, 7), 2, 1, 5).shape == (5, 5)
    with pytest.raises(ValueError, match="larger than the image"):
        aug.random_crop_origin(np.random.default_rng(0), 4, 8, 5)


def all_levels() -> np.ndarray:
    levels = np.arange(256, dtype=np.uint8)
    grid = np.stack(np.meshgrid(levels, levels[::-1], indexing="ij"), axis=-1)[:, :, :2]
    return np.concatenate([grid, grid[..., :1]], axis=-1)  # 256 x 256 x 3 covering every level in each channel


@pytest.mark.parametrize("space", ["hed", "hsv"])
def test_neutral_jitter_round_trips(space: str) -> None:
    image = all_levels()
    out = aug.colour_jitter(image, MidpointRng(), 0.1, space)  # type: ignore[arg-type]
    tolerance = 0 if space == "hed" else 1
    assert out.dtype == np.uint8 and out.shape == image.shape
    assert np.abs(out.astype(int) - image.astype(int)).max() <= tolerance


@pytest.mark.parametrize("space", ["hed", "hsv"])
def test_zero_strength_is_a_no_op_and_jitter_is_seeded(space: str) -> None:
    image = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    assert np.array_equal(aug.colour_jitter(image, np.random.default_rng(1), 0.0, space), image)
    first = aug.colour_jitter(image, np.random.default_rng(1), 0.1, space)
    again = aug.colour_jitter(image, np.random.default_rng(1), 0.1, space)
    other = aug.colour_jitter(image, np.random.default_rng(2), 0.1, space)
    assert np.array_equal(first, again)
    assert not np.array_equal(first, image)
    assert not np.array_equal(first, other)
    assert first.dtype == np.uint8


def test_more_stain_darkens_tissue() -> None:
    image = np.full((4, 4, 3), (200, 120, 180), dtype=np.uint8)
    darker = aug.hed_jitter(image, HighRng(), 0.1)  # type: ignore[arg-type]
    assert (darker.astype(int) <= image.astype(int)).all() and darker.sum() < image.sum()


def test_jitter_refuses_bad_input() -> None:
    with pytest.raises(ValueError, match="uint8 H x W x 3"):
        aug.hed_jitter(np.zeros((4, 4), dtype=np.uint8), np.random.default_rng(0), 0.1)
    with pytest.raises(ValueError, match="space"):
        aug.colour_jitter(np.zeros((4, 4, 3), dtype=np.uint8), np.random.default_rng(0), 0.1, "lab")
