"""Keypoint-detector training on prepared EndoNuke (``histostain train detector``), on the shared run skeleton.

:func:`train_detector` hands :func:`histostain.runtime.training.run_training` the detector's own parts: the
config type (:class:`~histostain.segmentation.detector_config.DetectorConfig`), the datasets (random crops of
the train split with their heatmap targets; the whole val tiles), the trainer
(:class:`~histostain.segmentation.detector_trainer.DetectorTrainer`) and the run information config.toml records
(um/px, sigma in pixels, classes).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from histostain.runtime.training import FitResult, RunDirectory, TrainingSpec, run_training
from histostain.segmentation.detector_config import DetectorConfig
from histostain.segmentation.detector_targets import sigma_from_um
from histostain.segmentation.detector_trainer import DetectorCrops, DetectorTrainer, prepared_mpp

if TYPE_CHECKING:
    from histostain.datasets.torch_data import KeypointSamples
    from histostain.runtime.distributed import DistContext


def build_datasets(prepared: Path, config: DetectorConfig) -> tuple[DetectorCrops, KeypointSamples | None]:
    """Training crops of the train split; the val split whole and unaugmented (None when it is empty)."""
    from histostain.datasets.torch_data import KeypointSamples

    samples = KeypointSamples(
        prepared,
        "train",
        augment=config.augment,
        colour_jitter=config.colour_jitter if config.augment else 0.0,
        jitter_space=config.jitter_space,
        seed=config.seed,
    )
    mpp = prepared_mpp(samples)
    train = DetectorCrops(samples, config.crop, sigma_from_um(config.target_radius_um, mpp))
    val = None
    if samples.manifest.splits.get("val", 0) > 0 and config.val_every:
        val = KeypointSamples(prepared, "val", augment=False, seed=config.seed)
    return train, val


def _trainer(
    config: DetectorConfig,
    run: RunDirectory,
    dist: DistContext,
    train: DetectorCrops,
    val: KeypointSamples | None,
    resume: bool,
) -> DetectorTrainer:
    return DetectorTrainer(config, run, dist.manager, dist, val_dataset=val, mpp=prepared_mpp(train.samples))


def _run_info(
    config: DetectorConfig, trainer: DetectorTrainer, train: DetectorCrops, run: RunDirectory, resume: bool
) -> dict[str, Any]:
    return {"mpp": trainer.mpp, "sigma_px": trainer.sigma_px, "classes": ", ".join(trainer.class_names.values())}


def _describe(config: DetectorConfig, trainer: DetectorTrainer) -> str:
    return (
        f"DetectorNet (width {config.width}, {config.levels} levels; {config.crop} px crops, sigma "
        f"{trainer.sigma_px:.3g} px at {trainer.mpp:g} um/px)"
    )


DETECTOR = TrainingSpec(
    config_type=DetectorConfig,
    datasets=build_datasets,
    trainer=_trainer,
    describe=_describe,
    run_info=_run_info,
)


def train_detector(
    prepared: str | Path, config: DetectorConfig | None = None, **options: Any
) -> tuple[DetectorConfig, FitResult]:
    """Train (or resume) a detector run on prepared EndoNuke: :func:`~histostain.runtime.training.run_training`
    with this trainer's spec (keyword options ``name``, ``runs_dir``, ``manager``, ``resume``, ``overwrite``,
    ``overrides``, ``config_file``, ``provenance`` as documented there)."""
    return run_training(DETECTOR, prepared, config, **options)


__all__ = ["DETECTOR", "DetectorConfig", "DetectorCrops", "DetectorTrainer", "build_datasets", "train_detector"]
