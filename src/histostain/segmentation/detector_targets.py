"""Heatmap targets and the loss of the keypoint detector (:mod:`histostain.segmentation.detector`).

* :func:`gaussian_targets`: one ``H x W`` channel per class with an unnormalised Gaussian at each keypoint,
  exactly 1.0 at the keypoint's (rounded) pixel, truncated at ``ceil(3 sigma)`` pixels; overlapping Gaussians
  of one class take the maximum, not the sum, so close nuclei keep two separate peaks of 1.0.
* :func:`sigma_from_um`: the Gaussian's sigma in pixels for a target radius in micrometres.
* :func:`penalty_reduced_focal_loss`: CornerNet/CenterNet's variant of the focal loss.

Coordinates are ``(x, y)`` = (column, row) in the pixel-centre convention of
:mod:`histostain.datasets.augment`: pixel ``(row, col)`` has its centre at ``(x, y) = (col, row)``.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from histostain.segmentation.points import keypoint_pixels

SIGMA_RANGE = 3.0  # Gaussians are truncated at ceil(SIGMA_RANGE * sigma) pixels from the centre
DEFAULT_EPS = 1e-4  # CenterNet clamps sigmoid outputs to [1e-4, 1 - 1e-4]


def sigma_from_um(radius_um: float, mpp: float) -> float:
    """Sigma in pixels of a Gaussian target whose radius (its truncation at 3 sigma) is ``radius_um`` um, at
    ``mpp`` micrometres per pixel: ``radius_um / (3 * mpp)``. At EndoNuke's prepared scale (0.25 um/px) a
    3 um radius, the detection matching radius, gives sigma = 4 px and targets 12 px in radius."""
    if not (math.isfinite(radius_um) and radius_um > 0):
        raise ValueError(f"radius_um must be a positive number of micrometres, got {radius_um}")
    if not (math.isfinite(mpp) and mpp > 0):
        raise ValueError(f"mpp must be a positive number of micrometres per pixel, got {mpp}")
    return float(radius_um) / (SIGMA_RANGE * float(mpp))


def gaussian_targets(
    points: np.ndarray | torch.Tensor,
    classes: np.ndarray | torch.Tensor,
    shape: tuple[int, int],
    num_classes: int,
    sigma_px: float,
) -> np.ndarray:
    """``num_classes x H x W`` float32 heatmaps: at each point of class ``c`` an unnormalised Gaussian
    ``exp(-d^2 / (2 sigma^2))`` around its rounded pixel (exactly 1.0 there), cut off beyond
    ``ceil(3 sigma)`` pixels (Chebyshev window), merged with the others of channel ``c`` by the maximum."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    classes = np.asarray(classes, dtype=np.int64).reshape(-1)
    height, width = (int(shape[0]), int(shape[1]))
    if len(points) != len(classes):
        raise ValueError(f"{len(points)} points but {len(classes)} classes")
    if num_classes < 1 or height < 1 or width < 1:
        raise ValueError(f"num_classes and the shape must be positive, got {num_classes} and {shape}")
    if not (math.isfinite(sigma_px) and sigma_px > 0):
        raise ValueError(f"sigma_px must be a positive number of pixels, got {sigma_px}")
    if len(classes) and (classes.min() < 0 or classes.max() >= num_classes):
        raise ValueError(f"classes must be in 0..{num_classes - 1}, got {sorted(set(classes.tolist()))}")
    targets = np.zeros((num_classes, height, width), dtype=np.float32)
    radius = math.ceil(SIGMA_RANGE * sigma_px)
    offsets = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-(offsets[:, None] ** 2 + offsets[None, :] ** 2) / (2 * sigma_px**2)).astype(np.float32)
    rows, cols = keypoint_pixels(points, (height, width))
    for row, col, cls in zip(rows, cols, classes, strict=True):
        r0, r1 = max(row - radius, 0), min(row + radius + 1, height)
        c0, c1 = max(col - radius, 0), min(col + radius + 1, width)
        patch = kernel[r0 - row + radius : r1 - row + radius, c0 - col + radius : c1 - col + radius]
        np.maximum(targets[cls, r0:r1, c0:c1], patch, out=targets[cls, r0:r1, c0:c1])
    return targets


def penalty_reduced_focal_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    alpha: float = 2.0,
    beta: float = 4.0,
    eps: float = DEFAULT_EPS,
) -> torch.Tensor:
    """Penalty-reduced pixel-wise focal loss (Law & Deng, CornerNet 2018; Zhou et al., CenterNet 2019).

    With ``p = clamp(sigmoid(logits), eps, 1 - eps)`` and target ``y`` (both ``B x C x H x W``)::

        loss = -1/N * sum( (1 - p)^alpha log(p)                 where y == 1
                           (1 - y)^beta p^alpha log(1 - p)      elsewhere )

    with ``N`` the number of positive pixels (``y == 1``) in the batch, or 1 when there are none.

    Why this loss for sparse peaks: a nucleus centre is one pixel among hundreds, so a plain per-pixel BCE or
    MSE is dominated by the easy background and is minimised by predicting almost nothing. The focal factors
    ``(1 - p)^alpha`` and ``p^alpha`` down-weight pixels already predicted well, and normalising by the number
    of centres makes the loss per nucleus, independent of the image size and the nucleus density. The
    ``(1 - y)^beta`` factor reduces the penalty on near-centre pixels (where the Gaussian target is close to 1),
    so a peak one pixel off is penalised only a little: the precise location is learnt from the single
    positive pixel while its neighbours are not punished as hard negatives. The clamp keeps ``log`` finite
    (CenterNet's choice of ``eps = 1e-4``).
    """
    if logits.shape != targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} differ in shape")
    prob = torch.sigmoid(logits).clamp(eps, 1 - eps)
    targets = targets.to(prob.dtype)
    positive = targets.eq(1).to(prob.dtype)
    negative = 1 - positive
    pos_loss = torch.log(prob) * (1 - prob) ** alpha * positive
    neg_loss = torch.log(1 - prob) * prob**alpha * (1 - targets) ** beta * negative
    count = positive.sum().clamp(min=1)
    return -(pos_loss.sum() + neg_loss.sum()) / count


__all__ = ["gaussian_targets", "keypoint_pixels", "penalty_reduced_focal_loss", "sigma_from_um"]
