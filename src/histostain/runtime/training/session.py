"""One training session, the same for every trainer: open the run, build the data, join the processes, record, fit.

:func:`run_training` is the skeleton of ``train_cyclegan``, ``train_hovernet`` and any later trainer; a trainer
contributes a :class:`TrainingSpec` (its config type, datasets, trainer, extra run information and one log
line), so the order of the steps (and why it is that order) lives here once:

1. check that the runs folder can be written, decide how the run folder is treated (new, resumed, a dead
   start's remains started again, ``--overwrite``; :meth:`RunDirectory.plan_start`) and resolve the options
   (on resume over the run's own config.toml) - nothing written, so a wrong ``--runs-dir`` costs one line
   before any data is read;
2. the trainer's own checks (e.g. a weights file it needs later), then its datasets - still nothing written,
   so a wrong path or a bad dataset leaves no half-made run folder behind;
3. join the torchrun process group; a barrier, so every rank has checked the folder before rank 0 creates it;
4. build the trainer (before any file is written: a bad init file leaves no run folder either);
5. rank 0 replaces the folder it is told to replace (only now: a failure above leaves an old run intact) and
   records config.toml (resolved options, the ``[run]`` provenance table, what happens to TensorBoard), then a
   barrier;
6. fit, a barrier, and leave the process group whatever happened.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from histostain.runtime.training.metrics_log import tensorboard_problem
from histostain.runtime.training.options import LoopOptions
from histostain.runtime.training.rundir import RunDirectory, open_run, record_run

if TYPE_CHECKING:
    from histostain.provenance import Provenance
    from histostain.runtime.device import DeviceManager
    from histostain.runtime.distributed import DistContext
    from histostain.runtime.training.state import FitResult
    from histostain.runtime.training.trainer import Trainer

log = logging.getLogger(__name__)

ConfigT = TypeVar("ConfigT", bound=LoopOptions)


def _no_info(config: Any, trainer: Any, train: Any, run: RunDirectory, resume: bool) -> dict[str, Any]:
    return {}


def _nothing(config: Any) -> None:
    return None


@dataclass(frozen=True)
class TrainingSpec(Generic[ConfigT]):
    """What one trainer brings to :func:`run_training`; everything else is the same for every trainer.

    * ``config_type``: its :class:`LoopOptions` subclass (resolution, resume checks, the loop's settings);
    * ``datasets(prepared, config) -> (train, val or None)``;
    * ``trainer(config, run, dist, train, val, resume) -> Trainer`` (``resume``: the weights come from the
      checkpoint, so initialisation files are not needed);
    * ``run_info(config, trainer, train, run, resume) -> dict``: extra entries of config.toml's ``[run]`` table
      (read before the table is rewritten, so a resume can carry values over);
    * ``describe(config, trainer) -> str``: what is being trained, for the log line;
    * ``prepare(config)``: checks (and pinned values) before any data is read, e.g. weights needed later.
    """

    config_type: type[ConfigT]
    datasets: Callable[[Path, ConfigT], tuple[Any, Any]]
    trainer: Callable[[ConfigT, RunDirectory, DistContext, Any, Any, bool], Trainer]
    describe: Callable[[ConfigT, Any], str]
    run_info: Callable[[ConfigT, Any, Any, RunDirectory, bool], Mapping[str, Any]] = _no_info
    prepare: Callable[[ConfigT], None] = _nothing


def run_training(
    spec: TrainingSpec[ConfigT],
    prepared: str | Path,
    config: ConfigT | None = None,
    *,
    name: str,
    runs_dir: str | Path = "runs",
    manager: DeviceManager,
    resume: bool = False,
    overwrite: bool = False,
    overrides: Mapping[str, Any] | None = None,
    config_file: str | Path | None = None,
    provenance: Provenance | None = None,
) -> tuple[ConfigT, FitResult]:
    """Train (or resume) ``runs_dir/name`` on ``prepared``; alike in one process and under torchrun.

    Without ``config`` the options are resolved as defaults < the run's own config.toml (on resume) <
    ``config_file`` < ``overrides``; a resumed run must keep the config type's ``resume_fixed`` options.
    A run folder without any checkpoint is started again (``resume`` or not); ``overwrite`` replaces a run
    that has checkpoints. ``provenance`` (the CLI's record of the command) goes to config.toml's ``[run]``
    table; a resume appends it to the run's history. Returns the resolved config and what the loop did.
    """
    from histostain.runtime.distributed import detect, init_distributed

    prepared = Path(prepared)
    config_type = spec.config_type
    start, config = open_run(
        runs_dir,
        name,
        resume,
        config,
        lambda stored: config_type.resolve(config_file=config_file, overrides=overrides, base=stored),
        lambda stored, resolved: config_type.model_validate(stored).check_resume(resolved),
        overwrite=overwrite,
    )
    run, resume = start.run, start.resume  # a folder without checkpoints has nothing to resume
    if start.note and detect().is_main:
        log.info("%s", start.note)  # now, before the data is read: the user learns at once what this start does
    spec.prepare(config)
    train, val = spec.datasets(prepared, config)
    dist = init_distributed(manager)
    try:
        dist.barrier()  # every rank has checked the run folder before rank 0 creates it
        trainer = spec.trainer(config, run, dist, train, val, resume)
        info = spec.run_info(config, trainer, train, run, resume)
        tensorboard = _tensorboard_status(config.tensorboard, dist.is_main)
        record_run(
            run, dist, config, provenance, prepared, config_file, replace=start.replace, tensorboard=tensorboard, **info
        )
        dist.barrier()
        log.info(
            "training %s on %d patches for %d epochs -> %s",
            spec.describe(config, trainer),
            len(train),
            config.total_epochs,
            run.root,
        )
        result = trainer.fit(train, resume=resume)
        dist.barrier()
        return config, result
    finally:
        dist.cleanup()


def _tensorboard_status(wanted: bool, is_main: bool) -> str:
    """What really happens to TensorBoard in this start, for config.toml's ``[run]`` table: ``on``, ``off``,
    ``not installed`` or ``cannot be imported (...)``. The option itself stays as the user set it (installing
    tensorboard and resuming then writes events); a wanted but impossible TensorBoard is said once, by rank 0."""
    if not wanted:
        return "off"
    problem = tensorboard_problem()
    if problem is None:
        return "on"
    if is_main:
        if problem == "not installed":
            log.warning("tensorboard is not installed: no event files are written (pip install tensorboard)")
        else:
            log.warning("tensorboard %s: no event files are written", problem)
    return problem


__all__ = ["TrainingSpec", "run_training"]
