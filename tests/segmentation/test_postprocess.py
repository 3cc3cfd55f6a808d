"""HoVer-Net post-processing on hand-made maps with known answers, invariants, and the API's contract.

The map-by-map comparison with a reference-definition implementation is ``test_postprocess_reference.py``.
"""

from __future__ import annotations

import subprocess
import sys

import cv2
import numpy as np
import pytest
from scipy import ndimage

from histostain.segmentation.nuclei import Nuclei
from histostain.segmentation.postprocess import (
    _binomial_kernels,
    _fill_holes,
    hovernet_instance_map,
    instances_from_argmax,
    instances_from_hovernet_maps,
    nuclei_from_labels,
    remove_small_components,
    scaled_constants,
    source_ids,
)
from histostain.segmentation.targets import make_targets


def hovernet_maps(inst: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(np_prob, hv H x W x 2) a perfect network would output for ``inst``."""
    targets = make_targets(inst, inst.shape)
    return targets.np.astype(np.float32), targets.hv.transpose(1, 2, 0).copy()


def random_nuclei(seed: int, height: int = 96, width: int = 112, count: int = 25) -> np.ndarray:
    """Touching round nuclei (nearest-centre cut), ids 1..count in random raster positions."""
    rng = np.random.default_rng(seed)
    seeds = np.zeros((height, width), np.int32)
    seeds[rng.integers(0, height, count), rng.integers(0, width, count)] = np.arange(1, count + 1)
    distance, (rows, cols) = ndimage.distance_transform_edt(seeds == 0, return_indices=True)
    nearest = seeds[rows, cols]
    radius = rng.uniform(5, 10, count + 1)
    return np.where(distance <= radius[nearest], nearest, 0).astype(np.int32)


# ------------------------------------------------------------------------------------------- known answers


def test_two_touching_squares_with_an_hv_split_become_two_nuclei() -> None:
    inst = np.zeros((40, 48), np.int32)
    inst[10:30, 4:24] = 1
    inst[10:30, 24:44] = 2
    np_prob, hv = hovernet_maps(inst)
    found = instances_from_hovernet_maps(np_prob, hv)
    assert len(found) == 2
    np.testing.assert_array_equal(found.inst_map, inst)  # left square first: the markers' raster order
    assert found.areas.tolist() == [400, 400]
    assert found.bboxes.tolist() == [[4, 10, 24, 30], [24, 10, 44, 30]]
    assert found.centroids.tolist() == [[13.5, 19.5], [33.5, 19.5]]


def test_the_same_foreground_with_one_nucleus_hv_stays_one_nucleus() -> None:
    inst = np.zeros((40, 48), np.int32)
    inst[10:30, 4:44] = 1
    np_prob, hv = hovernet_maps(inst)
    found = instances_from_hovernet_maps(np_prob, hv)
    assert len(found) == 1 and found.areas.tolist() == [800]


def test_components_under_ten_pixels_are_removed_and_ten_pixels_stay() -> None:
    labels = np.zeros((12, 20), np.int32)
    labels[1:4, 1:4] = 1  # 9 px
    labels[6:8, 1:6] = 2  # 10 px
    labels[1:3, 10:16] = 3  # 12 px
    remove_small_components(labels, 10)
    assert sorted(np.unique(labels).tolist()) == [0, 2, 3]
    assert (labels == 2).sum() == 10


def test_the_foreground_is_four_connected_before_the_size_rule() -> None:
    # two 6-px blobs that touch only at a corner are two components, both too small
    prob = np.zeros((16, 16), np.float32)
    prob[2:4, 2:5] = prob[4:6, 5:8] = 1.0
    assert (ndimage.label(prob >= 0.5)[0].max(), hovernet_instance_map(prob, np.zeros((16, 16, 2))).max()) == (2, 0)


def test_flat_hv_maps_give_no_markers_hence_no_nuclei() -> None:
    # the reference's energy is 1 everywhere when the Sobel maps are constant: every pixel is a boundary
    inst = np.zeros((40, 40), np.int32)
    inst[8:32, 8:32] = 1
    found = instances_from_hovernet_maps(inst.astype(np.float32), np.zeros((40, 40, 2), np.float32))
    assert len(found) == 0 and not found.inst_map.any()


def test_contour_bbox_centroid_and_area_of_a_square() -> None:
    inst = np.zeros((12, 12), np.int32)
    inst[2:7, 3:8] = 4  # a 5 x 5 square: x 3..7, y 2..6
    found = nuclei_from_labels(inst)
    assert found.ids.tolist() == [1] and found.areas.tolist() == [25]
    assert found.bboxes.tolist() == [[3, 2, 8, 7]]
    assert found.centroids.tolist() == [[5.0, 4.0]]
    # the four corner pixels, in OpenCV's order (down the left side first)
    assert found.contours[0].tolist() == [[3, 2], [3, 6], [7, 6], [7, 2]]
    assert found.contours[0].dtype == np.int32


def test_type_vote_with_a_background_majority_picks_the_second_type() -> None:
    inst = np.zeros((6, 6), np.int32)
    inst[1:3, 0:5] = 1  # 10 px
    types = np.zeros((6, 6), np.uint8)
    types[1, 0:3] = 2  # 3 votes for type 2
    types[2, 4] = 4  # 1 vote for type 4, background has 6
    found = nuclei_from_labels(inst, types)
    assert found.types is not None and found.type_probs is not None
    assert found.types.tolist() == [2]
    assert found.type_probs.tolist() == [3 / (10 + 1e-6)]


def test_type_vote_ties_go_to_the_smaller_type_and_all_background_stays_background() -> None:
    inst = np.zeros((4, 12), np.int32)
    inst[0:2, 0:5] = 1  # 10 px: 4 x type 3, 4 x type 1, 2 x background
    inst[0:2, 7:12] = 2  # 10 px: background only
    types = np.zeros((4, 12), np.uint8)
    types[0, 0:4] = 3
    types[1, 0:4] = 1
    found = nuclei_from_labels(inst, types)
    assert found.types.tolist() == [1, 0]  # type: ignore[union-attr]
    assert found.type_probs.tolist() == [4 / (10 + 1e-6), 10 / (10 + 1e-6)]  # type: ignore[union-attr]


def test_degenerate_instances_leave_map_and_rows_and_ids_close_up() -> None:
    inst = np.zeros((10, 12), np.int64)
    inst[0:4, 0:4] = 10  # kept
    inst[6, 0] = 20  # single pixel: 1 contour point
    inst[8, 2:9] = 30  # horizontal line: 2 points
    for k in range(4):
        inst[5 + k, 8 + k] = 40  # diagonal line: 2 points
    inst[1:3, 7:9] = 50  # 2 x 2 square: kept
    inst[0, 10], inst[0, 11], inst[1, 11] = 60, 60, 60  # an L of 3 px: 3 points, kept
    before = inst.copy()
    found = nuclei_from_labels(inst)
    np.testing.assert_array_equal(inst, before)  # the input is not modified
    assert found.areas.tolist() == [16, 4, 3]
    expected = np.select([before == 10, before == 50, before == 60], [1, 2, 3], 0)
    np.testing.assert_array_equal(found.inst_map, expected)
    assert found.inst_map.dtype == np.int32 and found.ids.tolist() == [1, 2, 3]


def test_source_ids_name_each_row_in_the_input_map() -> None:
    inst = np.zeros((10, 12), np.int64)
    inst[0:4, 0:4] = 10
    inst[6, 0] = 20  # dropped: a single pixel
    inst[1:3, 7:9] = 50
    inst[6:9, 6:10] = 35
    found = nuclei_from_labels(inst)
    assert source_ids(inst, found).tolist() == [10, 35, 50]
    assert source_ids(inst, nuclei_from_labels(np.zeros((3, 3), np.int32))).tolist() == []


def test_ids_follow_the_input_ids_not_the_raster_order() -> None:
    inst = np.zeros((20, 20), np.int32)
    inst[14:18, 1:5] = 2  # bottom left, smaller id
    inst[1:5, 14:18] = 9  # top right
    inst[1:5, 1:5] = 5
    found = nuclei_from_labels(inst)
    np.testing.assert_array_equal(found.inst_map, np.select([inst == 2, inst == 5, inst == 9], [1, 2, 3], 0))
    assert found.centroids[:, 1].tolist() == [15.5, 2.5, 2.5]


def test_an_input_numbered_one_to_n_keeps_its_ids() -> None:
    inst = random_nuclei(3)
    found = nuclei_from_labels(inst)
    assert len(found) == inst.max()
    np.testing.assert_array_equal(found.inst_map, inst)


# ------------------------------------------------------------------------------------------------ invariants


@pytest.mark.parametrize("seed", range(4))
def test_rows_agree_with_the_map(seed: int) -> None:
    rng = np.random.default_rng(seed)
    inst = random_nuclei(seed)
    np_prob, hv = hovernet_maps(inst)
    np_prob = np.clip(ndimage.gaussian_filter(np_prob, 1) + rng.normal(0, 0.1, np_prob.shape), 0, 1)
    hv = hv + rng.normal(0, 0.05, hv.shape).astype(np.float32)
    tp_prob = rng.uniform(0, 1, (*inst.shape, 5)).astype(np.float32)
    found = instances_from_hovernet_maps(np_prob, hv, tp_prob)
    assert len(found) > 10
    labels = found.inst_map
    assert labels.dtype == np.int32 and set(np.unique(labels).tolist()) == set(range(len(found) + 1))
    assert found.areas.sum() == (labels > 0).sum()
    for i, nucleus_id in enumerate(found.ids.tolist()):
        x0, y0, x1, y1 = found.bboxes[i].tolist()
        rows, cols = np.nonzero(labels == nucleus_id)
        assert (rows.min(), rows.max() + 1, cols.min(), cols.max() + 1) == (y0, y1, x0, x1)  # tight box
        assert len(rows) == found.areas[i]
        cx, cy = found.centroids[i]
        assert x0 <= cx < x1 and y0 <= cy < y1
        assert np.allclose((cx, cy), (cols.mean(), rows.mean()))
        contour = found.contours[i]
        assert contour.ndim == 2 and contour.shape[1] == 2 and len(contour) >= 3
        assert (contour[:, 0] >= x0).all() and (contour[:, 0] < x1).all()
        assert (contour[:, 1] >= y0).all() and (contour[:, 1] < y1).all()
        assert (labels[contour[:, 1], contour[:, 0]] == nucleus_id).all()  # contour points are its pixels
    assert found.types is not None and found.type_probs is not None
    assert ((found.type_probs > 0) & (found.type_probs <= 1)).all()
    np.testing.assert_array_equal(found.type_map, np.argmax(tp_prob, axis=-1))


def test_no_types_means_no_type_columns() -> None:
    np_prob, hv = hovernet_maps(random_nuclei(1))
    found = instances_from_hovernet_maps(np_prob, hv)
    assert len(found) > 0
    assert found.type_map is None and found.types is None and found.type_probs is None


def test_argmax_entry_point_gives_the_same_nuclei() -> None:
    rng = np.random.default_rng(5)
    np_prob, hv = hovernet_maps(random_nuclei(5))
    tp_prob = rng.uniform(0, 1, (*np_prob.shape, 6)).astype(np.float32)
    a = instances_from_hovernet_maps(np_prob, hv, tp_prob, type_names={1: "x"}, mpp=0.25)
    b = instances_from_argmax(np_prob, hv, np.argmax(tp_prob, axis=-1), type_names={1: "x"}, mpp=0.25)
    np.testing.assert_array_equal(a.inst_map, b.inst_map)
    np.testing.assert_array_equal(a.types, b.types)  # type: ignore[arg-type]
    assert (a.mpp, a.type_names) == (b.mpp, b.type_names) == (0.25, {1: "x"})


@pytest.mark.parametrize("shape", [(0, 0), (1, 1), (3, 7), (32, 32)])
def test_empty_maps_give_an_empty_result(shape: tuple[int, int]) -> None:
    found = instances_from_hovernet_maps(np.zeros(shape, np.float32), np.zeros((*shape, 2)), np.zeros((*shape, 4)))
    assert len(found) == 0 and found.shape == shape
    assert found.type_map is not None and found.types is not None and len(found.types) == 0
    untyped = nuclei_from_labels(np.zeros(shape, np.int32))
    assert len(untyped) == 0 and untyped.types is None and untyped.type_map is None


def test_a_map_without_background_is_one_nucleus() -> None:
    found = nuclei_from_labels(np.full((9, 11), 7, np.uint16))
    assert found.areas.tolist() == [99] and found.bboxes.tolist() == [[0, 0, 11, 9]]


def test_bool_and_sparse_huge_ids_are_accepted() -> None:
    inst = np.zeros((8, 8), np.int64)
    inst[0:3, 0:3] = 2**40
    inst[5:8, 5:8] = 7
    found = nuclei_from_labels(inst)
    np.testing.assert_array_equal(found.inst_map, np.select([inst == 7, inst == 2**40], [1, 2], 0))
    # a bool map is one instance (id 1), here in two pieces: all its pixels count, and its contour is the
    # first one OpenCV returns (the last piece in raster order), as in the reference
    merged = nuclei_from_labels(inst > 0)
    assert merged.areas.tolist() == [18] and merged.bboxes.tolist() == [[0, 0, 8, 8]]
    assert merged.contours[0].tolist() == [[5, 5], [5, 7], [7, 7], [7, 5]]


# --------------------------------------------------------------------------------------- building blocks


@pytest.mark.parametrize(
    ("scale", "expected"), [(1.0, (21, 10)), (0.5, (11, 3)), (1.25, (27, 16)), (0.25, (7, 1)), (2.0, (41, 40))]
)
def test_scaled_constants(scale: float, expected: tuple[int, int]) -> None:
    assert scaled_constants(scale) == expected


@pytest.mark.parametrize("scale", [0, -1, float("nan"), float("inf"), "big"])
def test_bad_scales_are_refused(scale: object) -> None:
    with pytest.raises(ValueError, match="scale"):
        scaled_constants(scale)  # type: ignore[arg-type]


@pytest.mark.parametrize("ksize", [3, 5, 21, 31])
def test_binomial_sobel_kernels_are_opencvs(ksize: int) -> None:
    derivative, smooth = _binomial_kernels(ksize)
    kx, ky = cv2.getDerivKernels(1, 0, ksize, normalize=False, ktype=cv2.CV_64F)
    np.testing.assert_array_equal(derivative, kx.ravel())
    np.testing.assert_array_equal(smooth, ky.ravel())


def test_scales_beyond_opencvs_largest_sobel_still_work() -> None:
    inst = np.kron(random_nuclei(2, 60, 60, 8), np.ones((2, 2), np.int32))  # nuclei twice as large
    np_prob, hv = hovernet_maps(inst)
    found = instances_from_hovernet_maps(np_prob, hv, scale=2.0)  # ksize 41
    assert len(found) >= 4


@pytest.mark.parametrize("seed", range(5))
def test_fill_holes_is_scipys(seed: int) -> None:
    rng = np.random.default_rng(seed)
    mask = ndimage.gaussian_filter(rng.uniform(0, 1, (37, 53)), 1.5) > 0.5  # blobs, holes, border contacts
    np.testing.assert_array_equal(_fill_holes(mask), ndimage.binary_fill_holes(mask))
    np.testing.assert_array_equal(_fill_holes(np.ones((4, 5), bool)), np.ones((4, 5), bool))


# --------------------------------------------------------------------------------------------- contract


@pytest.mark.parametrize(
    ("np_prob", "hv", "tp_prob", "message"),
    [
        (np.zeros((4, 4, 1)), np.zeros((4, 4, 2)), None, "np_prob"),
        (np.zeros((4, 4)), np.zeros((2, 4, 4)), None, "hv"),
        (np.zeros((4, 4)), np.zeros((4, 4, 2)), np.zeros((4, 5, 3)), "tp_prob"),
        (np.zeros((4, 4)), np.zeros((4, 4, 2)), np.zeros((4, 4)), "tp_prob"),
    ],
)
def test_malformed_maps_are_refused(np_prob, hv, tp_prob, message) -> None:
    with pytest.raises(ValueError, match=message):
        instances_from_hovernet_maps(np_prob, hv, tp_prob)


@pytest.mark.parametrize(
    ("inst", "types", "message"),
    [
        (np.zeros((4, 4), np.float32), None, "integer ids"),
        (np.full((4, 4), -1), None, ">= 0"),
        (np.zeros((4, 4, 1), np.int32), None, "H x W"),
        (np.ones((4, 4), np.int32), np.full((4, 4), 300), "0..255"),
        (np.ones((4, 4), np.int32), np.full((4, 4), 1.5), "0..255"),
        (np.ones((4, 4), np.int32), np.zeros((4, 5), np.int32), "does not match"),
    ],
)
def test_malformed_label_maps_are_refused(inst, types, message) -> None:
    with pytest.raises(ValueError, match=message):
        nuclei_from_labels(inst, types)


def test_returns_a_nuclei_record_with_metadata() -> None:
    inst = random_nuclei(4)
    found = nuclei_from_labels(inst, (inst > 0).astype(np.float32) * 3, type_names={3: "x"}, mpp=0.5)
    assert isinstance(found, Nuclei) and found.mpp == 0.5 and found.type_names == {3: "x"}
    assert set(found.types.tolist()) == {3}  # type: ignore[union-attr]
    assert found.to_annotations()[0].contour is found.contours[0]


def test_lazy_exports_and_no_cv2_at_help_time() -> None:
    import histostain.segmentation as segmentation
    from histostain.segmentation import postprocess

    assert segmentation.instances_from_hovernet_maps is postprocess.instances_from_hovernet_maps
    assert segmentation.nuclei_from_labels is postprocess.nuclei_from_labels
    code = (
        "import sys\n"
        "import histostain.segmentation\n"
        "from histostain.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print('CV2' if 'cv2' in sys.modules else 'NO-CV2')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("NO-CV2")
