"""HoVer-Net losses: hand-computed values, zero at the target, MSGE orientation closed form, gradients."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from histostain.segmentation.losses import (
    HoVerNetLoss,
    LossWeights,
    dice_loss,
    hv_gradients,
    msge_loss,
    sobel_kernels,
    xentropy_loss,
)


def perfect_logits(target: torch.Tensor, classes: int, scale: float = 40.0) -> torch.Tensor:
    return scale * (2 * F.one_hot(target, classes).permute(0, 3, 1, 2).double() - 1)


def random_batch(seed: int = 0, size: int = 12, types: int = 4):
    gen = torch.Generator().manual_seed(seed)
    true_np = (torch.rand(2, size, size, generator=gen) > 0.5).long()
    target = {
        "np": true_np,
        "hv": (torch.rand(2, 2, size, size, generator=gen, dtype=torch.float64) * 2 - 1) * true_np[:, None],
        "tp": torch.randint(0, types, (2, size, size), generator=gen) * true_np,
    }
    return target


def test_cross_entropy_hand_values():
    logits = torch.tensor([0.0, math.log(3.0)]).view(1, 2, 1, 1)  # softmax = (1/4, 3/4)
    assert xentropy_loss(logits, torch.tensor([[[1]]])).item() == pytest.approx(-math.log(0.75))
    assert xentropy_loss(logits, torch.tensor([[[0]]])).item() == pytest.approx(math.log(4.0))
    hopeless = torch.tensor([0.0, 100.0]).view(1, 2, 1, 1)  # p(class 0) = e^-100, clamped at 1e-7
    assert xentropy_loss(hopeless, torch.tensor([[[0]]])).item() == pytest.approx(-math.log(1e-7), rel=1e-6)


def test_dice_hand_values():
    # two pixels, probabilities (0.5, 0.5) for channel 1 and (0.5, 0.5) for channel 0; target: one pixel each
    logits = torch.zeros(1, 2, 1, 2)
    target = torch.tensor([[[0, 1]]])
    s = 1e-3
    per_channel = 1 - (2 * 0.5 + s) / (1.0 + 1.0 + s)
    assert dice_loss(logits, target).item() == pytest.approx(2 * per_channel)


def test_all_terms_are_zero_at_the_target_and_positive_elsewhere():
    target = random_batch()
    pred = {
        "np": perfect_logits(target["np"], 2),
        "hv": target["hv"].clone(),
        "tp": perfect_logits(target["tp"], 4),
    }
    total, terms = HoVerNetLoss()(pred, target)
    assert terms["hv_mse"] == 0 and terms["hv_msge"] == 0
    assert terms["np_dice"] < 1e-9 and terms["tp_dice"] < 1e-9
    # the reference clamps probabilities at 1 - 1e-7, so a perfect prediction costs -log(1 - 1e-7) ~ 1e-7
    assert 0 <= terms["np_ce"] <= 1.1e-7 and 0 <= terms["tp_ce"] <= 1.1e-7
    assert total < 1e-6

    gen = torch.Generator().manual_seed(1)
    noisy = {
        key: value + 0.5 * torch.randn(value.shape, generator=gen, dtype=value.dtype) for key, value in pred.items()
    }
    noisy["np"] = torch.randn(pred["np"].shape, generator=gen, dtype=torch.float64)
    noisy["tp"] = torch.randn(pred["tp"].shape, generator=gen, dtype=torch.float64)
    _, terms = HoVerNetLoss()(noisy, target)
    assert set(terms) == {"np_ce", "np_dice", "hv_mse", "hv_msge", "tp_ce", "tp_dice"}
    assert all(value > 1e-3 for value in terms.values()), terms


def test_loss_weights_combine_the_terms():
    target = random_batch(3)
    gen = torch.Generator().manual_seed(2)
    pred = {
        "np": torch.randn(2, 2, 12, 12, generator=gen, dtype=torch.float64),
        "hv": torch.randn(2, 2, 12, 12, generator=gen, dtype=torch.float64),
        "tp": torch.randn(2, 4, 12, 12, generator=gen, dtype=torch.float64),
    }
    total, terms = HoVerNetLoss()(pred, target)
    assert total.item() == pytest.approx(sum(value.item() for value in terms.values()))
    weights = LossWeights.tensorflow()
    assert weights.hv_mse == 2 and weights.np_ce == weights.np_dice == weights.hv_msge == 1
    total_tf, _ = HoVerNetLoss(weights)(pred, target)
    assert total_tf.item() == pytest.approx(total.item() + terms["hv_mse"].item())


def test_untyped_predictions_skip_the_tp_terms_and_missing_targets_are_reported():
    target = random_batch(4)
    pred = {"np": torch.zeros(2, 2, 12, 12), "hv": torch.zeros(2, 2, 12, 12)}
    _, terms = HoVerNetLoss()(pred, target)
    assert set(terms) == {"np_ce", "np_dice", "hv_mse", "hv_msge"}
    pred["tp"] = torch.zeros(2, 4, 12, 12)
    with pytest.raises(KeyError, match="tp"):
        HoVerNetLoss()(pred, {"np": target["np"], "hv": target["hv"]})


def test_sobel_kernels_are_the_reference_formula():
    d_row, d_col = sobel_kernels(5, dtype=torch.float64)
    assert d_row[2, 2] == 0
    # r / (r^2 + c^2) at (r, c) = (-2, 0), (2, 0), (-1, -2), (1, 2)
    values = [d_row[0, 2].item(), d_row[4, 2].item(), d_row[1, 0].item(), d_row[3, 4].item()]
    assert values == pytest.approx([-2 / 4, 2 / 4, -1 / 5, 1 / 5], rel=1e-12)
    assert torch.equal(d_col, d_row.T)
    with pytest.raises(ValueError):
        sobel_kernels(4)


def test_msge_orientation_closed_form():
    """A unit ramp along columns in channel 0: the kernel's response is sum c^2 / (r^2 + c^2) = 24 / 2 = 12.

    paper orientation (d ch0/dx) sees 12 on every interior pixel, so MSGE = 12^2 * F / (2 F) = 72; the reference
    orientation (d ch0/dy) sees 0 there."""
    size = 16
    ramp = torch.arange(size, dtype=torch.float64).expand(size, size)
    pred = torch.stack([ramp, torch.zeros(size, size, dtype=torch.float64)])[None]
    target = torch.zeros_like(pred)
    focus = torch.zeros(1, size, size)
    focus[0, 4:12, 4:12] = 1
    grads = hv_gradients(pred, "paper")
    assert torch.allclose(grads[0, 0, 2:-2, 2:-2], torch.full((size - 4, size - 4), 12.0, dtype=torch.float64))
    assert msge_loss(pred, target, focus, "paper").item() == pytest.approx(72.0)
    assert msge_loss(pred, target, focus, "reference").item() == pytest.approx(0.0, abs=1e-12)
    transposed = torch.stack([torch.zeros(size, size, dtype=torch.float64), ramp.T])[None]  # y map ramps along rows
    assert msge_loss(transposed, target, focus, "paper").item() == pytest.approx(72.0)
    swapped = torch.stack([ramp.T, torch.zeros(size, size, dtype=torch.float64)])[None]  # x map ramping along rows
    assert msge_loss(swapped, target, focus, "reference").item() == pytest.approx(72.0)
    with pytest.raises(ValueError):
        HoVerNetLoss(msge_orientation="sideways")


@pytest.mark.parametrize("orientation", ["reference", "paper"])
def test_msge_gradient_matches_finite_differences(orientation):
    gen = torch.Generator().manual_seed(5)
    pred = torch.randn(1, 2, 7, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    target = torch.randn(1, 2, 7, 6, generator=gen, dtype=torch.float64)
    focus = (torch.rand(1, 7, 6, generator=gen) > 0.4).double()
    assert torch.autograd.gradcheck(lambda p: msge_loss(p, target, focus, orientation), (pred,))


def test_classification_terms_gradients_match_finite_differences():
    gen = torch.Generator().manual_seed(6)
    logits = torch.randn(2, 3, 4, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 3, (2, 4, 5), generator=gen)
    assert torch.autograd.gradcheck(lambda x: xentropy_loss(x, labels) + dice_loss(x, labels), (logits,))


def test_losses_follow_the_input_dtype_and_device():
    target = random_batch(7)
    pred = {"np": torch.zeros(2, 2, 12, 12, dtype=torch.bfloat16), "hv": torch.zeros(2, 2, 12, 12)}
    total, _ = HoVerNetLoss()(pred, target)
    assert total.dtype == torch.float32  # half-precision logits are scored in float32
    meta = {k: torch.empty(2, 2, 12, 12, device="meta") for k in ("np", "hv")}
    meta_target = {"np": torch.empty(2, 12, 12, device="meta", dtype=torch.long), "hv": meta["hv"]}
    total, _ = HoVerNetLoss()(meta, meta_target)  # no hard-coded device anywhere
    assert total.device.type == "meta"
