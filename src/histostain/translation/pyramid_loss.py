"""PyramidPix2pix's multi-scale L1 loss (bupt-ai-cz/BCI ``PyramidPix2pix``, ``--pattern L1_L2_L3_L4``).

The published loss (``models/pix2pix_model.py::backward_G``) compares the generated and the real target at four
scales::

    L = w1 |fake - real|_1 + w2 |P1(fake) - P1(real)|_1 + w3 |P2(fake) - P2(real)|_1 + w4 |P3(fake) - P3(real)|_1

with ``|.|_1`` the mean absolute difference and ``P_k`` the k-th octave of a Gaussian pyramid: octave k + 1 is
octave k blurred **four times** with a 3 x 3 Gaussian of sigma 1 (``kornia.filters.gaussian_blur2d(x, (3, 3),
(1, 1))``: the separable kernel ``[e^-1/2, 1, e^-1/2] / (1 + 2 e^-1/2)`` = ``[0.2741, 0.4519, 0.2741]``, reflect
padding without repeating the edge pixel) and then subsampled by 2 (``kornia.filters.blur_pool2d(x, 1,
stride=2)``: a 1 x 1 kernel, i.e. every second pixel starting at the first, ``x[..., ::2, ::2]``). The
published weights are all 25 (``lambda_L1 = weight_L2 = weight_L3 = weight_L4 = 25``).

Here the module returns the **unweighted-by-lambda** sum ``sum_k r_k L_k`` with relative weights ``r = (1, 1,
1, 1)`` and the trainer multiplies by ``lambda_l1`` (25 by default with ``--loss pyramid``), which is exactly the
published ``25 L1 + 25 L2 + 25 L3 + 25 L4``. kornia is not a dependency: the blur is a depthwise convolution with
the same kernel and padding (checked against a hand computation with scipy in the tests).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

PUBLISHED_LAMBDA = 25.0  # PyramidPix2pix's lambda_L1 (and weight_L2, weight_L3, weight_L4)
RELATIVE_WEIGHTS = (1.0, 1.0, 1.0, 1.0)  # full scale, octaves 1..3, relative to lambda_L1 (25 / 25 each)
BLURS_PER_OCTAVE = 4
SIGMA = 1.0
KERNEL_SIZE = 3


def gaussian_kernel1d(size: int = KERNEL_SIZE, sigma: float = SIGMA) -> torch.Tensor:
    """kornia's ``get_gaussian_kernel1d``: ``exp(-x^2 / (2 sigma^2))`` at ``x = -(size // 2) .. size // 2``, sum 1."""
    x = torch.arange(size, dtype=torch.float64) - size // 2
    kernel = torch.exp(-(x**2) / (2.0 * sigma**2))
    return kernel / kernel.sum()


class PyramidL1Loss(nn.Module):
    """``sum_k weights[k] * mean|P_k(fake) - P_k(real)|`` over the full scale and the Gaussian octaves.

    ``weights[0]`` is the full scale; ``len(weights) - 1`` octaves follow (3 as published). Inputs are
    ``N x C x H x W``; every octave halves the sides (rounding up), so it needs sides of at least 2 at each blur.
    :meth:`terms` returns the unweighted per-scale L1 values.
    """

    def __init__(
        self,
        weights: Sequence[float] = RELATIVE_WEIGHTS,
        *,
        sigma: float = SIGMA,
        kernel_size: int = KERNEL_SIZE,
        blurs: int = BLURS_PER_OCTAVE,
    ) -> None:
        super().__init__()
        if not weights or any(not math.isfinite(w) or w < 0 for w in weights):
            raise ValueError(f"pyramid weights must be non-negative numbers, got {list(weights)}")
        self.weights = tuple(float(w) for w in weights)
        self.blurs = int(blurs)
        self.pad = kernel_size // 2
        kernel1d = gaussian_kernel1d(kernel_size, sigma)
        self.register_buffer("kernel", torch.outer(kernel1d, kernel1d).float(), persistent=False)

    def blur(self, x: torch.Tensor) -> torch.Tensor:
        """One 3 x 3 Gaussian blur per channel, reflect padding (kornia ``gaussian_blur2d``'s default)."""
        channels = x.shape[1]
        weight = self.kernel.to(dtype=x.dtype, device=x.device).expand(channels, 1, *self.kernel.shape)
        return F.conv2d(F.pad(x, (self.pad,) * 4, mode="reflect"), weight, groups=channels)

    def next_octave(self, x: torch.Tensor) -> torch.Tensor:
        """``blurs`` blurs, then every second pixel (kornia ``blur_pool2d(x, 1, stride=2)``)."""
        for _ in range(self.blurs):
            x = self.blur(x)
        return x[..., ::2, ::2]

    def terms(self, fake: torch.Tensor, real: torch.Tensor) -> list[torch.Tensor]:
        """The unweighted L1 of every scale: full scale first, then each octave."""
        fake, real = fake.float(), real.float()
        values = [F.l1_loss(fake, real)]
        for _ in range(len(self.weights) - 1):
            fake, real = self.next_octave(fake), self.next_octave(real)
            values.append(F.l1_loss(fake, real))
        return values

    def forward(self, fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        return sum(
            (w * term for w, term in zip(self.weights, self.terms(fake, real), strict=True)),
            start=fake.new_zeros((), dtype=torch.float32),
        )


__all__ = ["BLURS_PER_OCTAVE", "PUBLISHED_LAMBDA", "RELATIVE_WEIGHTS", "PyramidL1Loss", "gaussian_kernel1d"]
