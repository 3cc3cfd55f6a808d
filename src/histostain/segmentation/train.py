"""HoVer-Net training on prepared PanNuke (``histostain train hovernet``): the service, on the shared run skeleton.

:func:`train_hovernet` hands :func:`histostain.runtime.training.run_training` what is HoVer-Net's own: the config
type (:class:`~histostain.segmentation.config.HoVerNetConfig`), the datasets
(:mod:`histostain.segmentation.samples`), the trainer (:class:`~histostain.segmentation.trainer.HoVerNetTrainer`,
told the geometry and class names of the data so its checkpoints carry them) and the run information
config.toml records (input/output sides, what ``init`` loaded). The pieces live in single-job modules; their
names are re-exported here for callers of the earlier single module.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from histostain.runtime.training import FitResult, RunDirectory, TrainingSpec, run_training
from histostain.segmentation.config import (
    LOSS_TERMS,
    RESUME_FIXED,
    HoVerNetConfig,
    check_resume_compatible,
    resolve_config,
)
from histostain.segmentation.init_weights import InitReport, load_init_weights
from histostain.segmentation.samples import HoVerNetSamples, build_datasets, network_sizes, type_names
from histostain.segmentation.trainer import ARCH, MODEL, HoVerNetTrainer

if TYPE_CHECKING:
    from histostain.runtime.distributed import DistContext


def _trainer(
    config: HoVerNetConfig,
    run: RunDirectory,
    dist: DistContext,
    train: HoVerNetSamples,
    val: HoVerNetSamples | None,
    resume: bool,
) -> HoVerNetTrainer:
    return HoVerNetTrainer(
        config,
        run,
        dist.manager,
        dist,
        val_dataset=val,
        initialise=not resume,  # a resumed run takes every weight from its checkpoint
        geometry=train.geometry(config.mode),
        class_names=train.type_names(config.num_types),
    )


def _run_info(
    config: HoVerNetConfig, trainer: HoVerNetTrainer, train: HoVerNetSamples, run: RunDirectory, resume: bool
) -> dict[str, Any]:
    # on resume the init report of the first start stays (the trainer skipped init and knows nothing of it)
    init = run.read_run_info().get("init", "") if resume else trainer.init_report.describe()
    return {"input_size": train.input_size, "output_size": train.output_size, "init": init}


def _describe(config: HoVerNetConfig, trainer: HoVerNetTrainer) -> str:
    return f"HoVer-Net {config.mode} ({config.phase1_epochs} frozen + {config.phase2_epochs} all epochs)"


HOVERNET = TrainingSpec(
    config_type=HoVerNetConfig,
    datasets=build_datasets,
    trainer=_trainer,
    describe=_describe,
    run_info=_run_info,
)


def train_hovernet(
    prepared: str | Path, config: HoVerNetConfig | None = None, **options: Any
) -> tuple[HoVerNetConfig, FitResult]:
    """Train (or resume) a run on prepared PanNuke: :func:`~histostain.runtime.training.run_training` with this
    trainer's spec (keyword options ``name``, ``runs_dir``, ``manager``, ``resume``, ``overwrite``, ``overrides``,
    ``config_file``, ``provenance`` as documented there). A resumed run must keep :data:`RESUME_FIXED`."""
    return run_training(HOVERNET, prepared, config, **options)


__all__ = [
    "ARCH",
    "HOVERNET",
    "LOSS_TERMS",
    "MODEL",
    "RESUME_FIXED",
    "HoVerNetConfig",
    "HoVerNetSamples",
    "HoVerNetTrainer",
    "InitReport",
    "build_datasets",
    "check_resume_compatible",
    "load_init_weights",
    "network_sizes",
    "resolve_config",
    "train_hovernet",
    "type_names",
]
