"""Keypoint detector: Gaussian targets and NMS decoding round-trip, focal loss by hand, U-Net shapes, overfitting."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from histostain.metrics.detection import match_points
from histostain.segmentation.detector import DEFAULT_PARAMETERS, DetectorNet, decode_heatmaps
from histostain.segmentation.detector_targets import (
    gaussian_targets,
    penalty_reduced_focal_loss,
    sigma_from_um,
)
from histostain.synth import generate_tile

H, W = 20, 24


def round_trip(points, classes, sigma=2.0, threshold=0.5, nms_kernel=3):
    targets = gaussian_targets(np.array(points, float), np.array(classes), (H, W), 3, sigma)
    return targets, decode_heatmaps(targets, threshold, nms_kernel)


def raster_sorted(points, classes):
    order = np.lexsort((np.array(points)[:, 0], np.array(points)[:, 1]))  # by row (y), then column (x)
    return np.array(points, float)[order], np.array(classes)[order]


# ------------------------------------------------------------------------------------------------ targets


def test_targets_peak_exactly_one_merge_by_max_and_truncate_at_three_sigma():
    targets = gaussian_targets(np.array([[5.0, 6.0], [7.0, 6.0]]), np.array([1, 1]), (H, W), 3, 1.5)
    assert targets.dtype == np.float32 and targets.shape == (3, H, W)
    assert targets[1, 6, 5] == 1.0 and targets[1, 6, 7] == 1.0
    assert not targets[0].any() and not targets[2].any()
    # the pixel between the two points: the max of the two Gaussians (equal here), not their sum
    assert targets[1, 6, 6] == pytest.approx(math.exp(-1 / (2 * 1.5**2)), rel=1e-6)
    radius = math.ceil(3 * 1.5)  # 5
    assert targets[1, 6, 5 - radius] > 0 and (targets[1, 6, : 5 - radius] == 0).all()
    assert targets[1, 6 + radius, 5] > 0 and (targets[1, 6 + radius + 1 :, 5] == 0).all()


def test_targets_round_sub_pixel_points_and_clip_the_outer_edge():
    targets = gaussian_targets(np.array([[3.4, 2.6], [float(W), 0.0]]), np.array([0, 2]), (H, W), 3, 1.0)
    assert targets[0, 3, 3] == 1.0  # (3.4, 2.6) -> column 3, row 3
    assert targets[2, 0, W - 1] == 1.0  # x == W (EndoNuke allows it) -> last column


def test_targets_reject_bad_classes_and_sigma():
    with pytest.raises(ValueError, match="classes"):
        gaussian_targets(np.array([[1.0, 1.0]]), np.array([3]), (H, W), 3, 1.0)
    with pytest.raises(ValueError, match="sigma"):
        gaussian_targets(np.zeros((0, 2)), np.zeros(0), (H, W), 3, 0.0)


def test_sigma_from_um_is_the_radius_over_three_in_pixels():
    assert sigma_from_um(3.0, 0.25) == pytest.approx(4.0)
    assert math.ceil(3 * sigma_from_um(3.0, 0.5)) == 6  # the target's radius: 3 um = 6 px at 0.5 um/px
    with pytest.raises(ValueError):
        sigma_from_um(3.0, 0.0)


# ----------------------------------------------------------------------------------------------- decoding


def test_round_trip_exact_with_borders_close_points_and_classes():
    points = [
        [0.0, 0.0],  # corner
        [0.0, 10.0],  # left border, x = 0
        [12.0, H - 1.0],  # bottom border, y = H - 1
        [W - 1.0, 5.0],  # right border
        [9.0, 4.0],  # two points 2 px apart, different classes ...
        [11.0, 4.0],
        [16.0, 12.0],  # ... and 2 px apart diagonally, same class
        [18.0, 14.0],
    ]
    classes = [0, 1, 2, 0, 1, 2, 0, 0]
    _, (found, found_classes, scores) = round_trip(points, classes)
    want, want_classes = raster_sorted(points, classes)
    np.testing.assert_array_equal(found, want)  # exact, in raster order
    np.testing.assert_array_equal(found_classes, want_classes)
    np.testing.assert_array_equal(scores, np.ones(len(points), np.float32))
    assert found.dtype == np.float64 and found_classes.dtype == np.int64


def test_points_two_px_apart_survive_a_3x3_window_but_merge_in_a_5x5_window():
    """A 3x3 window reaches 1 px: two 1.0 peaks 2 px apart are outside each other's window, both survive.
    In a 5x5 window they are inside each other's window with equal scores: one plateau, one point, the first
    in raster order."""
    points, classes = [[5.0, 5.0], [7.0, 5.0]], [0, 1]
    targets, (found, found_classes, _) = round_trip(points, classes)
    np.testing.assert_array_equal(found, points)
    np.testing.assert_array_equal(found_classes, classes)
    found5, classes5, _ = decode_heatmaps(targets, 0.5, nms_kernel=5)
    np.testing.assert_array_equal(found5, [[5.0, 5.0]])
    np.testing.assert_array_equal(classes5, [0])


@pytest.mark.parametrize(
    ("points", "kept"),
    [
        ([[8.0, 6.0], [9.0, 6.0]], [8.0, 6.0]),  # 1 px apart horizontally: the left one (first in its row)
        ([[8.0, 7.0], [8.0, 6.0]], [8.0, 6.0]),  # 1 px apart vertically: the upper one
        ([[9.0, 6.0], [8.0, 7.0]], [9.0, 6.0]),  # diagonal: the upper one, although it is further right
    ],
)
def test_points_one_px_apart_give_one_point_first_in_raster_order(points, kept):
    _, (found, _, _) = round_trip(points, [2, 2])
    np.testing.assert_array_equal(found, [kept])


def test_plateau_gives_one_point_deterministically():
    heatmaps = np.zeros((2, 9, 9), np.float32)
    heatmaps[1, 4, 2:7] = 0.8  # a 5-pixel ridge: every pixel is a max-pool maximum
    heatmaps[0, 0:2, 7:9] = 0.6  # a 2x2 plateau in the corner
    found, classes, scores = decode_heatmaps(torch.from_numpy(heatmaps), 0.5)
    np.testing.assert_array_equal(found, [[7.0, 0.0], [2.0, 4.0]])
    np.testing.assert_array_equal(classes, [0, 1])
    np.testing.assert_allclose(scores, [0.6, 0.8])


def test_threshold_empty_and_kernel_checks():
    targets, _ = round_trip([[5.0, 5.0]], [0])
    assert len(decode_heatmaps(targets * 0.4, 0.5)[0]) == 0
    found, classes, scores = decode_heatmaps(np.zeros((3, 4, 4)), 0.1)
    assert found.shape == (0, 2) and classes.shape == (0,) and scores.shape == (0,)
    with pytest.raises(ValueError, match="odd"):
        decode_heatmaps(targets, 0.5, nms_kernel=4)
    with pytest.raises(ValueError, match="C x H x W"):
        decode_heatmaps(targets[0], 0.5)


def test_refine_gives_the_3x3_centroid():
    heatmaps = np.zeros((1, 7, 7))
    heatmaps[0, 3, 3] = 1.0
    heatmaps[0, 3, 4] = 0.5  # pulls the centroid right by 0.5 / 1.5
    found, _, _ = decode_heatmaps(heatmaps, 0.5, refine=True)
    np.testing.assert_allclose(found, [[3 + 0.5 / 1.5, 3.0]])
    symmetric, _ = round_trip([[10.0, 8.0]], [0])
    np.testing.assert_allclose(decode_heatmaps(symmetric, 0.5, refine=True)[0], [[10.0, 8.0]])


# --------------------------------------------------------------------------------------------------- loss


def test_focal_loss_matches_a_hand_computation():
    logits = np.array([[2.0, -1.0], [0.5, -3.0]])
    target = np.array([[1.0, 0.6], [0.0, 0.9]])
    p = 1 / (1 + np.exp(-logits))
    alpha, beta = 2, 4
    total = np.log(p[0, 0]) * (1 - p[0, 0]) ** alpha  # the one positive pixel
    for r, c in [(0, 1), (1, 0), (1, 1)]:
        total += (1 - target[r, c]) ** beta * p[r, c] ** alpha * np.log(1 - p[r, c])
    expected = -total / 1  # one positive pixel
    loss = penalty_reduced_focal_loss(
        torch.tensor(logits).reshape(1, 1, 2, 2), torch.tensor(target).reshape(1, 1, 2, 2), alpha, beta
    )
    assert loss.item() == pytest.approx(expected, rel=1e-12)


def test_focal_loss_without_positives_normalises_by_one_and_stays_finite():
    target = torch.zeros(1, 1, 2, 2, dtype=torch.float64)
    logits = torch.tensor([[[[0.0, 1.0], [-1.0, 100.0]]]], dtype=torch.float64, requires_grad=True)
    p = torch.sigmoid(logits.detach()).clamp(1e-4, 1 - 1e-4)
    expected = -(p**2 * torch.log(1 - p)).sum()
    loss = penalty_reduced_focal_loss(logits, target)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-12)
    loss.backward()
    assert torch.isfinite(logits.grad).all()
    assert penalty_reduced_focal_loss(torch.full((1, 1, 2, 2), -100.0), torch.ones(1, 1, 2, 2)).isfinite()


# -------------------------------------------------------------------------------------------------- model


def test_output_matches_odd_input_sizes():
    net = DetectorNet(width=4, levels=4).eval()
    with torch.no_grad():
        assert net(torch.rand(2, 3, 67, 45)).shape == (2, 3, 67, 45)
        assert net(torch.rand(1, 3, 5, 3)).shape == (1, 3, 5, 3)


def test_default_model_size_and_shape():
    net = DetectorNet().eval()
    count = sum(p.numel() for p in net.parameters())
    assert count == DEFAULT_PARAMETERS
    assert 500_000 <= count <= 3_000_000
    with torch.no_grad():
        out = net(torch.rand(1, 3, 67, 45))
    assert out.shape == (1, 3, 67, 45)
    # head prior: the untrained heatmaps start near 0.01
    assert torch.sigmoid(out).mean().item() == pytest.approx(0.01, abs=0.01)


def test_tiny_detector_overfits_four_tiles():
    """Four 64 px synthetic IHC tiles (17 nuclei); a width-8, 3-level net (Adam, lr 3e-3, sigma 1.5 px)
    reaches F1 1.0 at 3 px after ~100 steps (~5 s on 2 cores); stop at the first evaluation that does."""
    torch.manual_seed(0)
    tiles = [generate_tile(seed, 64) for seed in range(4)]
    images = torch.from_numpy(np.stack([tile.ihc for tile in tiles]).transpose(0, 3, 1, 2).astype(np.float32) / 255)
    targets = torch.from_numpy(
        np.stack([gaussian_targets(t.centroids, t.endonuke_classes, (64, 64), 3, 1.5) for t in tiles])
    )
    net = DetectorNet(width=8, levels=3)
    optimiser = torch.optim.Adam(net.parameters(), lr=3e-3)
    flush = torch.set_flush_denormal(True)  # tiny losses give denormals that slow the CPU down a lot
    try:
        f1 = 0.0
        for step in range(1, 301):
            optimiser.zero_grad()
            loss = penalty_reduced_focal_loss(net(images), targets)
            loss.backward()
            optimiser.step()
            if step % 25:
                continue
            net.eval()
            with torch.no_grad():
                heatmaps = torch.sigmoid(net(images))
            net.train()
            tp = fp = fn = 0
            for tile, heatmap in zip(tiles, heatmaps, strict=True):
                points, _, _ = decode_heatmaps(heatmap, 0.3)
                pairs, free_true, free_pred = match_points(tile.centroids, points, 3.0)
                tp, fn, fp = tp + len(pairs), fn + len(free_true), fp + len(free_pred)
            f1 = 2 * tp / (2 * tp + fp + fn)
            if f1 == 1.0:
                break
    finally:
        if flush:
            torch.set_flush_denormal(False)
    assert f1 == 1.0, f"F1 {f1:.3f} after {step} steps"


def test_smoothing_lets_a_spread_nucleus_outscore_a_single_bright_pixel():
    """A Gaussian blob (sigma 2, peak 0.3) and a lone pixel of 0.5: unsmoothed the pixel scores higher; smoothed by
    sigma s = 2 the blob keeps 0.3 * 2^2 / (2^2 + s^2) = 0.15 at its centre and the pixel 0.5 / (2 pi s^2) = 0.02."""
    rows, cols = np.mgrid[:40, :40]
    heat = np.zeros((3, 40, 40))
    heat[1] = 0.3 * np.exp(-((rows - 12) ** 2 + (cols - 12) ** 2) / (2 * 2.0**2))
    heat[2, 28, 30] = 0.5
    points, classes, scores = decode_heatmaps(heat, 0.25)
    assert points.tolist() == [[12.0, 12.0], [30.0, 28.0]] and scores.tolist() == pytest.approx([0.3, 0.5])
    points, classes, scores = decode_heatmaps(heat, 0.05, smooth=2.0)
    assert points.tolist() == [[12.0, 12.0]] and classes.tolist() == [1]
    assert scores[0] == pytest.approx(0.15, rel=0.03)
    lone = decode_heatmaps(heat, 0.0001, smooth=2.0)
    assert lone[2][lone[0][:, 0] == 30][0] == pytest.approx(0.5 / (2 * math.pi * 4), rel=0.05)
    with pytest.raises(ValueError, match="smooth"):
        decode_heatmaps(heat, 0.1, smooth=-1.0)
