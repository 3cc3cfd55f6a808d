"""CycleGAN training on prepared BCI (``histostain train cyclegan``): the service, on the shared run skeleton.

:func:`train_cyclegan` hands :func:`histostain.runtime.training.run_training` what is CycleGAN's own: the
config type (:class:`~histostain.translation.train_config.CycleGANConfig`), the BCI datasets, the trainer
(:class:`~histostain.translation.trainer.CycleGANTrainer`), the FID weights check and the domains recorded in
config.toml. The names of both modules are re-exported here for callers of the earlier single module.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from histostain.errors import ConfigError, DatasetLayoutError
from histostain.runtime.training import FitResult, RunDirectory, TrainingSpec, run_training
from histostain.translation.train_config import (
    DOMAINS,
    RESUME_FIXED,
    CycleGANConfig,
    check_resume_compatible,
    resolve_config,
)
from histostain.translation.trainer import ARCH, CycleGANTrainer, ImagePool, linear_decay, to_uint8

if TYPE_CHECKING:
    from histostain.runtime.distributed import DistContext

log = logging.getLogger(__name__)


def _datasets(prepared: Path, config: CycleGANConfig) -> tuple[Any, Any]:
    from histostain.datasets.torch_data import TranslationPairs

    train = TranslationPairs(
        prepared,
        "train",
        paired=config.paired_sampling,
        direction=config.direction,
        crop=config.crop,
        augment=config.augment,
        seed=config.seed,
    )
    first = train[0]["A"]
    if config.crop is None and (first.shape[-1] % 4 or first.shape[-2] % 4):
        raise ConfigError(f"{prepared}: patches of {tuple(first.shape[-2:])} pixels are not multiples of 4; set crop")
    val = None
    if config.val_every:
        try:
            val = TranslationPairs(prepared, "val", paired=True, direction=config.direction, augment=False)
        except DatasetLayoutError:
            log.info("%s has no val split: validation is off", prepared)
    return train, val


def _pin_fid_weights(config: CycleGANConfig) -> None:
    """With ``val_fid``: fail before training (not at the first validation hours later) and record the file used."""
    if config.val_fid:
        from histostain.metrics.inception import resolve_weights

        config.fid_weights = str(resolve_weights(Path(config.fid_weights) if config.fid_weights else None))


def _trainer(
    config: CycleGANConfig, run: RunDirectory, dist: DistContext, train: Any, val: Any, resume: bool
) -> CycleGANTrainer:
    return CycleGANTrainer(config, run, dist.manager, dist, val_dataset=val)


def _run_info(config: CycleGANConfig, trainer: Any, train: Any, run: RunDirectory, resume: bool) -> dict[str, Any]:
    return {"domains": {"A": config.domains[0], "B": config.domains[1]}}


def _describe(config: CycleGANConfig, trainer: Any) -> str:
    return f"CycleGAN {config.direction} (A={config.domains[0]}, B={config.domains[1]})"


CYCLEGAN = TrainingSpec(
    config_type=CycleGANConfig,
    datasets=_datasets,
    trainer=_trainer,
    describe=_describe,
    run_info=_run_info,
    prepare=_pin_fid_weights,
)


def train_cyclegan(
    prepared: str | Path, config: CycleGANConfig | None = None, **options: Any
) -> tuple[CycleGANConfig, FitResult]:
    """Train (or resume) a run on prepared BCI: :func:`~histostain.runtime.training.run_training` with this
    trainer's spec (keyword options ``name``, ``runs_dir``, ``manager``, ``resume``, ``overwrite``, ``overrides``,
    ``config_file``, ``provenance`` as documented there). A resumed run must keep :data:`RESUME_FIXED`."""
    return run_training(CYCLEGAN, prepared, config, **options)


__all__ = [
    "ARCH",
    "CYCLEGAN",
    "DOMAINS",
    "RESUME_FIXED",
    "CycleGANConfig",
    "CycleGANTrainer",
    "ImagePool",
    "check_resume_compatible",
    "linear_decay",
    "resolve_config",
    "to_uint8",
    "train_cyclegan",
]
