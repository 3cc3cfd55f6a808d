"""Multi-process training under ``torchrun``: detection, process group, DDP wrapping, sampling, rank-0 duties.

``torchrun --nproc_per_node N`` starts N copies of the command with ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR`` and ``MASTER_PORT`` in the environment. :func:`detect` reads them; :func:`init_distributed`
joins the process group (NCCL on CUDA, gloo on CPU), moves each process to its own GPU (``cuda:LOCAL_RANK``)
and silences logging and progress on every rank but 0. A plain ``histostain train ...`` (no torchrun) gets a
single-process context whose collective calls are no-ops, so trainers are written once for both cases.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from histostain.errors import ConfigError, DeviceError

if TYPE_CHECKING:
    import torch
    from torch.utils.data import Dataset

    from histostain.runtime.device import DeviceManager

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistEnv:
    """What torchrun told this process (rank 0 of 1 when it was not started by torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def detect(environ: Mapping[str, str] | None = None) -> DistEnv:
    """Read ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` (set by torchrun); absent means a single process."""
    env = os.environ if environ is None else environ
    if "WORLD_SIZE" not in env and "RANK" not in env:
        return DistEnv()
    try:
        rank = int(env.get("RANK", "0"))
        world = int(env.get("WORLD_SIZE", "1"))
        local = int(env.get("LOCAL_RANK", str(rank)))
    except ValueError as exc:
        raise ConfigError(f"invalid torchrun environment (RANK/WORLD_SIZE/LOCAL_RANK): {exc}") from exc
    if world < 1 or not 0 <= rank < world or local < 0:
        raise ConfigError(f"invalid torchrun environment: RANK={rank} WORLD_SIZE={world} LOCAL_RANK={local}")
    return DistEnv(rank=rank, world_size=world, local_rank=local)


class DistContext:
    """The collective operations a trainer needs; every call is a cheap no-op in a single process."""

    def __init__(self, env: DistEnv, manager: DeviceManager, backend: str | None = None) -> None:
        self.env = env
        self.manager = manager
        self.backend = backend
        self._owns_group = False

    # -- identity
    @property
    def rank(self) -> int:
        return self.env.rank

    @property
    def world_size(self) -> int:
        return self.env.world_size

    @property
    def is_main(self) -> bool:
        return self.env.is_main

    @property
    def is_distributed(self) -> bool:
        return self.env.is_distributed

    # -- models and data
    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """Wrap in DistributedDataParallel when distributed (gradients averaged across ranks in backward)."""
        if not self.is_distributed:
            return model
        from torch.nn.parallel import DistributedDataParallel

        if self.manager.plan.kind == "cuda":
            index = self.manager.device.index
            return DistributedDataParallel(model, device_ids=[index], output_device=index)
        return DistributedDataParallel(model)

    def sampler(self, dataset: Dataset, *, shuffle: bool = True, seed: int = 0) -> ResumableSampler:
        """A sampler giving this rank its share of ``dataset`` (the same order on every run for a seed)."""
        return ResumableSampler(dataset, self.world_size, self.rank, shuffle=shuffle, seed=seed)

    # -- collectives
    def barrier(self) -> None:
        if self.is_distributed:
            import torch.distributed as dist

            dist.barrier()

    def any_flag(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on at least one (stop and divergence decisions)."""
        if not self.is_distributed:
            return bool(flag)
        import torch
        import torch.distributed as dist

        value = torch.tensor([1.0 if flag else 0.0], device=self._collective_device())
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item() > 0)

    def any_flags(self, flags: torch.Tensor) -> torch.Tensor:
        """Element-wise OR of a bool/float vector across ranks (returned on the CPU)."""
        if not self.is_distributed:
            return flags.detach().float().cpu()
        import torch.distributed as dist

        value = flags.detach().float().to(self._collective_device())
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return value.cpu()

    def mean(self, values: Mapping[str, float]) -> dict[str, float]:
        """Average scalar metrics over ranks (used for the logged losses)."""
        if not self.is_distributed or not values:
            return dict(values)
        import torch
        import torch.distributed as dist

        keys = list(values)
        tensor = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=self._collective_device())
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return {k: float(v) / self.world_size for k, v in zip(keys, tensor.cpu().tolist(), strict=True)}

    def gather_object(self, obj: Any) -> list[Any] | None:
        """Collect one picklable object per rank on rank 0 (a list by rank there, None elsewhere)."""
        if not self.is_distributed:
            return [obj]
        import torch.distributed as dist

        out: list[Any] | None = [None] * self.world_size if self.is_main else None
        dist.gather_object(obj, out, dst=0)
        return out

    def broadcast_object(self, obj: Any) -> Any:
        """Send rank 0's object to every rank."""
        if not self.is_distributed:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def _collective_device(self) -> torch.device:
        import torch

        return self.manager.device if self.backend == "nccl" else torch.device("cpu")

    # -- lifecycle
    def cleanup(self) -> None:
        """Leave the process group (only if this context created it)."""
        if self._owns_group:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
            self._owns_group = False

    def __enter__(self) -> DistContext:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


def _device_for_rank(manager: DeviceManager, env: DistEnv) -> DeviceManager:
    """One GPU per process: rank with LOCAL_RANK k uses ``cuda:k`` (CPU and MPS are left as they are)."""
    from histostain.runtime.device import DeviceManager

    if manager.plan.kind != "cuda":
        return manager
    import torch

    count = torch.cuda.device_count()
    if env.local_rank >= count:
        raise DeviceError(
            f"LOCAL_RANK {env.local_rank} has no GPU (only {count} visible)",
            hint="start torchrun with --nproc_per_node no larger than the number of GPUs",
        )
    torch.cuda.set_device(env.local_rank)
    plan = dataclasses.replace(manager.plan, device=f"cuda:{env.local_rank}")
    return DeviceManager(plan)


def init_distributed(
    manager: DeviceManager,
    env: DistEnv | None = None,
    *,
    backend: str | None = None,
    timeout_minutes: float = 30.0,
) -> DistContext:
    """Join the torchrun process group if there is one; return the context trainers use.

    Backend: NCCL on CUDA, gloo otherwise (``backend`` overrides). On ranks other than 0 the ``histostain``
    logger is raised to WARNING and progress bars are switched off, so only rank 0 reports.
    """
    env = detect() if env is None else env
    if not env.is_distributed:
        return DistContext(env, manager)
    import torch.distributed as dist

    if not dist.is_available():
        raise DeviceError("this torch build has no torch.distributed support", hint="run without torchrun")
    manager = _device_for_rank(manager, env)
    chosen = backend or ("nccl" if manager.plan.kind == "cuda" else "gloo")
    context = DistContext(env, manager, chosen)
    if not dist.is_initialized():
        for name in ("MASTER_ADDR", "MASTER_PORT"):
            if name not in os.environ:
                raise ConfigError(f"WORLD_SIZE={env.world_size} is set but {name} is not", hint="start with torchrun")
        dist.init_process_group(
            backend=chosen,
            rank=env.rank,
            world_size=env.world_size,
            timeout=timedelta(minutes=timeout_minutes),
        )
        context._owns_group = True
    if not env.is_main:
        _silence_non_main()
    log.info("distributed: rank %d/%d, backend %s, device %s", env.rank, env.world_size, chosen, manager.device)
    return context


def _silence_non_main() -> None:
    from histostain.runtime import progress

    logging.getLogger("histostain").setLevel(logging.WARNING)
    progress.configure(enabled=False, log_interval=float("inf"))


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module inside DDP / DataParallel / ``torch.compile`` wrappers (what checkpoints store)."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


class ResumableSampler:
    """Deterministic per-epoch order split across ranks, able to skip the batches already done in an epoch.

    The order of epoch ``e`` is a permutation drawn from ``torch.Generator().manual_seed(seed + e)``, padded by
    wrapping so every rank gets the same number of samples (as ``DistributedSampler``), then rank ``r`` takes
    every ``world_size``-th index starting at ``r``. ``skip(n)`` drops the first ``n`` indices of the next
    iteration only: resuming mid-epoch continues with exactly the samples a straight run would have seen.
    """

    def __init__(self, dataset: Dataset, num_replicas: int = 1, rank: int = 0, *, shuffle: bool = True, seed: int = 0):
        self.length = len(dataset)  # type: ignore[arg-type]
        if self.length == 0:
            raise ConfigError("the training dataset is empty")
        self.num_replicas, self.rank, self.shuffle, self.seed = num_replicas, rank, shuffle, int(seed)
        self.epoch = 0
        self._skip = 0
        self.num_samples = -(-self.length // num_replicas)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def skip(self, count: int) -> None:
        self._skip = max(0, int(count))

    def indices(self) -> list[int]:
        """This rank's full index list for the current epoch (ignoring any skip)."""
        import torch

        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.length, generator=generator).tolist()
        else:
            order = list(range(self.length))
        total = self.num_samples * self.num_replicas
        while len(order) < total:
            order += order[: total - len(order)]
        return order[self.rank : total : self.num_replicas]

    def __iter__(self) -> Iterator[int]:
        order = self.indices()[self._skip :]
        self._skip = 0
        return iter(order)

    def __len__(self) -> int:
        return self.num_samples - self._skip


__all__ = [
    "DistContext",
    "DistEnv",
    "ResumableSampler",
    "detect",
    "init_distributed",
    "unwrap",
]
