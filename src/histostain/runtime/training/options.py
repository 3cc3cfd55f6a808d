"""The loop's options, declared once: every trainer's config inherits them, the loop reads them.

:class:`LoopOptions` holds what the generic loop needs from a user (workers, seed, logging, sampling,
checkpoint and validation intervals, step budget, best-checkpoint metric, TensorBoard, deterministic kernels).
``CycleGANConfig`` and ``HoVerNetConfig`` subclass it, so a TOML key, its bounds and its meaning are the same for
both trainers. A trainer whose reference publishes another value overrides only the default, with
:func:`loop_default` (the bounds and the description stay the declared ones)::

    class HoVerNetConfig(LoopOptions):
        seed: int = loop_default("seed", 10)  # hover_net's seed

A config adds what it knows and the loop cannot: :attr:`LoopOptions.total_epochs` and
:meth:`LoopOptions.batch_size_for_epoch`. :meth:`LoopOptions.loop_config` turns the whole into the
:class:`LoopConfig` a :class:`~histostain.runtime.training.trainer.Trainer` runs with.

No torch here: the CLI reads defaults and help texts from these models while building ``--help``.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Self

from pydantic import BaseModel, ConfigDict, Field
from pydantic.fields import FieldInfo

if TYPE_CHECKING:
    from histostain.runtime.training.state import FitResult

# last.pt is refreshed every this many steps inside an epoch (and always at epoch ends and stops). 2000 bounds
# the work a crash loses to minutes on a GPU; writing a full-size checkpoint (a few hundred MB) that often costs
# well under 1% of the time. The reference CycleGAN's save_latest_freq (5000) exceeds a BCI epoch (3896 steps
# at batch 1), so it never saved inside an epoch at all.
SAVE_LATEST_STEPS = 2000


class LoopOptions(BaseModel):
    """Options of the generic training loop (0 switches a periodic action off); trainer configs inherit them."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, defer_build=True)

    # the CLI command that trains with this config (its help page is named in configuration errors)
    command: ClassVar[str] = "train"
    # options a resumed run must keep (they define the networks, the optimiser or the data order)
    resume_fixed: ClassVar[tuple[str, ...]] = ("seed",)
    # the loss columns the closing summary shows, in order (default: none)
    summary_losses: ClassVar[tuple[str, ...]] = ()

    num_workers: int = Field(4, ge=0, description="DataLoader worker processes")
    seed: int = Field(0, ge=0, description="seed of the initial weights, the data order and every augmentation")
    deterministic: bool = Field(False, description="deterministic kernels (bit-exact reruns; slower)")
    log_every: int = Field(100, ge=0, description="steps between metrics.csv rows (losses averaged over them)")
    sample_every: int = Field(500, ge=0, description="steps between sample grids, 0 = never")
    save_every: int = Field(5, ge=0, description="epochs between kept checkpoints epoch_NNNN.pt, 0 = never")
    save_latest_steps: int = Field(
        SAVE_LATEST_STEPS, ge=0, description="steps between refreshes of last.pt inside an epoch, 0 = epoch ends only"
    )
    val_every: int = Field(1, ge=0, description="epochs between validations (and after the last), 0 = never")
    max_steps: int | None = Field(None, ge=1, description="stop after this many optimisation steps in total")
    best_metric: str | None = Field(None, description="validation metric that selects best.pt (none: no best.pt)")
    best_mode: Literal["max", "min"] = Field("max", description="whether a higher or a lower best_metric is better")
    tensorboard: bool = Field(True, description="write TensorBoard events when the tensorboard package is installed")

    # ------------------------------------------------------------------ what a trainer config supplies
    @property
    def total_epochs(self) -> int:
        """Epochs of the whole run."""
        raise NotImplementedError(f"{type(self).__name__} must define total_epochs")

    def batch_size_for_epoch(self, epoch: int) -> int:
        """Batch size (per process) of ``epoch`` (0-based)."""
        raise NotImplementedError(f"{type(self).__name__} must define batch_size_for_epoch")

    def summary_rows(self, result: FitResult) -> list[tuple[str, str]]:
        """The trainer's own rows of the closing summary (e.g. its network), shown after the status."""
        return []

    # ------------------------------------------------------------------ shared behaviour
    def loop_config(self, *, validation: bool = True) -> LoopConfig:
        """The settings :class:`~histostain.runtime.training.trainer.Trainer` runs with (no validation set:
        ``val_every`` 0, so no epoch waits for a validation that cannot happen)."""
        values = {name: getattr(self, name) for name in LoopOptions.model_fields}
        if not validation:
            values["val_every"] = 0
        return LoopConfig(epochs=self.total_epochs, batch_size=self.batch_size_for_epoch(0), **values)

    @classmethod
    def flag_overrides(cls, flags: Mapping[str, Any]) -> dict[str, Any]:
        """Command-line values (None = not given) as config fields; a config with shorthand flags maps them."""
        return {key: str(value) if isinstance(value, Path) else value for key, value in flags.items()}

    @classmethod
    def resolve(
        cls,
        *,
        config_file: str | Path | None = None,
        overrides: Mapping[str, Any] | None = None,
        base: Mapping[str, Any] | None = None,
    ) -> Self:
        """defaults < ``base`` (a resumed run's config) < ``config_file`` < ``overrides`` (flags; None = not given)."""
        from histostain.runtime.training.config import resolve_training_config

        return resolve_training_config(cls, cls.command, config_file=config_file, overrides=overrides, base=base)

    def check_resume(self, resolved: LoopOptions) -> None:
        """Refuse changes, on resume, to the options in :attr:`resume_fixed` (``self`` is the stored config)."""
        from histostain.runtime.training.config import check_resume_fixed

        check_resume_fixed(self, resolved, self.resume_fixed)


def loop_default(name: str, default: Any) -> Any:
    """The declaration of loop option ``name`` with another default: a trainer's published value.

    Use with the option's annotation in a :class:`LoopOptions` subclass (``log_every: int = loop_default(
    "log_every", 50)``); the bounds and the description stay those of :class:`LoopOptions`.
    """
    declared: FieldInfo = LoopOptions.model_fields[name]
    field = copy.deepcopy(declared)
    field.default = default
    return field


class LoopConfig(LoopOptions):
    """The loop's settings for one run: :class:`LoopOptions` with the epoch count and batch size fixed.

    Trainers get it from :meth:`LoopOptions.loop_config`; tests and small tools may build it directly.
    """

    epochs: int = Field(ge=0, description="epochs of the whole run")
    batch_size: int = Field(1, ge=1, description="batch size per process (unless a trainer changes it per epoch)")

    @property
    def total_epochs(self) -> int:
        return self.epochs

    def batch_size_for_epoch(self, epoch: int) -> int:
        return self.batch_size


__all__ = ["SAVE_LATEST_STEPS", "LoopConfig", "LoopOptions", "loop_default"]
