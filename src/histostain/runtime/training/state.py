"""Where a training run is (:class:`LoopState`, stored in every checkpoint) and what a fit did (:class:`FitResult`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class LoopState:
    """Where the run is; stored in every checkpoint."""

    epoch: int = 0  # completed epochs (= index of the epoch in progress)
    step: int = 0  # optimisation steps done in total
    batch_in_epoch: int = 0  # batches done in the epoch in progress
    best: float | None = None
    best_step: int | None = None


@dataclass
class FitResult:
    """What :meth:`Trainer.fit` did (the CLI's summary)."""

    status: str  # "completed" | "max_steps" | "interrupted"
    run_dir: Path
    epoch: int
    epochs: int
    step: int
    seconds: float
    images_per_second: float
    last_checkpoint: Path | None
    best_checkpoint: Path | None
    best: float | None
    best_metric: str | None
    metrics: dict[str, float] = field(default_factory=dict)
    validation: dict[str, float] = field(default_factory=dict)
    world_size: int = 1
    is_main: bool = True

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("run_dir", "last_checkpoint", "best_checkpoint"):
            data[key] = None if data[key] is None else str(data[key])
        return data


__all__ = ["FitResult", "LoopState"]
