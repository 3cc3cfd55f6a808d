"""The generic training loop every trainer runs on: epochs, steps, checkpoints, exact resume, guards, stops.

A trainer subclasses :class:`Trainer`, registers its models, optimisers and schedulers in ``self.models``,
``self.optimizers`` and ``self.schedulers``, and implements :meth:`Trainer.train_step`. The base class runs the
epochs and gives it, for free:

* the run folder's files (:class:`~histostain.runtime.training.rundir.RunDirectory`):
  ``checkpoints/{last,best,epoch_NNNN}.pt``, ``metrics.csv``, ``samples/`` and TensorBoard events;
* exact resume: models, optimisers, schedulers, GradScaler, per-rank extra state (e.g. image pools), epoch,
  step, position inside the epoch, and python/numpy/torch RNG states of every rank. The data order of an
  epoch depends only on the seed and the epoch, so a resumed run sees the same batches as a straight one;
* a NaN/inf guard (:meth:`Trainer.guard`, called by ``train_step`` before ``backward``): the run stops with
  :class:`TrainingDiverged` and ``last.pt`` stays the last good state (parameters are also checked before
  every save, so a non-finite model is never written);
* Ctrl-C / SIGTERM: the current step finishes, ``last.pt`` is written, and :meth:`Trainer.fit` returns with
  status ``"interrupted"`` (a second Ctrl-C aborts at once);
* multi-process training through :mod:`histostain.runtime.distributed` (rank 0 alone logs, draws progress,
  writes files; every rank takes part in the collective decisions).
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from histostain.errors import HistostainError, WeightsError
from histostain.io.atomic import atomic_path
from histostain.runtime.progress import progress_task
from histostain.runtime.training.metrics_log import MetricsLog, TensorBoard
from histostain.runtime.training.options import LoopConfig
from histostain.runtime.training.rng import capture_rng_state, restore_rng_state
from histostain.runtime.training.rundir import RunDirectory
from histostain.runtime.training.signals import StopSignal, ignore_stop_signals
from histostain.runtime.training.state import FitResult, LoopState

if TYPE_CHECKING:
    import torch
    from torch.utils.data import Dataset

    from histostain.runtime.device import DeviceManager
    from histostain.runtime.distributed import DistContext

log = logging.getLogger(__name__)


class TrainingDiverged(HistostainError):
    """A loss (or a parameter) became NaN or infinite; the run stopped and kept its last good checkpoint."""

    default_hint = "lower the learning rate or use --precision fp32, then resume from the last checkpoint"


class _NullTask:
    def advance(self, n: int = 1, status: str | None = None) -> None:
        pass


def batch_size_of(batch: Any) -> int:
    """Number of samples in a collated batch (dict, tensor or sequence of tensors)."""
    if isinstance(batch, Mapping):
        for value in batch.values():
            if hasattr(value, "shape"):
                return int(value.shape[0])
            if isinstance(value, Sequence) and not isinstance(value, str):
                return len(value)
    if hasattr(batch, "shape"):
        return int(batch.shape[0])
    if isinstance(batch, Sequence) and batch:
        return batch_size_of(batch[0])
    return 1


class Trainer(ABC):
    """Generic training loop; subclasses fill ``models`` / ``optimizers`` / ``schedulers`` and ``train_step``."""

    arch: str = "model"
    status_keys: tuple[str, ...] = ()  # losses shown on the progress bar (default: all)

    def __init__(
        self,
        run: RunDirectory,
        loop: LoopConfig,
        manager: DeviceManager,
        dist: DistContext | None = None,
        config: Mapping[str, Any] | None = None,
    ) -> None:
        from histostain.runtime.distributed import DistContext, DistEnv

        self.run = run
        self.loop = loop
        self.manager = manager
        self.dist = dist if dist is not None else DistContext(DistEnv(), manager)
        self.config = dict(config or {})
        self.models: dict[str, torch.nn.Module] = {}
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.schedulers: dict[str, Any] = {}
        self.scaler = manager.grad_scaler()
        self.state = LoopState()
        self.on_step_end: Callable[[Trainer], None] | None = None  # extension / test hook, after each step
        self._in_step = False
        self._metrics = MetricsLog(run.metrics_path, enabled=self.dist.is_main)
        self._saved_step: int | None = None
        self._last_row: dict[str, float] = {}
        self._last_validation: dict[str, float] = {}

    # -------------------------------------------------------------- to implement / override
    @abstractmethod
    def train_step(self, batch: Any) -> Mapping[str, torch.Tensor]:
        """One optimisation step on ``batch``; call :meth:`guard` on the losses before ``backward``."""

    def on_epoch_end(self, epoch: int) -> None:
        """Called after each full epoch (0-based index); by default steps every scheduler once."""
        for scheduler in self.schedulers.values():
            scheduler.step()

    def validate(self) -> dict[str, float]:
        """Validation metrics (run on rank 0 only); empty by default."""
        return {}

    def sample_image(self) -> np.ndarray | None:
        """A uint8 HxWx3 picture of the current step's outputs for samples/ (None: nothing to show)."""
        return None

    def extra_state(self) -> dict[str, Any]:
        """Per-rank state beyond models/optimisers (e.g. image pools); CPU tensors and plain values only."""
        return {}

    def load_extra_state(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`extra_state` returned (nothing to do by default)."""
        return None

    def checkpoint_extra(self) -> dict[str, Any]:
        """Extra top-level checkpoint entries (e.g. architecture descriptions for inference)."""
        return {}

    def primary_state_dict(self) -> dict[str, Any]:
        """The checkpoint's ``state_dict`` (the model inference uses); the first model by default."""
        return next(iter(self.models.values())).state_dict()

    def batch_size_for_epoch(self, epoch: int) -> int:
        """Batch size (per process) of ``epoch`` (0-based); ``loop.batch_size`` unless a schedule changes it."""
        return self.loop.batch_size

    def learning_rate(self) -> float:
        if not self.optimizers:
            return float("nan")
        return float(next(iter(self.optimizers.values())).param_groups[0]["lr"])

    # -------------------------------------------------------------- guard
    def guard(self, losses: Mapping[str, torch.Tensor]) -> None:
        """Stop with :class:`TrainingDiverged` if any loss is NaN/inf on any rank (before ``backward``)."""
        import torch

        if not losses:
            return
        values = torch.stack([value.detach().float().reshape(()) for value in losses.values()])
        bad = self.dist.any_flags(~torch.isfinite(values))
        if bool(bad.any()):
            names = [name for name, flag in zip(losses, bad.tolist(), strict=True) if flag]
            self._diverged(f"loss {', '.join(names)} became NaN or infinite")

    def _diverged(self, what: str) -> None:
        kept = (
            f"{self.run.last} keeps the last good state (step {self._saved_step})"
            if self._saved_step is not None
            else "no checkpoint had been written yet"
        )
        raise TrainingDiverged(
            f"training diverged at step {self.state.step + 1} (epoch {self.state.epoch + 1}): {what}; "
            f"stopped without saving; {kept}"
        )

    def _check_parameters(self) -> None:
        import torch

        for name, model in self.models.items():
            flags = [torch.isfinite(p.detach()).all() for p in model.parameters()]
            if flags and not bool(torch.stack(flags).all()):
                self._diverged(f"parameters of {name} became NaN or infinite")

    # -------------------------------------------------------------- checkpoints
    def save(self) -> Path:
        """Write ``last.pt`` (rank 0; all ranks must call it: per-rank RNG and extra state are gathered)."""
        from histostain.runtime.checkpoint import make_checkpoint, save_checkpoint

        self._check_parameters()
        per_rank = self.dist.gather_object({"rng": capture_rng_state(), "extra": self.extra_state()})
        if self.dist.is_main:
            assert per_rank is not None
            payload = make_checkpoint(
                self.arch,
                self.primary_state_dict(),
                self.config,
                models={name: model.state_dict() for name, model in self.models.items()},
                optimizers={name: opt.state_dict() for name, opt in self.optimizers.items()},
                schedulers={name: sched.state_dict() for name, sched in self.schedulers.items()},
                scaler=self.scaler.state_dict(),
                epoch=self.state.epoch,
                step=self.state.step,
                batch_in_epoch=self.state.batch_in_epoch,
                best=self.state.best,
                best_step=self.state.best_step,
                best_metric=self.loop.best_metric,
                world_size=self.dist.world_size,
                rank_states=per_rank,
                **self.checkpoint_extra(),
            )
            save_checkpoint(self.run.last, payload)
            log.debug("saved %s at step %d", self.run.last, self.state.step)
        self._saved_step = self.state.step
        return self.run.last

    def _copy_last(self, target: Path) -> None:
        if self.dist.is_main:
            with atomic_path(target) as tmp:
                shutil.copyfile(self.run.last, tmp)

    def restore(self, path: str | Path | None = None) -> None:
        """Load everything :meth:`save` wrote (strict model loading); the loop continues where it stopped."""
        from histostain.runtime.checkpoint import load_histostain_checkpoint

        file = Path(path) if path is not None else self.run.last
        payload = load_histostain_checkpoint(file, arch=self.arch)
        try:
            for group, target in (("models", self.models), ("optimizers", self.optimizers)):
                stored = payload[group]
                if set(stored) != set(target):
                    raise WeightsError(f"{file}: {group} {sorted(stored)} do not match this trainer's {sorted(target)}")
                for name, obj in target.items():
                    obj.load_state_dict(stored[name])
            for name, scheduler in self.schedulers.items():
                scheduler.load_state_dict(payload["schedulers"][name])
            if payload.get("scaler") and self.scaler.is_enabled():
                self.scaler.load_state_dict(payload["scaler"])
        except (KeyError, RuntimeError, ValueError) as exc:
            reason = " ".join(str(exc).split())[:300]
            raise WeightsError(
                f"{file} does not fit this run's configuration ({reason})",
                hint="resume with the same architecture options the run was started with",
            ) from exc
        self.state = LoopState(
            epoch=int(payload["epoch"]),
            step=int(payload["step"]),
            batch_in_epoch=int(payload.get("batch_in_epoch", 0)),
            best=payload.get("best"),
            best_step=payload.get("best_step"),
        )
        per_rank = payload.get("rank_states") or []
        if per_rank:
            if len(per_rank) != self.dist.world_size:
                log.warning(
                    "%s was written by %d process(es), resuming with %d: RNG and pool states are reused modulo the"
                    " rank, so the continuation is not bit-exact",
                    file,
                    len(per_rank),
                    self.dist.world_size,
                )
            mine = per_rank[self.dist.rank % len(per_rank)]
            self.load_extra_state(mine.get("extra", {}))
            restore_rng_state(mine["rng"])
        self._saved_step = self.state.step
        self._metrics.truncate_after(self.state.step)
        log.info("resumed %s at epoch %d, step %d", file, self.state.epoch + 1, self.state.step)

    # -------------------------------------------------------------- the loop
    def _max_steps_reached(self) -> bool:
        return self.loop.max_steps is not None and self.state.step >= self.loop.max_steps

    def _loader(self, dataset: Dataset, sampler: Any, epoch: int) -> Any:
        import torch
        from torch.utils.data import DataLoader

        batch_size = self.batch_size_for_epoch(epoch)
        sampler.set_epoch(epoch)
        sampler.skip(self.state.batch_in_epoch * batch_size)
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(epoch)
        # a private generator: worker seeds depend on (seed, epoch) and the global torch RNG is left untouched
        generator = torch.Generator().manual_seed(self.loop.seed * 1_000_003 + epoch)
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            # at most one worker per core (more only queue behind each other; torch warns about it)
            num_workers=min(self.loop.num_workers, os.cpu_count() or 1),
            pin_memory=self.manager.plan.kind == "cuda",
            drop_last=False,
            generator=generator,
            worker_init_fn=ignore_stop_signals,
        )

    @contextmanager
    def _progress(self, epoch: int, total: int) -> Iterator[Any]:
        if not self.dist.is_main:
            yield _NullTask()
            return
        with progress_task(f"epoch {epoch + 1}/{self.loop.epochs}", total=total, unit="batch") as task:
            yield task

    def _status(self, sums: Mapping[str, float], count: int) -> str:
        keys = self.status_keys or tuple(sums)
        return " ".join(f"{k} {sums[k] / count:.3g}" for k in keys if k in sums and count)

    def fit(self, dataset: Dataset, *, resume: bool = False) -> FitResult:
        """Train until the last epoch, ``max_steps`` or a stop signal; returns what happened."""
        started = time.perf_counter()
        if resume:
            self.restore()
        sampler = self.dist.sampler(dataset, shuffle=True, seed=self.loop.seed)
        tensorboard = TensorBoard(self.run.tensorboard, self.loop.tensorboard and self.dist.is_main)
        images_done = 0
        status = "completed"
        interval: dict[str, float] = {}
        interval_steps, interval_images, interval_start = 0, 0, time.perf_counter()

        def flush() -> None:
            nonlocal interval, interval_steps, interval_images, interval_start
            if not interval_steps:
                return
            losses = self.dist.mean({k: v / interval_steps for k, v in interval.items()})
            seconds = max(time.perf_counter() - interval_start, 1e-9)
            row: dict[str, Any] = {"step": self.state.step, "epoch": self.state.epoch + 1, **losses}
            row["lr"] = self.learning_rate()
            row["images_per_s"] = interval_images * self.dist.world_size / seconds
            self._metrics.write(row)
            tensorboard.scalars(self.state.step, row)
            self._last_row = {k: float(v) for k, v in row.items()}
            interval, interval_steps, interval_images, interval_start = {}, 0, 0, time.perf_counter()

        try:
            with StopSignal() as stop:
                try:
                    while self.state.epoch < self.loop.epochs:
                        epoch = self.state.epoch
                        if self._max_steps_reached():
                            status = "max_steps"
                            break
                        steps_per_epoch = math.ceil(sampler.num_samples / self.batch_size_for_epoch(epoch))
                        loader = self._loader(dataset, sampler, epoch)
                        shown: dict[str, float] = {}
                        shown_count = 0
                        with self._progress(epoch, steps_per_epoch) as task:
                            task.advance(self.state.batch_in_epoch)
                            iterator = iter(loader)
                            while not self._max_steps_reached():
                                try:
                                    batch = next(iterator)
                                except StopIteration:
                                    break
                                except Exception:
                                    if stop.requested:  # a DataLoader worker died of the same Ctrl-C
                                        raise KeyboardInterrupt from None
                                    raise
                                self._in_step = True
                                losses = self.train_step(batch)
                                self._in_step = False
                                values = {name: float(value) for name, value in losses.items()}
                                if not all(math.isfinite(v) for v in values.values()):
                                    self._diverged("a loss became NaN or infinite")
                                self.state.step += 1
                                self.state.batch_in_epoch += 1
                                size = batch_size_of(batch)
                                images_done += size
                                interval_images += size
                                interval_steps += 1
                                shown_count += 1
                                for name, value in values.items():
                                    interval[name] = interval.get(name, 0.0) + value
                                    shown[name] = shown.get(name, 0.0) + value
                                self._after_step(flush)
                                task.advance(status=self._status(shown, shown_count))
                                if self.on_step_end is not None:
                                    self.on_step_end(self)
                                if self.dist.any_flag(stop.requested):
                                    raise KeyboardInterrupt
                        if self._max_steps_reached() and self.state.batch_in_epoch < steps_per_epoch:
                            status = "max_steps"
                            break
                        # a step budget that ends exactly with the epoch still gets the epoch's bookkeeping
                        flush()
                        self._end_epoch(epoch, tensorboard)
                    if status == "max_steps":
                        flush()
                        if self._saved_step != self.state.step:
                            self.save()
                except KeyboardInterrupt:
                    status = "interrupted"
                    flush()
                    if self._in_step:
                        log.warning(
                            "interrupted inside an optimisation step: not saved; %s keeps step %s",
                            self.run.last,
                            self._saved_step,
                        )
                        self._in_step = False
                    else:
                        self.save()
                        log.warning("interrupted: saved %s at step %d", self.run.last, self.state.step)
        finally:
            tensorboard.close()
        seconds = time.perf_counter() - started
        best_exists = self.dist.is_main and self.run.best.is_file()
        return FitResult(
            status=status,
            run_dir=self.run.root,
            epoch=self.state.epoch,
            epochs=self.loop.epochs,
            step=self.state.step,
            seconds=seconds,
            images_per_second=images_done * self.dist.world_size / seconds if seconds > 0 else 0.0,
            last_checkpoint=self.run.last if self._saved_step is not None else None,
            best_checkpoint=self.run.best if best_exists else None,
            best=self.state.best,
            best_metric=self.loop.best_metric,
            metrics=dict(self._last_row),
            validation=dict(self._last_validation),
            world_size=self.dist.world_size,
            is_main=self.dist.is_main,
        )

    def _after_step(self, flush: Callable[[], None]) -> None:
        step = self.state.step
        if self.loop.log_every and step % self.loop.log_every == 0:
            flush()
        if self.dist.is_main and self.loop.sample_every and step % self.loop.sample_every == 0:
            self._write_sample()
        if self.loop.save_latest_steps and step % self.loop.save_latest_steps == 0:
            self.save()

    def _write_sample(self) -> None:
        from histostain.io.images import write_image

        image = self.sample_image()
        if image is not None:
            write_image(self.run.samples / f"step_{self.state.step:07d}.png", image)

    def _end_epoch(self, epoch: int, tensorboard: TensorBoard) -> None:
        self.on_epoch_end(epoch)
        self.state.epoch += 1
        self.state.batch_in_epoch = 0
        done = self.state.epoch
        improved = False
        if self.loop.val_every and (done % self.loop.val_every == 0 or done == self.loop.epochs):
            metrics = self.validate() if self.dist.is_main else {}
            metrics = self.dist.broadcast_object(metrics)
            if metrics:
                self._last_validation = dict(metrics)
                row = {"step": self.state.step, "epoch": done, **metrics}
                self._metrics.write(row)
                tensorboard.scalars(self.state.step, metrics)
                improved = self._update_best(metrics)
        self.save()
        if self.loop.save_every and done % self.loop.save_every == 0:
            self._copy_last(self.run.periodic(done))
        if improved:
            self._copy_last(self.run.best)

    def _update_best(self, metrics: Mapping[str, float]) -> bool:
        name = self.loop.best_metric
        if name is None or name not in metrics or not math.isfinite(metrics[name]):
            return False
        value = float(metrics[name])
        best = self.state.best
        better = best is None or (value > best if self.loop.best_mode == "max" else value < best)
        if better:
            self.state.best, self.state.best_step = value, self.state.step
            log.info("new best %s = %.4g at step %d", name, value, self.state.step)
        return better


__all__ = ["Trainer", "TrainingDiverged", "batch_size_of"]
