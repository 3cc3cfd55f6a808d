"""HoVer-Net losses (reference: ``vqdang/hover_net`` ``models/hovernet/utils.py`` and ``run_desc.train_step``).

* NP: categorical cross-entropy + soft Dice on the 2-class softmax;
* TP: the same over all ``num_types`` channels (background included);
* HV: MSE over every pixel and both channels + MSGE, the MSE of 5x5 "Sobel-like" gradients (kernel
  ``d / (h^2 + v^2)``) on ground-truth nuclear pixels only.

Conventions match the reference exactly: cross-entropy on probabilities clamped to ``[1e-7, 1 - 1e-7]`` and
averaged over pixels; Dice summed over channels, each aggregated over the whole batch (N, H, W), smooth 1e-3;
MSGE summed and divided by ``2 * (number of nuclear pixels) + 1e-8``.

MSGE orientation. The reference builds its kernels with ``torch.meshgrid`` in 'ij' indexing, so the kernel it
applies to HV channel 0 (the x map) differentiates along rows and the one applied to channel 1 (the y map)
along columns: it penalises d(x_map)/dy and d(y_map)/dx. The TensorFlow original computes the same, and the
released weights were trained with it, so this is the default (``msge_orientation="reference"``). The paper
(and MONAI) describe d(x_map)/dx and d(y_map)/dy: ``msge_orientation="paper"``.

Everything runs on the device and dtype of its inputs (the reference hard-codes CUDA).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

Orientation = Literal["reference", "paper"]
_CE_EPS = 1e-7
_DICE_SMOOTH = 1e-3
_FOCUS_EPS = 1e-8


@dataclass(frozen=True)
class LossWeights:
    """Weight of each term. Defaults are the PyTorch reference (all 1); the TensorFlow original and MONAI use
    ``hv_mse=2`` (``LossWeights.tensorflow()``)."""

    np_ce: float = 1.0
    np_dice: float = 1.0
    hv_mse: float = 1.0
    hv_msge: float = 1.0
    tp_ce: float = 1.0
    tp_dice: float = 1.0

    @classmethod
    def tensorflow(cls) -> LossWeights:
        """The TF release's weights: ``{'bce': 1, 'dice': 1, 'mse': 2, 'msge': 1}``."""
        return cls(hv_mse=2.0)


def xentropy_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over pixels of ``-log p[target]``, p = softmax over dim 1 clamped to [1e-7, 1 - 1e-7] as the
    reference does (so the loss is bounded by -log 1e-7 and never exactly 0). ``target``: (N, H, W) class ids."""
    log_prob = F.log_softmax(logits, dim=1).clamp(min=math.log(_CE_EPS), max=math.log1p(-_CE_EPS))
    return -log_prob.gather(1, target.long().unsqueeze(1)).mean()


def dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = _DICE_SMOOTH) -> torch.Tensor:
    """Soft Dice of the softmax against one-hot ``target`` (N, H, W), per channel over N, H, W, summed over
    channels: ``sum_c 1 - (2 I_c + s) / (P_c + T_c + s)``."""
    prob = F.softmax(logits, dim=1)
    onehot = F.one_hot(target.long(), num_classes=logits.shape[1]).permute(0, 3, 1, 2).to(prob.dtype)
    dims = (0, 2, 3)
    inter = (prob * onehot).sum(dims)
    total = prob.sum(dims) + onehot.sum(dims)
    return (1.0 - (2.0 * inter + smooth) / (total + smooth)).sum()


def mse_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error over every pixel and channel."""
    return ((pred - target) ** 2).mean()


def sobel_kernels(size: int = 5, *, dtype: torch.dtype = torch.float32, device=None) -> tuple[torch.Tensor, ...]:
    """``(d_row, d_col)`` kernels ``r / (r^2 + c^2)`` and ``c / (r^2 + c^2)`` (0 at the centre), each (size, size).

    Applied with ``conv2d`` (cross-correlation), ``d_row`` is a positive derivative along rows (y) and ``d_col``
    along columns (x). The reference's ``kernel_h`` is ``d_row`` and its ``kernel_v`` is ``d_col``.
    """
    if size % 2 != 1:
        raise ValueError(f"kernel size must be odd, got {size}")
    half = size // 2
    axis = torch.arange(-half, half + 1, dtype=dtype, device=device)
    rows, cols = torch.meshgrid(axis, axis, indexing="ij")
    norm = rows * rows + cols * cols + 1.0e-15
    return rows / norm, cols / norm


def hv_gradients(hv: torch.Tensor, orientation: Orientation = "reference") -> torch.Tensor:
    """(N, 2, H, W) gradients of an HV map: reference = (d ch0/dy, d ch1/dx), paper = (d ch0/dx, d ch1/dy)."""
    d_row, d_col = sobel_kernels(5, dtype=hv.dtype, device=hv.device)
    if orientation == "reference":
        first, second = d_row, d_col
    elif orientation == "paper":
        first, second = d_col, d_row
    else:
        raise ValueError(f"msge orientation must be 'reference' or 'paper', got {orientation!r}")
    weight = torch.stack([first, second]).unsqueeze(1)  # (2, 1, 5, 5), one kernel per channel
    return F.conv2d(hv, weight, padding=2, groups=2)


def msge_loss(
    pred: torch.Tensor, target: torch.Tensor, focus: torch.Tensor, orientation: Orientation = "reference"
) -> torch.Tensor:
    """MSE of HV gradients on nuclear pixels: sum over focus pixels and both channels / (2 * |focus| + 1e-8).

    ``pred``/``target``: (N, 2, H, W); ``focus``: (N, H, W), 1 on ground-truth nuclei.
    """
    focus = focus.to(pred.dtype).unsqueeze(1)
    diff = hv_gradients(pred, orientation) - hv_gradients(target, orientation)
    return (focus * diff * diff).sum() / (2.0 * focus.sum() + _FOCUS_EPS)


class HoVerNetLoss(nn.Module):
    """The reference's weighted sum of all terms.

    ``forward(pred, target)``: ``pred`` is the network's dict of logits (``np``, ``hv``, optional ``tp``; NCHW);
    ``target`` has ``np`` (N, H, W) 0/1, ``hv`` (N, 2, H, W) and, when ``pred`` has ``tp``, ``tp`` (N, H, W) ids.
    Returns ``(total, terms)`` where ``terms`` maps ``np_ce``, ``np_dice``, ``hv_mse``, ``hv_msge``, ``tp_ce``,
    ``tp_dice`` to the unweighted values (detached) for logging.
    """

    def __init__(self, weights: LossWeights | None = None, msge_orientation: Orientation = "reference") -> None:
        super().__init__()
        if msge_orientation not in ("reference", "paper"):
            raise ValueError(f"msge orientation must be 'reference' or 'paper', got {msge_orientation!r}")
        self.weights = weights or LossWeights()
        self.msge_orientation = msge_orientation

    def forward(
        self, pred: dict[str, torch.Tensor], target: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        # half-precision logits (autocast) are scored in float32: softmax, logs and sums need the range
        pred = {
            name: value.float() if value.dtype in (torch.float16, torch.bfloat16) else value
            for name, value in pred.items()
        }
        true_np = target["np"].long()
        true_hv = target["hv"].to(pred["hv"].dtype)
        terms = {
            "np_ce": xentropy_loss(pred["np"], true_np),
            "np_dice": dice_loss(pred["np"], true_np),
            "hv_mse": mse_loss(pred["hv"], true_hv),
            "hv_msge": msge_loss(pred["hv"], true_hv, true_np, self.msge_orientation),
        }
        if "tp" in pred:
            if "tp" not in target:
                raise KeyError("the network predicts types ('tp') but the target has no 'tp' map")
            true_tp = target["tp"].long()
            terms["tp_ce"] = xentropy_loss(pred["tp"], true_tp)
            terms["tp_dice"] = dice_loss(pred["tp"], true_tp)
        weights = asdict(self.weights)
        total = sum(weights[name] * value for name, value in terms.items())
        return total, {name: value.detach() for name, value in terms.items()}


__all__ = [
    "HoVerNetLoss",
    "LossWeights",
    "dice_loss",
    "hv_gradients",
    "msge_loss",
    "mse_loss",
    "sobel_kernels",
    "xentropy_loss",
]
