"""The training runtime every trainer shares (CycleGAN now, HoVer-Net later): run folder, loop, checkpoints.

A trainer subclasses :class:`Trainer`, registers its models, optimisers and schedulers in ``self.models``,
``self.optimizers`` and ``self.schedulers``, and implements :meth:`Trainer.train_step`. The base class runs the
epochs and gives it, for free:

* a run folder (:class:`RunDirectory`): ``config.toml``, ``checkpoints/{last,best,epoch_NNNN}.pt``,
  ``metrics.csv``, ``samples/`` and, when ``tensorboard`` is installed, ``tensorboard/`` events;
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

import csv
import io
import logging
import math
import random
import shutil
import signal
import threading
import time
import tomllib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
from pydantic import BaseModel, ValidationError

from histostain.errors import ConfigError, HistostainError, WeightsError
from histostain.io.atomic import atomic_path, atomic_write_text
from histostain.runtime.config_toml import write_toml
from histostain.runtime.progress import progress_task

ConfigT = TypeVar("ConfigT", bound=BaseModel)

if TYPE_CHECKING:
    import torch
    from torch.utils.data import Dataset

    from histostain.runtime.device import DeviceManager
    from histostain.runtime.distributed import DistContext

log = logging.getLogger(__name__)

RUN_TABLE = "run"  # the config.toml table that records how the run was made (ignored when loading a config)


class TrainingDiverged(HistostainError):
    """A loss (or a parameter) became NaN or infinite; the run stopped and kept its last good checkpoint."""

    default_hint = "lower the learning rate or use --precision fp32, then resume from the last checkpoint"


# ------------------------------------------------------------------------------------------------ run folder


class RunDirectory:
    """``<runs_dir>/<name>/``: everything one training run writes, under fixed names."""

    def __init__(self, runs_dir: str | Path, name: str) -> None:
        if not name or name in {".", ".."} or "/" in name or "\\" in name:
            raise ConfigError(f"invalid run name {name!r}", hint="use a plain folder name such as bci_cyclegan")
        self.name = name
        self.root = Path(runs_dir) / name
        self.config_path = self.root / "config.toml"
        self.checkpoints = self.root / "checkpoints"
        self.last = self.checkpoints / "last.pt"
        self.best = self.checkpoints / "best.pt"
        self.samples = self.root / "samples"
        self.metrics_path = self.root / "metrics.csv"
        self.tensorboard = self.root / "tensorboard"

    def periodic(self, epoch: int) -> Path:
        return self.checkpoints / f"epoch_{epoch:04d}.pt"

    def check(self, resume: bool) -> None:
        """Refuse to overwrite a previous run, and to resume one that has no checkpoint (read-only)."""
        if resume:
            if not self.last.is_file():
                raise ConfigError(
                    f"cannot resume: {self.last} does not exist",
                    hint="start the run without --resume (or check --name and --runs-dir)",
                )
        elif self.root.exists() and any(self.root.iterdir()):
            raise ConfigError(
                f"run folder {self.root} already exists",
                hint="add --resume to continue it, or choose another --name",
            )

    def create(self) -> None:
        for folder in (self.checkpoints, self.samples):
            folder.mkdir(parents=True, exist_ok=True)

    def write_config(
        self,
        config: Mapping[str, Any],
        command: Sequence[str] | None = None,
        info: Mapping[str, Any] | None = None,
    ) -> None:
        """Record the resolved config plus a ``[run]`` table (command line, version, times) as config.toml."""
        from histostain import __version__

        previous = self.read_run_info()
        now = datetime.now(UTC).isoformat(timespec="seconds")
        run: dict[str, Any] = {
            "name": self.name,
            "histostain_version": __version__,
            "created": previous.get("created", now),
            "updated": now,
            "command": list(command) if command is not None else [],
        }
        run.update(info or {})
        data = {key: value for key, value in config.items() if key != RUN_TABLE}
        data[RUN_TABLE] = run
        write_toml(
            self.config_path,
            data,
            header="histostain training run: the resolved configuration.\n"
            "Reuse it with --config (the [run] table is ignored when loading).",
        )

    def read_config(self) -> dict[str, Any]:
        """The resolved config stored in config.toml, without the ``[run]`` table."""
        data = read_toml(self.config_path)
        data.pop(RUN_TABLE, None)
        return data

    def read_run_info(self) -> dict[str, Any]:
        if not self.config_path.is_file():
            return {}
        info = read_toml(self.config_path).get(RUN_TABLE, {})
        return dict(info) if isinstance(info, dict) else {}


def read_toml(path: str | Path) -> dict[str, Any]:
    """Parse a TOML file; a missing or malformed file is a ConfigError naming it."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"config file not found: {file}")
    try:
        with file.open("rb") as handle:
            return tomllib.load(handle)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{file} is not valid TOML ({exc})") from exc


def resolve_training_config(
    model: type[ConfigT],
    command: str,
    *,
    config_file: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    base: Mapping[str, Any] | None = None,
) -> ConfigT:
    """defaults < ``base`` (a resumed run's config) < ``config_file`` < ``overrides`` (flags; None = not given).

    A run's own ``config.toml`` works as ``config_file`` too (its ``[run]`` table is ignored). An invalid value
    is a ConfigError naming the option and the layer it came from; ``command`` (e.g. ``"train cyclegan"``)
    picks the help page in the hint.
    """
    data: dict[str, Any] = {}
    sources: dict[str, str] = {}
    layers: list[tuple[str, Mapping[str, Any]]] = [("the run's config.toml", base or {})]
    if config_file is not None:
        file_data = read_toml(config_file)
        file_data.pop("run", None)
        layers.append((str(config_file), file_data))
    layers.append(("the command line", {k: v for k, v in (overrides or {}).items() if v is not None}))
    for source, values in layers:
        for key, value in values.items():
            data[key] = value
            sources[key] = source
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        key = str(first["loc"][0]) if first["loc"] else ""
        where = f" (from {sources[key]})" if key in sources else ""
        message = first["msg"].removeprefix("Value error, ")
        if first["type"] == "extra_forbidden":
            message = "unknown option"
        label = f"{key}: " if key else ""
        page = command.replace(" ", "-")
        raise ConfigError(
            f"invalid training option {label}{message}{where}",
            hint=f"see `histostain {command} --help` and docs/commands/{page}.md",
        ) from exc


def check_resume_fixed(stored: Any, resolved: Any, keys: Sequence[str]) -> None:
    """Refuse options that cannot change when resuming (they define the networks, optimiser or data order)."""
    for key in keys:
        old, new = getattr(stored, key), getattr(resolved, key)
        if old != new:
            raise ConfigError(
                f"cannot change {key} when resuming (the run was started with {old!r}, got {new!r})",
                hint="drop the option, or start a new run with another --name",
            )


def open_run(
    runs_dir: str | Path,
    name: str,
    resume: bool,
    config: ConfigT | None,
    resolve: Callable[[Mapping[str, Any] | None], ConfigT],
    check_resume: Callable[[Mapping[str, Any], ConfigT], None],
) -> tuple[RunDirectory, ConfigT]:
    """Check the run folder, resolve the config (on resume over the stored one) and refuse fixed-option changes."""
    run = RunDirectory(runs_dir, name)
    run.check(resume)
    stored = run.read_config() if resume else None
    if config is None:
        config = resolve(stored)
    if stored is not None:
        check_resume(stored, config)
    return run, config


def record_run(
    run: RunDirectory,
    dist: Any,
    config: BaseModel,
    command: Sequence[str] | None,
    prepared: Path,
    config_file: str | Path | None,
    **info: Any,
) -> None:
    """Rank 0 creates the run folder and writes config.toml with the provenance every run records."""
    if not dist.is_main:
        return
    run.create()
    run.write_config(
        config.model_dump(),
        command,
        info={
            "prepared": str(Path(prepared).resolve()),
            "config_file": str(config_file) if config_file else "",
            "world_size": dist.world_size,
            "device": str(dist.manager.device),
            "precision": dist.manager.precision,
            **info,
        },
    )


# ------------------------------------------------------------------------------------------------ metrics log


class MetricsLog:
    """``metrics.csv``: one row per logging interval (and per validation), columns grow as new keys appear."""

    def __init__(self, path: Path, enabled: bool = True) -> None:
        self.path = path
        self.enabled = enabled
        self.columns: list[str] = []
        if enabled and path.is_file():
            with path.open(newline="") as handle:
                header = next(csv.reader(handle), None)
            self.columns = list(header or [])

    def _rows(self) -> list[dict[str, str]]:
        if not self.path.is_file():
            return []
        with self.path.open(newline="") as handle:
            return list(csv.DictReader(handle))

    def _rewrite(self, rows: list[Mapping[str, Any]]) -> None:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=self.columns, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _cell(v) for k, v in row.items()})
        atomic_write_text(self.path, buffer.getvalue())

    def truncate_after(self, step: int) -> None:
        """Drop rows logged after ``step`` (a resumed run continues from its checkpoint, not from the log)."""
        if not self.enabled or not self.path.is_file():
            return
        rows = self._rows()
        # a row cut short by a crash has missing fields (None): drop it with the rows after the checkpoint
        kept = [row for row in rows if None not in row.values() and 0 <= _as_int(row.get("step")) <= step]
        if len(kept) != len(rows):
            self._rewrite(kept)

    def write(self, row: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        new = [key for key in row if key not in self.columns]
        if new or not self.path.is_file():
            rows = self._rows()
            self.columns += new
            self._rewrite([*rows, row])
            return
        with self.path.open("a", newline="") as handle:
            csv.DictWriter(handle, fieldnames=self.columns, lineterminator="\n").writerow(
                {k: _cell(v) for k, v in row.items()}
            )


def _cell(value: Any) -> Any:
    if isinstance(value, float):
        return f"{value:.6g}"
    return "" if value is None else value


def _as_int(value: Any) -> int:
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return -1


class _TensorBoard:
    """Scalars to TensorBoard when ``torch.utils.tensorboard`` (i.e. the tensorboard package) is importable."""

    def __init__(self, folder: Path, enabled: bool) -> None:
        self.writer: Any = None
        if not enabled:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except Exception:  # tensorboard is optional: any import problem just means no events
            log.debug("tensorboard is not installed; no event files will be written")
            return
        self.writer = SummaryWriter(log_dir=str(folder))

    def scalars(self, step: int, values: Mapping[str, Any]) -> None:
        if self.writer is None:
            return
        for key, value in values.items():
            if isinstance(value, int | float) and key not in {"step", "epoch"}:
                self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


# ---------------------------------------------------------------------------------------------- RNG and seeds


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices) from one integer."""
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def set_deterministic(enabled: bool = True) -> None:
    """Deterministic kernels (bit-exact reruns; slower). On CUDA this also needs CUBLAS_WORKSPACE_CONFIG."""
    import os

    import torch

    if enabled and torch.cuda.is_available():
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(enabled)
    torch.backends.cudnn.benchmark = not enabled
    torch.backends.cudnn.deterministic = enabled


def capture_rng_state() -> dict[str, Any]:
    """Python, numpy (legacy global) and torch CPU/CUDA generator states, as weights-only-loadable values."""
    import torch

    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    import torch

    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            numpy_state["kind"],
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["pos"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        states = state["cuda"]
        if len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states)
        else:
            log.warning("checkpoint holds %d CUDA RNG states for %d GPUs; not restored", len(states), len(states))


# ------------------------------------------------------------------------------------------------ Ctrl-C


class StopSignal:
    """SIGINT/SIGTERM set a flag (the loop stops after the current step); a second SIGINT aborts at once."""

    SIGNALS = ("SIGINT", "SIGTERM")

    def __init__(self) -> None:
        self.requested = False
        self.signal_name = ""
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested, self.signal_name = True, name
        log.warning("%s received: saving a checkpoint after this step (Ctrl-C again to abort without saving)", name)

    def __enter__(self) -> StopSignal:
        if threading.current_thread() is threading.main_thread():
            for name in self.SIGNALS:
                signum = getattr(signal, name, None)
                if signum is not None:
                    self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()


def _ignore_stop_signals(worker_id: int) -> None:
    """DataLoader workers ignore Ctrl-C / SIGTERM: the main process stops after its step and shuts them down."""
    for name in StopSignal.SIGNALS:
        signum = getattr(signal, name, None)
        if signum is not None:
            signal.signal(signum, signal.SIG_IGN)


# ------------------------------------------------------------------------------------------------ the loop


@dataclass
class LoopConfig:
    """How the generic loop runs; 0 switches a periodic action off."""

    epochs: int
    batch_size: int = 1
    num_workers: int = 0
    seed: int = 0
    log_every: int = 100  # steps between metrics.csv rows (losses averaged over the interval)
    sample_every: int = 400  # steps between sample images
    save_every: int = 5  # epochs between kept copies checkpoints/epoch_NNNN.pt
    save_latest_steps: int = 5000  # steps between mid-epoch refreshes of last.pt
    val_every: int = 5  # epochs between validations
    max_steps: int | None = None  # stop after this many optimisation steps in total
    best_metric: str | None = None  # validation metric that selects best.pt
    best_mode: str = "max"  # "max" or "min"
    tensorboard: bool = True


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
            num_workers=self.loop.num_workers,
            pin_memory=self.manager.plan.kind == "cuda",
            drop_last=False,
            generator=generator,
            worker_init_fn=_ignore_stop_signals,
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
        tensorboard = _TensorBoard(self.run.tensorboard, self.loop.tensorboard and self.dist.is_main)
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

    def _end_epoch(self, epoch: int, tensorboard: _TensorBoard) -> None:
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


__all__ = [
    "FitResult",
    "LoopConfig",
    "LoopState",
    "MetricsLog",
    "RunDirectory",
    "StopSignal",
    "Trainer",
    "TrainingDiverged",
    "batch_size_of",
    "capture_rng_state",
    "read_toml",
    "restore_rng_state",
    "seed_everything",
    "set_deterministic",
]
