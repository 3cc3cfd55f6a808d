"""Keypoint-detector training options (``histostain train detector``); no torch here.

The network is :class:`~histostain.segmentation.detector.DetectorNet` (a compact U-Net, one heatmap per EndoNuke
class), trained with the penalty-reduced focal loss on Gaussian targets
(:mod:`~histostain.segmentation.detector_targets`). The loop options are the shared
:class:`~histostain.runtime.training.options.LoopOptions`; the detector overrides the defaults that suit small
keypoint sets (a metrics row every 10 steps, best.pt by the validation ``f1`` at ``radius_um``).

The CLI reads defaults and descriptions from here to build ``--help``, so the module imports neither torch nor
the training modules.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field, model_validator

from histostain.runtime.training.options import LoopOptions, loop_default

if TYPE_CHECKING:
    from histostain.runtime.training.state import FitResult
    from histostain.segmentation.detector import DetectorNet

# options a resumed run must keep: they define the network, the targets, the batches or the data order
RESUME_FIXED = ("width", "levels", "crop", "batch_size", "target_radius_um", "seed")
NUM_CLASSES = 3  # EndoNuke: stroma, epithelium, other


class DetectorConfig(LoopOptions):
    """Every option of ``train detector``; loadable from TOML, overridden by CLI flags."""

    command: ClassVar[str] = "train detector"
    resume_fixed: ClassVar[tuple[str, ...]] = RESUME_FIXED
    summary_losses: ClassVar[tuple[str, ...]] = ("loss",)

    # network
    width: int = Field(16, ge=1, description="channels of the first U-Net level (doubling per level)")
    levels: int = Field(4, ge=1, le=6, description="2x downsamplings of the U-Net")
    # schedule
    epochs: int = Field(60, ge=1, description="training epochs")
    batch_size: int = Field(8, ge=1, description="crops per batch per process")
    lr: float = Field(1e-3, gt=0, description="Adam learning rate")
    lr_schedule: Literal["constant", "cosine"] = Field(
        "cosine", description="learning rate over the epochs: constant | cosine (from --lr down to 1 % of it)"
    )
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.999, ge=0, lt=1)
    crop: int = Field(256, ge=16, description="side of the random training crops in pixels (smaller tiles are padded)")
    # targets and loss
    target_radius_um: float = Field(
        1.5,
        gt=0,
        description="radius in um of the Gaussian targets (cut at 3 sigma): sigma = radius / (3 um/px), 2 px at "
        "EndoNuke's prepared 0.25 um/px",
    )
    focal_alpha: float = Field(2.0, ge=0, description="focal exponent of the penalty-reduced focal loss")
    focal_beta: float = Field(4.0, ge=0, description="penalty reduction exponent near the centres")
    # augmentation (train split only)
    augment: bool = Field(True, description="the 8 exact flips / 90-degree rotations and the colour jitter")
    colour_jitter: float = Field(0.05, ge=0, description="colour jitter strength, 0 = off")
    jitter_space: Literal["hed", "hsv"] = Field("hed", description="colour jitter space: hed | hsv")
    # validation
    radius_um: float = Field(3.0, gt=0, description="matching radius in um of the validation F1 (class-agnostic)")
    # smoothed heatmaps peak low (a nucleus' mass spread over a few pixels): a fine grid from 0.01
    threshold_min: float = Field(0.01, gt=0, lt=1, description="lowest score threshold tried on the val split")
    threshold_max: float = Field(0.9, gt=0, lt=1, description="highest score threshold tried on the val split")
    threshold_step: float = Field(0.01, gt=0, description="step between the thresholds tried")
    nms_kernel: int = Field(5, ge=1, description="max-pool NMS window of the decoding in pixels (odd)")
    smooth_um: float = Field(
        1.0, ge=0, description="Gaussian sigma in um the heatmaps are smoothed by before decoding, 0 = off"
    )
    val_max_images: int | None = Field(None, ge=1, description="validate on the first N val tiles only")
    # the loop
    log_every: int = loop_default("log_every", 10)
    best_metric: str | None = loop_default("best_metric", "f1")

    @model_validator(mode="after")
    def _check(self) -> DetectorConfig:
        if self.threshold_min > self.threshold_max:
            raise ValueError(f"threshold_min {self.threshold_min} exceeds threshold_max {self.threshold_max}")
        if self.nms_kernel % 2 != 1:
            raise ValueError(f"nms_kernel must be odd, got {self.nms_kernel}")
        return self

    @property
    def total_epochs(self) -> int:
        return self.epochs

    def batch_size_for_epoch(self, epoch: int) -> int:
        return self.batch_size

    def thresholds(self) -> list[float]:
        """The score thresholds validation tries: ``threshold_min`` .. ``threshold_max`` by ``threshold_step``."""
        count = int(round((self.threshold_max - self.threshold_min) / self.threshold_step + 1e-9)) + 1
        values = [round(self.threshold_min + i * self.threshold_step, 6) for i in range(count)]
        return [value for value in values if value <= self.threshold_max + 1e-9]

    def model_args(self) -> dict[str, int]:
        """The constructor arguments of the network (stored in the checkpoint)."""
        return {"in_channels": 3, "num_classes": NUM_CLASSES, "width": self.width, "levels": self.levels}

    def build_network(self) -> DetectorNet:
        from histostain.segmentation.detector import DetectorNet

        return DetectorNet(**self.model_args())

    def summary_rows(self, result: FitResult) -> list[tuple[str, str]]:
        return [("network", f"DetectorNet width {self.width}, {self.levels} levels, {NUM_CLASSES} classes")]


def resolve_detector_config(
    *,
    config_file: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    base: Mapping[str, Any] | None = None,
) -> DetectorConfig:
    """defaults < ``base`` (a resumed run's config) < ``config_file`` < ``overrides`` (flags; None = not given)."""
    return DetectorConfig.resolve(config_file=config_file, overrides=overrides, base=base)


__all__ = ["NUM_CLASSES", "RESUME_FIXED", "DetectorConfig", "resolve_detector_config"]
