"""CycleGAN training options (``histostain train cyclegan``), with the reference's defaults; no torch here.

The defaults are those of junyanz/pytorch-CycleGAN-and-pix2pix (``--model cycle_gan``): ResNet-9 generators,
70x70 PatchGAN discriminators, instance norm, no dropout, N(0, 0.02) init, LSGAN, cycle weights 10/10, identity
0.5, image pools of 50, Adam 2e-4 with betas (0.5, 0.999), 100 epochs at a constant rate then 100 of linear
decay, batch size 1. The loop options (workers, seed, logging, checkpoints, validation) are the shared
:class:`~histostain.runtime.training.options.LoopOptions`; CycleGAN overrides the defaults the reference
publishes (``display_freq`` 400) or that suit it (validation every 5 epochs, best.pt by ``val_ssim``).

The CLI reads these defaults and descriptions to build ``histostain train cyclegan --help``, which is why the
module stays free of torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from histostain.runtime.training.options import LoopOptions, loop_default

if TYPE_CHECKING:
    from histostain.runtime.training.state import FitResult

DOMAINS = {"ihc2he": ("IHC", "HE"), "he2ihc": ("HE", "IHC")}
# options a resumed run must keep: they define the networks, the optimiser or the data order
RESUME_FIXED = ("direction", "ngf", "ndf", "n_blocks", "n_layers_d", "norm", "dropout", "batch_size", "seed")


class CycleGANConfig(LoopOptions):
    """Every training option, with the reference defaults; loadable from TOML, overridden by CLI flags."""

    command: ClassVar[str] = "train cyclegan"
    resume_fixed: ClassVar[tuple[str, ...]] = RESUME_FIXED
    summary_losses: ClassVar[tuple[str, ...]] = ("G", "D_A", "D_B", "cycle_A", "cycle_B")

    # data
    direction: Literal["ihc2he", "he2ihc"] = Field(
        "ihc2he", description="translation A -> B: ihc2he (A = IHC, B = H&E; G_A translates IHC to H&E) or he2ihc"
    )
    paired_sampling: bool = Field(False, description="draw B as A's partner (False: at random, as the reference)")
    crop: int | None = Field(256, ge=8, description="random crop side, a multiple of 4 (None: whole patches)")
    augment: bool = Field(True, description="random crop position and the 8 flips/rotations")
    # networks
    ngf: int = Field(64, ge=1, description="generator width")
    ndf: int = Field(64, ge=1, description="discriminator width")
    n_blocks: int = Field(9, ge=0, description="generator residual blocks")
    n_layers_d: int = Field(3, ge=1, description="discriminator layers")
    norm: Literal["instance", "batch", "none"] = "instance"
    dropout: bool = False
    init_gain: float = Field(0.02, gt=0)
    # losses
    gan_mode: Literal["lsgan", "vanilla"] = "lsgan"
    lambda_a: float = Field(10.0, ge=0, description="cycle weight A->B->A")
    lambda_b: float = Field(10.0, ge=0, description="cycle weight B->A->B")
    lambda_identity: float = Field(0.5, ge=0, description="identity weight, relative to the cycle weight")
    pool_size: int = Field(50, ge=0, description="image history pool size shown to the discriminators, 0 = none")
    # optimisation
    lr: float = Field(2e-4, gt=0, description="Adam learning rate")
    beta1: float = Field(0.5, ge=0, lt=1)
    beta2: float = Field(0.999, ge=0, lt=1)
    epochs: int = Field(100, ge=0, description="epochs at the initial learning rate")
    epochs_decay: int = Field(100, ge=0, description="epochs of linear decay to ~0 after them")
    batch_size: int = Field(1, ge=1, description="batch size per process")
    # the loop: the reference's display_freq; validation is costly next to an epoch of BCI, so every 5
    sample_every: int = loop_default("sample_every", 400)
    val_every: int = loop_default("val_every", 5)
    best_metric: str | None = loop_default("best_metric", "val_ssim")
    # validation
    val_max_images: int = Field(200, ge=1, description="validate on the first N val patches")
    val_fid: bool = Field(False, description="also FID of translated A vs real B on val (needs the FID weights)")
    fid_weights: str | None = Field(None, description="pt_inception-2015-12-05-6726825d.pth for val_fid")

    @field_validator("direction", mode="before")
    @classmethod
    def _any_case(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _check(self) -> CycleGANConfig:
        if self.epochs + self.epochs_decay < 1:
            raise ValueError("epochs + epochs_decay must be at least 1")
        if self.crop is not None and self.crop % 4:
            raise ValueError(f"crop must be a multiple of 4 (the generator halves the size twice), got {self.crop}")
        return self

    @property
    def total_epochs(self) -> int:
        return self.epochs + self.epochs_decay

    def batch_size_for_epoch(self, epoch: int) -> int:
        return self.batch_size

    @property
    def domains(self) -> tuple[str, str]:
        return DOMAINS[self.direction]

    @classmethod
    def flag_overrides(cls, flags: Mapping[str, Any]) -> dict[str, Any]:
        """``lambda_cycle`` (the ``--lambda-cycle`` flag) sets both cycle weights, ``lambda_a`` and ``lambda_b``."""
        values = super().flag_overrides(flags)
        both = values.pop("lambda_cycle", None)
        if both is not None:
            values["lambda_a"] = values["lambda_b"] = both
        return values

    def summary_rows(self, result: FitResult) -> list[tuple[str, str]]:
        domain_a, domain_b = self.domains
        return [("direction", f"{self.direction} (A = {domain_a}, B = {domain_b})")]


def resolve_config(
    *,
    config_file: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    base: Mapping[str, Any] | None = None,
) -> CycleGANConfig:
    """defaults < ``base`` (a resumed run's config) < ``config_file`` < ``overrides`` (flags; None = not given)."""
    return CycleGANConfig.resolve(config_file=config_file, overrides=overrides, base=base)


def check_resume_compatible(stored: CycleGANConfig, resolved: CycleGANConfig) -> None:
    """Refuse options that cannot change when resuming (they define the networks, optimiser or data order)."""
    stored.check_resume(resolved)


__all__ = ["DOMAINS", "RESUME_FIXED", "CycleGANConfig", "check_resume_compatible", "resolve_config"]
