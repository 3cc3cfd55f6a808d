"""The training runtime every trainer shares (CycleGAN, HoVer-Net): run folder, options, loop, checkpoints.

One module per job:

* :mod:`.rundir`: the run folder (``config.toml`` with its ``[run]`` provenance table and resume history,
  checkpoints/, samples/), opening and recording a run, reading TOML;
* :mod:`.options`: :class:`LoopOptions`, the loop's options declared once and inherited by every trainer
  config, and :class:`LoopConfig`, the settings one run's loop uses;
* :mod:`.config`: resolving options from their layers (defaults < resumed run < TOML file < flags);
* :mod:`.metrics_log`: ``metrics.csv`` and TensorBoard events;
* :mod:`.rng`: seeding, deterministic kernels, RNG capture/restore for exact resume;
* :mod:`.signals`: Ctrl-C / SIGTERM handling;
* :mod:`.trainer`: the loop itself (:class:`Trainer`, the NaN guard, checkpoints, exact resume);
* :mod:`.state`: :class:`LoopState` (where a run is) and :class:`FitResult` (what a fit did);
* :mod:`.session`: :func:`run_training`, the open -> data -> processes -> record -> fit skeleton of every
  training service.

Names are re-exported here and resolved lazily, so reading the option models (the CLI does, to build
``--help``) imports neither numpy nor torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from histostain.runtime.training.config import check_resume_fixed, resolve_training_config
    from histostain.runtime.training.metrics_log import MetricsLog, TensorBoard, tensorboard_problem
    from histostain.runtime.training.options import SAVE_LATEST_STEPS, LoopConfig, LoopOptions, loop_default
    from histostain.runtime.training.rng import (
        capture_rng_state,
        restore_rng_state,
        seed_everything,
        set_deterministic,
    )
    from histostain.runtime.training.rundir import (
        RUN_TABLE,
        RunDirectory,
        RunStart,
        open_run,
        read_toml,
        record_run,
    )
    from histostain.runtime.training.session import TrainingSpec, run_training
    from histostain.runtime.training.signals import StopSignal
    from histostain.runtime.training.state import FitResult, LoopState
    from histostain.runtime.training.trainer import Trainer, TrainingDiverged, batch_size_of

_HOME = {
    "check_resume_fixed": "config",
    "resolve_training_config": "config",
    "MetricsLog": "metrics_log",
    "TensorBoard": "metrics_log",
    "tensorboard_problem": "metrics_log",
    "SAVE_LATEST_STEPS": "options",
    "LoopConfig": "options",
    "LoopOptions": "options",
    "loop_default": "options",
    "capture_rng_state": "rng",
    "restore_rng_state": "rng",
    "seed_everything": "rng",
    "set_deterministic": "rng",
    "RUN_TABLE": "rundir",
    "RunDirectory": "rundir",
    "RunStart": "rundir",
    "open_run": "rundir",
    "read_toml": "rundir",
    "record_run": "rundir",
    "TrainingSpec": "session",
    "run_training": "session",
    "StopSignal": "signals",
    "FitResult": "state",
    "LoopState": "state",
    "Trainer": "trainer",
    "TrainingDiverged": "trainer",
    "batch_size_of": "trainer",
}


def __getattr__(name: str) -> Any:
    if name in _HOME:
        return getattr(importlib.import_module(f"{__name__}.{_HOME[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "FitResult",
    "LoopConfig",
    "LoopOptions",
    "LoopState",
    "MetricsLog",
    "RUN_TABLE",
    "RunDirectory",
    "RunStart",
    "SAVE_LATEST_STEPS",
    "StopSignal",
    "TensorBoard",
    "Trainer",
    "TrainingDiverged",
    "TrainingSpec",
    "batch_size_of",
    "capture_rng_state",
    "check_resume_fixed",
    "loop_default",
    "open_run",
    "read_toml",
    "record_run",
    "resolve_training_config",
    "restore_rng_state",
    "run_training",
    "seed_everything",
    "set_deterministic",
    "tensorboard_problem",
]
