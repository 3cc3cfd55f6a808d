"""HV / NP / TP targets on hand-made instance maps, with values derived by hand from the reference's definition:
offsets ``col + 1 - round_half_up(com)`` (reference) or ``col - round_half_up(com)`` (centre), negatives divided by
|min|, positives by max; only instances with >= 30 pixels inside the output window get HV values."""

from __future__ import annotations

import numpy as np
import pytest

from histostain.segmentation.targets import centre_crop, fix_mirror_padding, hv_map, make_targets


def square(size: int, top: int, left: int, side: int, label: int = 1, inst: np.ndarray | None = None) -> np.ndarray:
    inst = np.zeros((size, size), np.int32) if inst is None else inst
    inst[top : top + side, left : left + side] = label
    return inst


def test_centred_odd_square_gives_antisymmetric_maps_with_the_centre_origin():
    inst = square(21, 6, 6, 9)  # rows/cols 6..14, centre 10
    x, y = hv_map(inst, origin="centre")
    inside = inst > 0
    assert x[inside].min() == -1.0 and x[inside].max() == 1.0
    assert np.array_equal(x[:, 10], np.zeros(21))  # zero line through the centre
    assert np.array_equal(x, -x[:, ::-1])  # antisymmetric about the centre column
    assert np.array_equal(y, x.T)  # y map is the x map transposed
    assert np.allclose(x[10, 6:15], np.arange(-4, 5) / 4)
    assert np.array_equal(x[~inside], np.zeros((~inside).sum()))


def test_reference_origin_is_one_pixel_left_of_the_rounded_centre():
    inst = square(21, 6, 6, 9)  # com (10, 10); raw x = col + 1 - 10 = -3 .. 5
    x, y = hv_map(inst)
    expected = np.array([-3, -2, -1, 0, 1, 2, 3, 4, 5], np.float32)
    expected = np.where(expected < 0, expected / 3, expected / 5)
    assert np.allclose(x[8, 6:15], expected)
    assert np.allclose(y[6:15, 12], expected)
    assert x.min() == -1.0 and x.max() == 1.0 and y.min() == -1.0 and y.max() == 1.0
    assert np.array_equal(x[:, 6:15], np.broadcast_to(x[10, 6:15], (21, 9)) * (inst[:, 6:15] > 0))


def test_even_square_rounds_the_centre_of_mass_half_up():
    inst = square(24, 10, 10, 6)  # cols 10..15, com 12.5 -> 13; raw x = col + 1 - 13 = -2 .. 3
    x, _ = hv_map(inst)
    assert np.allclose(x[12, 10:16], [-1.0, -0.5, 0.0, 1 / 3, 2 / 3, 1.0])


def test_small_instances_get_no_hv_but_stay_nuclei():
    inst = square(32, 4, 4, 5, label=1)  # 25 px < 30
    inst = square(32, 16, 16, 6, label=2, inst=inst)  # 36 px
    targets = make_targets(inst, (32, 32))
    assert np.array_equal(targets.hv[:, 4:9, 4:9], np.zeros((2, 5, 5)))
    assert np.abs(targets.hv[:, 16:22, 16:22]).max() == 1.0
    assert targets.np[4:9, 4:9].all() and targets.np.sum() == 25 + 36


def test_the_area_threshold_counts_pixels_inside_the_output_window():
    inst = np.zeros((40, 40), np.int32)
    inst[0:10, 10:14] = 1  # 40 px, of which rows 4..9 (6 x 4 = 24 px) fall in the 32x32 window (rows 4..35)
    inst[2:12, 20:26] = 2  # 60 px, rows 4..11 inside: 48 px
    hv = hv_map(inst, (32, 32))
    assert not hv[:, inst == 1].any()
    assert hv[:, inst == 2].any()
    # the instance's field is computed over all of it, also outside the window (box rows 0..13)
    assert hv[1, 2:12, 22].min() == -1.0 and hv[1, 2:12, 22].max() == 1.0


def test_disconnected_pieces_of_one_id_get_separate_fields():
    inst = square(40, 4, 4, 8, label=3)
    inst = square(40, 24, 24, 8, label=3, inst=inst)
    fixed = fix_mirror_padding(inst)
    assert fixed[4, 4] == 3 and fixed[24, 24] == 2 + 3  # first piece keeps the id; piece 2 -> 2 + max id
    x, _ = hv_map(inst)
    for rows, cols in ((slice(4, 12), slice(4, 12)), (slice(24, 32), slice(24, 32))):
        assert x[rows, cols].min() == -1.0 and x[rows, cols].max() == 1.0


def test_fix_mirror_padding_uses_4_connectivity_and_new_ids_after_the_maximum():
    inst = np.zeros((6, 6), np.uint8)
    inst[0, 0] = inst[1, 1] = 5  # diagonal neighbours: two pieces
    inst[4:6, 4:6] = 2
    fixed = fix_mirror_padding(inst)
    assert fixed.dtype == np.int64
    assert fixed[0, 0] == 5 and fixed[1, 1] == 7  # label 2 of instance 5 -> 2 + max(5)
    assert np.array_equal(fixed[4:6, 4:6], np.full((2, 2), 2))


def test_instance_at_the_top_left_edge_gets_the_same_values_as_in_the_interior():
    """Deliberate difference: the reference's box slicing goes negative there and drops the target."""
    edge = square(30, 0, 0, 7)
    inner = square(30, 10, 10, 7)
    x_edge, y_edge = hv_map(edge)
    x_inner, y_inner = hv_map(inner)
    assert np.array_equal(x_edge[0:7, 0:7], x_inner[10:17, 10:17])
    assert np.array_equal(y_edge[0:7, 0:7], y_inner[10:17, 10:17])
    assert np.abs(x_edge).max() == 1.0


def test_make_targets_crops_everything_to_the_output_window():
    rng = np.random.default_rng(0)
    inst = square(64, 20, 22, 12, label=1)
    inst = square(64, 0, 0, 10, label=2, inst=inst)
    types = rng.integers(0, 6, (64, 64))
    targets = make_targets(inst, (36, 36), types)
    assert targets.np.shape == (36, 36) and targets.np.dtype == np.uint8
    assert targets.hv.shape == (2, 36, 36) and targets.hv.dtype == np.float32
    assert np.array_equal(targets.tp, types[14:50, 14:50])
    assert np.array_equal(targets.np, (inst[14:50, 14:50] > 0).astype(np.uint8))
    full = hv_map(inst, (36, 36))
    assert np.array_equal(targets.hv, full[:, 14:50, 14:50])
    assert not full[:, inst == 2].any()  # instance 2 lies outside the window: no HV target


def test_centre_crop_drops_the_odd_pixel_at_the_bottom_right():
    array = np.arange(25).reshape(5, 5)
    assert np.array_equal(centre_crop(array, (2, 2)), array[1:3, 1:3])
    with pytest.raises(ValueError):
        centre_crop(array, (6, 5))


def test_bad_arguments():
    with pytest.raises(ValueError):
        hv_map(np.zeros((4, 4, 1), int))
    with pytest.raises(ValueError):
        hv_map(np.zeros((4, 4), int), origin="middle")
    with pytest.raises(ValueError):
        make_targets(np.zeros((8, 8), int), (4, 4), np.zeros((7, 8), int))
    empty = make_targets(np.zeros((8, 8), int), (4, 4))
    assert not empty.hv.any() and not empty.np.any() and empty.tp is None
