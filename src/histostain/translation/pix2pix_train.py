"""pix2pix training (``histostain train pix2pix``): the service, on the shared run skeleton.

:func:`train_pix2pix` hands :func:`histostain.runtime.training.run_training` what is pix2pix's own: the config
type (:class:`~histostain.translation.pix2pix_config.Pix2PixConfig`), the paired datasets (prepared BCI through
:class:`~histostain.datasets.torch_data.TranslationPairs` with ``paired=True``, or prepared PanNuke label maps
through :class:`~histostain.datasets.label_pairs.LabelPairs` with ``source = "labels"``), the trainer
(:class:`~histostain.translation.pix2pix_trainer.Pix2PixTrainer`) and the domains recorded in config.toml.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from histostain.errors import ConfigError, DatasetLayoutError
from histostain.runtime.training import FitResult, RunDirectory, TrainingSpec, run_training
from histostain.translation.pix2pix_config import (
    RESUME_FIXED,
    Pix2PixConfig,
    check_resume_compatible,
    resolve_config,
)
from histostain.translation.pix2pix_trainer import ARCH, Pix2PixTrainer

if TYPE_CHECKING:
    from histostain.runtime.distributed import DistContext

log = logging.getLogger(__name__)


def _pairs(prepared: Path, config: Pix2PixConfig, split: str, *, train: bool) -> Any:
    """One split as aligned (A, B) pairs: the same crop and dihedral transform for both (none for val)."""
    crop = config.crop if train else None
    augment = config.augment if train else False
    if config.source == "labels":
        try:
            from histostain.datasets.label_pairs import LabelPairs
        except ImportError as exc:  # pragma: no cover - the module ships with histostain
            raise ConfigError("--source labels needs histostain.datasets.label_pairs", hint=str(exc)) from exc
        return LabelPairs(prepared, split, crop=crop, augment=augment, seed=config.seed)
    from histostain.datasets.torch_data import TranslationPairs

    return TranslationPairs(
        prepared, split, paired=True, direction=config.direction, crop=crop, augment=augment, seed=config.seed
    )


def _datasets(prepared: Path, config: Pix2PixConfig) -> tuple[Any, Any]:
    train = _pairs(prepared, config, "train", train=True)
    first = train[0]["A"]
    if config.crop is None and (first.shape[-1] % 4 or first.shape[-2] % 4):
        raise ConfigError(f"{prepared}: patches of {tuple(first.shape[-2:])} pixels are not multiples of 4; set crop")
    val = None
    if config.val_every:
        try:
            val = _pairs(prepared, config, "val", train=False)
        except DatasetLayoutError:
            log.info("%s has no val split: validation is off", prepared)
    return train, val


def _trainer(
    config: Pix2PixConfig, run: RunDirectory, dist: DistContext, train: Any, val: Any, resume: bool
) -> Pix2PixTrainer:
    return Pix2PixTrainer(config, run, dist.manager, dist, val_dataset=val)


def _run_info(config: Pix2PixConfig, trainer: Any, train: Any, run: RunDirectory, resume: bool) -> dict[str, Any]:
    return {"domains": {"A": config.domains[0], "B": config.domains[1]}, "norm_mode": config.norm_mode}


def _describe(config: Pix2PixConfig, trainer: Any) -> str:
    a, b = config.domains
    return f"pix2pix {config.net_g} {config.translation} (A={a}, B={b}, loss {config.loss} x {config.lambda_l1:g})"


PIX2PIX = TrainingSpec(
    config_type=Pix2PixConfig,
    datasets=_datasets,
    trainer=_trainer,
    describe=_describe,
    run_info=_run_info,
)


def train_pix2pix(
    prepared: str | Path, config: Pix2PixConfig | None = None, **options: Any
) -> tuple[Pix2PixConfig, FitResult]:
    """Train (or resume) a pix2pix run on prepared BCI (or PanNuke label maps with ``source = "labels"``):
    :func:`~histostain.runtime.training.run_training` with this trainer's spec (keyword options ``name``,
    ``runs_dir``, ``manager``, ``resume``, ``overwrite``, ``overrides``, ``config_file``, ``provenance`` as
    documented there). A resumed run must keep :data:`RESUME_FIXED`."""
    return run_training(PIX2PIX, prepared, config, **options)


__all__ = [
    "ARCH",
    "PIX2PIX",
    "RESUME_FIXED",
    "Pix2PixConfig",
    "Pix2PixTrainer",
    "check_resume_compatible",
    "resolve_config",
    "train_pix2pix",
]
