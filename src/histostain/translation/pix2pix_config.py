"""pix2pix training options (``histostain train pix2pix``), with the reference's defaults; no torch here.

The defaults are those of junyanz/pytorch-CycleGAN-and-pix2pix ``--model pix2pix``: a ``unet_256`` generator
with batch norm and dropout, the conditional 70x70 PatchGAN (``basic``, 6 input channels: A and B), N(0, 0.02)
init, the vanilla GAN loss (BCE with logits), ``lambda_L1`` 100, no image pool, Adam 2e-4 with betas
(0.5, 0.999), 100 epochs at a constant rate then 100 of linear decay, batch size 1.

``loss = "pyramid"`` is PyramidPix2pix's multi-scale L1 (bupt-ai-cz/BCI, ``--pattern L1_L2_L3_L4``;
:mod:`histostain.translation.pyramid_loss`); ``lambda_l1`` then defaults to its published 25 (its ``lambda_L1``
and ``weight_L2/L3/L4`` are all 25). ``norm_mode`` is how batch norm runs at validation (default ``per-input``,
measured) and is recorded in the checkpoints for ``translate --norm-mode`` (BCI's eval-mode pitfall; see
``docs/commands/train-pix2pix.md``).

The CLI reads these defaults and descriptions to build ``histostain train pix2pix --help``, which is why the
module stays free of torch.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from histostain.runtime.training.options import LoopOptions, loop_default

if TYPE_CHECKING:
    from histostain.runtime.training.state import FitResult

DOMAINS = {"ihc2he": ("IHC", "HE"), "he2ihc": ("HE", "IHC")}
SOURCES = ("bci", "labels")
LOSSES = ("l1", "pyramid")
LAMBDA_L1 = {"l1": 100.0, "pyramid": 25.0}  # pix2pix's lambda_L1; PyramidPix2pix's lambda_L1 = weight_L2/3/4
RESNET_NETS = ("resnet_9blocks", "resnet_6blocks")
_UNET = re.compile(r"^unet_(\d+)$")
# the inference mode of batch norm chosen by validation on a trained model: per-input was ahead in 15 of 20
# validations of the synthetic-BCI run in docs/commands/train-pix2pix.md (eval: the reference's --eval)
DEFAULT_VAL_NORM_MODE = "per-input"
# options a resumed run must keep: they define the networks, the losses' form, the optimiser or the data order
RESUME_FIXED = (
    "source",
    "direction",
    "net_g",
    "net_d",
    "ngf",
    "ndf",
    "n_layers_d",
    "norm",
    "dropout",
    "loss",
    "batch_size",
    "seed",
)


class Pix2PixConfig(LoopOptions):
    """Every pix2pix training option, with the reference defaults; loadable from TOML, overridden by flags."""

    command: ClassVar[str] = "train pix2pix"
    resume_fixed: ClassVar[tuple[str, ...]] = RESUME_FIXED
    summary_losses: ClassVar[tuple[str, ...]] = ("G", "G_GAN", "G_L1", "D")

    # data
    source: Literal["bci", "labels"] = Field(
        "bci", description="training pairs: bci (prepared BCI H&E/IHC) or labels (prepared PanNuke label map -> H&E)"
    )
    direction: Literal["he2ihc", "ihc2he"] = Field(
        "he2ihc", description="he2ihc (A = H&E, B = IHC: the BCI benchmark's direction) or ihc2he (bci source only)"
    )
    crop: int | None = Field(256, ge=8, description="random crop side, a multiple of 4 (None: whole patches)")
    augment: bool = Field(True, description="random crop position and the 8 flips/rotations, the same for A and B")
    # networks
    net_g: str = Field(
        "unet_256", description="generator: unet_256, unet_128 (any unet_<2^k>, k >= 5) or resnet_9blocks"
    )
    net_d: Literal["basic", "n_layers"] = Field(
        "basic", description="discriminator: basic (70x70 PatchGAN) or n_layers"
    )
    ngf: int = Field(64, ge=1, description="generator width")
    ndf: int = Field(64, ge=1, description="discriminator width")
    n_layers_d: int = Field(3, ge=1, description="discriminator layers (net_d n_layers)")
    norm: Literal["batch", "instance", "none"] = "batch"
    dropout: bool = Field(True, description="dropout 0.5 in the generator (the pix2pix default)")
    init_gain: float = Field(0.02, gt=0)
    # losses
    gan_mode: Literal["vanilla", "lsgan"] = Field("vanilla", description="GAN loss: vanilla (BCE with logits) or lsgan")
    loss: Literal["l1", "pyramid"] = Field(
        "l1", description="reconstruction loss: l1 (pix2pix) or pyramid (PyramidPix2pix: L1 on 4 Gaussian octaves)"
    )
    lambda_l1: float = Field(
        100.0, ge=0, description="weight of the reconstruction loss (pix2pix lambda_L1; PyramidPix2pix 25)"
    )
    # optimisation
    lr: float = Field(2e-4, gt=0, description="Adam learning rate")
    beta1: float = Field(0.5, ge=0, lt=1)
    beta2: float = Field(0.999, ge=0, lt=1)
    epochs: int = Field(100, ge=0, description="epochs at the initial learning rate")
    epochs_decay: int = Field(100, ge=0, description="epochs of linear decay to ~0 after them")
    batch_size: int = Field(1, ge=1, description="batch size per process")
    # the loop: the reference's display_freq; validation every 5 epochs, best.pt by val_ssim
    sample_every: int = loop_default("sample_every", 400)
    val_every: int = loop_default("val_every", 5)
    best_metric: str | None = loop_default("best_metric", "val_ssim")
    # validation and inference
    norm_mode: Literal["eval", "per-input"] = Field(
        DEFAULT_VAL_NORM_MODE,
        description="batch norm at validation (recorded for translate --norm-mode): per-input (each image's own "
        "statistics, as in training at batch 1) or eval (running statistics)",
    )
    val_compare_modes: bool = Field(True, description="also validate with the other norm mode (val_*_<mode> columns)")
    val_max_images: int = Field(200, ge=1, description="validate on the first N val patches")

    @model_validator(mode="before")
    @classmethod
    def _loss_default_weight(cls, values: Any) -> Any:
        """``lambda_l1`` not given: the published weight of the chosen loss (100 pix2pix, 25 PyramidPix2pix)."""
        if isinstance(values, Mapping) and values.get("lambda_l1") is None:
            loss = str(values.get("loss") or "l1").lower()
            values = {**values, "lambda_l1": LAMBDA_L1.get(loss, LAMBDA_L1["l1"])}
        return values

    @field_validator("direction", "loss", "source", "net_g", "norm_mode", mode="before")
    @classmethod
    def _any_case(cls, value: Any) -> Any:
        return value.strip().lower().replace("per_input", "per-input") if isinstance(value, str) else value

    @field_validator("net_g")
    @classmethod
    def _check_net(cls, value: str) -> str:
        match = _UNET.match(value)
        if value in RESNET_NETS:
            return value
        if match:
            side = int(match.group(1))
            if side >= 32 and side & (side - 1) == 0:
                return value
        raise ValueError(
            f"netG must be unet_<2^k>, k >= 5 (unet_256, unet_128, ...) or resnet_9blocks/6blocks: {value!r}"
        )

    @model_validator(mode="after")
    def _check(self) -> Pix2PixConfig:
        if self.epochs + self.epochs_decay < 1:
            raise ValueError("epochs + epochs_decay must be at least 1")
        if self.crop is not None and self.crop % 4:
            raise ValueError(f"crop must be a multiple of 4, got {self.crop}")
        return self

    @property
    def total_epochs(self) -> int:
        return self.epochs + self.epochs_decay

    def batch_size_for_epoch(self, epoch: int) -> int:
        return self.batch_size

    @property
    def domains(self) -> tuple[str, str]:
        """(A, B): the stains of input and target (``LABELS`` for a colour-coded label map)."""
        if self.source == "labels":
            return "LABELS", "HE"
        return DOMAINS[self.direction]

    @property
    def translation(self) -> str:
        """What the generator translates: ``he2ihc`` / ``ihc2he``, or ``labels2he``."""
        return "labels2he" if self.source == "labels" else self.direction

    def summary_rows(self, result: FitResult) -> list[tuple[str, str]]:
        domain_a, domain_b = self.domains
        loss = f"{self.loss} x {self.lambda_l1:g} + {self.gan_mode} GAN"
        return [
            ("translation", f"{self.translation} (A = {domain_a}, B = {domain_b})"),
            ("generator", f"{self.net_g} ngf {self.ngf}, {self.norm} norm, loss {loss}, norm mode {self.norm_mode}"),
        ]


def resolve_config(
    *,
    config_file: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    base: Mapping[str, Any] | None = None,
) -> Pix2PixConfig:
    """defaults < ``base`` (a resumed run's config) < ``config_file`` < ``overrides`` (flags; None = not given)."""
    return Pix2PixConfig.resolve(config_file=config_file, overrides=overrides, base=base)


def check_resume_compatible(stored: Pix2PixConfig, resolved: Pix2PixConfig) -> None:
    """Refuse options that cannot change when resuming (they define the networks, losses or data order)."""
    stored.check_resume(resolved)


__all__ = [
    "DEFAULT_VAL_NORM_MODE",
    "DOMAINS",
    "LAMBDA_L1",
    "LOSSES",
    "RESUME_FIXED",
    "SOURCES",
    "Pix2PixConfig",
    "check_resume_compatible",
    "resolve_config",
]
