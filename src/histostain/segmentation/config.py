"""HoVer-Net training options (``histostain train hovernet``), with the reference's defaults; no torch here.

The defaults are those of ``vqdang/hover_net`` (``models/hovernet/opt.py``, ``run_train.py``): phase 1 trains with
the encoder frozen (50 epochs, batch 16), phase 2 trains everything (50 epochs, batch 4), each phase with a new
Adam (lr 1e-4, betas 0.9/0.999) and a step decay x0.1 after 25 epochs; seed 10; loss weights all 1; the
reference's MSGE orientation. The loop options (workers, seed, logging, checkpoints, validation) are the shared
:class:`~histostain.runtime.training.options.LoopOptions`; HoVer-Net overrides the defaults its reference
publishes (seed 10) or that suit it (a metrics row every 50 steps, best.pt by ``np_dice``).

Augmentation reads its strengths from here and the CLI reads defaults and descriptions to build ``--help``, so
the module imports neither torch nor the training modules (the network is imported where it is built).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from histostain.runtime.training.options import LoopOptions, loop_default
from histostain.segmentation.geometry import GEOMETRIES, HoVerNetGeometry, geometry_for

if TYPE_CHECKING:
    from histostain.runtime.training.state import FitResult
    from histostain.segmentation.hovernet import HoVerNet
    from histostain.segmentation.losses import LossWeights

# options a resumed run must keep: they define the network, the phases, the batches or the data order
RESUME_FIXED = (
    "mode",
    "num_types",
    "encoder_width",
    "units",
    "decoder_width",
    "decoder_units",
    "input_size",
    "phase1_epochs",
    "batch_size_phase1",
    "batch_size_phase2",
    "seed",
)
LOSS_TERMS = ("np_ce", "np_dice", "hv_mse", "hv_msge", "tp_ce", "tp_dice")
MODE_SIZES = ", ".join(f"{g.mode}: {g.patch_in} -> {g.patch_out}" for g in GEOMETRIES.values())


def _default_units() -> list[int]:
    from histostain.segmentation.hovernet import DEFAULT_UNITS

    return list(DEFAULT_UNITS)


def _default_decoder_units() -> list[int]:
    from histostain.segmentation.hovernet import DEFAULT_DECODER_UNITS

    return list(DEFAULT_DECODER_UNITS)


class HoVerNetConfig(LoopOptions):
    """Every training option, with the reference defaults; loadable from TOML, overridden by CLI flags."""

    command: ClassVar[str] = "train hovernet"
    resume_fixed: ClassVar[tuple[str, ...]] = RESUME_FIXED
    # training rows of metrics.csv: the weighted total and the unweighted terms
    summary_losses: ClassVar[tuple[str, ...]] = ("loss", *(f"loss_{term}" for term in LOSS_TERMS))

    # network
    mode: Literal["fast", "original"] = Field("fast", description=f"network input -> output side ({MODE_SIZES})")
    num_types: int = Field(6, ge=0, description="type classes incl. background (PanNuke: 6); 0 = no type branch")
    encoder_width: float = Field(1.0, gt=0, description="encoder channel scale (< 1 only for tests and demos)")
    units: list[int] = Field(default_factory=_default_units, description="residual units of d0..d3")
    decoder_width: float = Field(1.0, gt=0, description="decoder channel scale (< 1 only for tests and demos)")
    decoder_units: list[int] = Field(default_factory=_default_decoder_units, description="dense units of u3, u2")
    input_size: int | None = Field(None, ge=8, description="network input side (None: the patch size)")
    init: str = Field(
        "scratch",
        description="where training starts: scratch (random weights), a HoVer-Net checkpoint, or a pre-activation "
        "ResNet-50 encoder file",
    )
    # schedule (per phase)
    phase1_epochs: int = Field(50, ge=0, description="epochs with the encoder frozen")
    phase2_epochs: int = Field(50, ge=0, description="epochs training every layer")
    batch_size_phase1: int = Field(16, ge=1, description="batch size per process in phase 1")
    batch_size_phase2: int = Field(4, ge=1, description="batch size per process in phase 2")
    val_batch_size: int = Field(8, ge=1)
    lr: float = Field(1e-4, gt=0, description="Adam learning rate at the start of each phase")
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.999, ge=0, lt=1)
    decay_epoch: int = Field(25, ge=1, description="multiply the rate by gamma after this many epochs of a phase")
    gamma: float = Field(0.1, gt=0, le=1, description="StepLR factor")
    # losses
    loss_np_ce: float = Field(1.0, ge=0)
    loss_np_dice: float = Field(1.0, ge=0)
    loss_hv_mse: float = Field(1.0, ge=0, description="1 as the PyTorch reference; the TF release and MONAI use 2")
    loss_hv_msge: float = Field(1.0, ge=0)
    loss_tp_ce: float = Field(1.0, ge=0)
    loss_tp_dice: float = Field(1.0, ge=0)
    msge_orientation: Literal["reference", "paper"] = "reference"
    min_area: int = Field(30, ge=0, description="instances smaller than this get no HV target")
    # augmentation (train split only; 0 / false switches one off)
    augment: bool = Field(True, description="the 8 flips / 90-degree rotations")
    input_augment: bool = Field(True, description="blur / noise and colour jitter below")
    blur_max_ksize: int = Field(5, ge=1, description="Gaussian and median blur kernels drawn from 1, 3, .., this")
    noise_max_std: float = Field(0.05 * 255, ge=0, description="additive Gaussian noise, std ~ U(0, this) (0..255)")
    hue: float = Field(8.0, ge=0, description="hue shift ~ U(-h, h) in OpenCV units (180 = a full turn)")
    saturation: float = Field(0.2, ge=0, description="saturation factor 1 + U(-s, s)")
    brightness: float = Field(26.0, ge=0, description="brightness offset ~ U(-b, b) (0..255)")
    contrast: float = Field(0.25, ge=0, lt=1, description="contrast factor 1 + U(-c, c) about the channel means")
    # the loop: the reference's seed; a metrics row every 50 steps (an epoch of PanNuke is ~300 batches)
    seed: int = loop_default("seed", 10)
    log_every: int = loop_default("log_every", 50)
    best_metric: str | None = loop_default("best_metric", "np_dice")
    # validation
    val_max_images: int | None = Field(None, ge=1, description="validate on the first N val patches only")

    @field_validator("mode", mode="before")
    @classmethod
    def _any_case(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    @field_validator("units")
    @classmethod
    def _units(cls, value: list[int]) -> list[int]:
        if len(value) != 4 or min(value) < 1:
            raise ValueError(f"needs 4 positive unit counts (d0..d3), got {value}")
        return value

    @field_validator("decoder_units")
    @classmethod
    def _decoder_units(cls, value: list[int]) -> list[int]:
        if len(value) != 2 or min(value) < 1:
            raise ValueError(f"needs 2 positive unit counts (u3, u2), got {value}")
        return value

    @model_validator(mode="after")
    def _check(self) -> HoVerNetConfig:
        if self.phase1_epochs + self.phase2_epochs < 1:
            raise ValueError("phase1_epochs + phase2_epochs must be at least 1")
        if self.blur_max_ksize % 2 != 1:
            raise ValueError(f"blur_max_ksize must be odd, got {self.blur_max_ksize}")
        if not self.init.strip():
            raise ValueError("init must be 'scratch' or a file path")
        return self

    # ------------------------------------------------------------------ the schedule
    @property
    def total_epochs(self) -> int:
        return self.phase1_epochs + self.phase2_epochs

    def phase_of(self, epoch: int) -> int:
        """1 (encoder frozen) for the first ``phase1_epochs`` epochs (0-based), then 2."""
        return 1 if epoch < self.phase1_epochs else 2

    def phase_after(self, epochs_done: int) -> int:
        """The phase a run is in after ``epochs_done`` epochs: that of the next epoch, or, once every epoch is
        done, that of the last one (a run of phase 1 only ends in phase 1)."""
        return self.phase_of(min(epochs_done, self.total_epochs - 1))

    def batch_size(self, phase: int) -> int:
        return self.batch_size_phase1 if phase == 1 else self.batch_size_phase2

    def batch_size_for_epoch(self, epoch: int) -> int:
        return self.batch_size(self.phase_of(epoch))

    # ------------------------------------------------------------------ the network and its losses
    @property
    def types(self) -> int | None:
        """``num_types`` as the network takes it (None: no type branch)."""
        return self.num_types or None

    @property
    def reference_geometry(self) -> HoVerNetGeometry:
        """The published patch sizes and scale of ``mode`` (what the released weights were trained on)."""
        return geometry_for(self.mode)

    def loss_weights(self) -> LossWeights:
        from histostain.segmentation.losses import LossWeights

        return LossWeights(**{name: getattr(self, f"loss_{name}") for name in LOSS_TERMS})

    def build_network(self) -> HoVerNet:
        from histostain.segmentation.hovernet import HoVerNet

        return HoVerNet(
            self.mode,
            self.types,
            encoder_width=self.encoder_width,
            units=self.units,
            decoder_width=self.decoder_width,
            decoder_units=self.decoder_units,
            freeze=self.phase1_epochs > 0,
        )

    # ------------------------------------------------------------------ reporting
    def summary_rows(self, result: FitResult) -> list[tuple[str, str]]:
        phase = self.phase_after(result.epoch)
        return [
            ("network", f"{self.mode} mode, {self.num_types or 'no'} types"),
            ("epochs", f"{result.epoch}/{result.epochs} ({self.phase1_epochs} frozen + {self.phase2_epochs} all)"),
            ("phase", f"{phase} ({'encoder frozen' if phase == 1 else 'all layers'})"),
        ]


def resolve_config(
    *,
    config_file: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    base: Mapping[str, Any] | None = None,
) -> HoVerNetConfig:
    """defaults < ``base`` (a resumed run's config) < ``config_file`` < ``overrides`` (flags; None = not given)."""
    return HoVerNetConfig.resolve(config_file=config_file, overrides=overrides, base=base)


def check_resume_compatible(stored: HoVerNetConfig, resolved: HoVerNetConfig) -> None:
    """Refuse options that cannot change when resuming (network, phase boundary, batch sizes, data order)."""
    stored.check_resume(resolved)


__all__ = ["LOSS_TERMS", "MODE_SIZES", "RESUME_FIXED", "HoVerNetConfig", "check_resume_compatible", "resolve_config"]
