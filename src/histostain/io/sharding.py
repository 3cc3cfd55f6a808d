"""Which share of a batch this process runs: from ``--num-parts/--part-id``, a SLURM array or torchrun.

Many machines (or GPUs) split one input set without talking to each other: every process sorts all inputs
the same way and takes every ``num_parts``-th one starting at ``part_id``, so the parts are disjoint and
together cover every input, on any machine, in any order of starting. No process group is formed; torchrun is
only a convenient launcher of N such processes (one per GPU).

Where the part comes from, first match wins:

1. the flags (explicit always beats the environment; the environment is then ignored with an info message);
2. the scheduler environment: a SLURM array (``SLURM_ARRAY_TASK_COUNT`` tasks, this one
   ``SLURM_ARRAY_TASK_ID``, counted from ``SLURM_ARRAY_TASK_MIN`` in steps of ``SLURM_ARRAY_TASK_STEP``), torchrun
   (``WORLD_SIZE`` processes, this one ``RANK``), or both: torchrun inside each task of an array, giving
   ``count x world`` parts;
3. otherwise one part: everything.

Inconsistent values (a part outside the range, an array that is not a contiguous range of ids) are one-line
errors (:class:`ConfigError`) before any work is done: a wrong part would silently process the wrong share.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from histostain.errors import ConfigError, DeviceError
from histostain.runtime.distributed import DistEnv, detect

if TYPE_CHECKING:
    from histostain.runtime.device import DeviceManager

log = logging.getLogger(__name__)
T = TypeVar("T")

_SOURCES = {"single": "", "flags": "--num-parts/--part-id", "slurm": "SLURM array", "torchrun": "torchrun"}


@dataclass(frozen=True)
class Shard:
    """Part ``part_id`` of ``num_parts``; ``source`` says where that came from; ``local_rank``: torchrun's GPU."""

    part_id: int = 0
    num_parts: int = 1
    source: str = "single"
    local_rank: int | None = None

    def select(self, items: Sequence[T]) -> list[T]:
        """This part's share of ``items`` (which every part must see in the same order)."""
        return list(items[self.part_id :: self.num_parts])

    def describe(self) -> str:
        """E.g. ``part 2 of 4 (SLURM array)``; ``all inputs`` for a single part."""
        if self.num_parts == 1:
            return "all inputs"
        origin = " + ".join(_SOURCES.get(name, name) for name in self.source.split("+"))
        return f"part {self.part_id} of {self.num_parts} ({origin})"

    def to_dict(self) -> dict[str, object]:
        return {"part_id": self.part_id, "num_parts": self.num_parts, "source": self.source}


def _from_flags(num_parts: int | None, part_id: int | None, local_rank: int | None) -> Shard:
    if num_parts is None:
        raise ConfigError(f"--part-id {part_id} needs --num-parts", hint="pass both, e.g. --num-parts 4 --part-id 2")
    if part_id is None:
        if num_parts != 1:
            raise ConfigError(
                f"--num-parts {num_parts} needs --part-id",
                hint="pass --part-id 0 .. N-1, or leave both out under a SLURM array or torchrun",
            )
        part_id = 0
    if num_parts < 1 or not 0 <= part_id < num_parts:
        raise ConfigError(f"invalid shard: part {part_id} of {num_parts}", hint="use 0 <= --part-id < --num-parts")
    return Shard(part_id, num_parts, "flags", local_rank)


def _int(env: Mapping[str, str], name: str, default: int | None = None) -> int | None:
    value = env.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"{name}={value!r} is not an integer", hint="check the job's environment") from None


def slurm_part(environ: Mapping[str, str]) -> tuple[int, int] | None:
    """``(index, count)`` of this task in a SLURM array job, or None outside one.

    The index counts from ``SLURM_ARRAY_TASK_MIN`` (an array ``--array=1-8`` has ids 1..8 and parts 0..7) in
    steps of ``SLURM_ARRAY_TASK_STEP`` (``--array=0-30:10``). Arrays given as lists of ids (``--array=1,5,9``)
    cannot be mapped onto parts without gaps and are refused.
    """
    task = _int(environ, "SLURM_ARRAY_TASK_ID")
    if task is None:
        return None
    first = _int(environ, "SLURM_ARRAY_TASK_MIN", 0)
    step = _int(environ, "SLURM_ARRAY_TASK_STEP", 1)
    last = _int(environ, "SLURM_ARRAY_TASK_MAX")
    count = _int(environ, "SLURM_ARRAY_TASK_COUNT")
    assert first is not None and step is not None
    hint = "submit the array as one range (sbatch --array=0-N-1), or pass --num-parts/--part-id"
    if step < 1:
        raise ConfigError(f"SLURM_ARRAY_TASK_STEP={step} must be positive", hint=hint)
    span = None if last is None else (last - first) // step + 1
    if count is None:
        if span is None:
            raise ConfigError("SLURM_ARRAY_TASK_ID is set but SLURM_ARRAY_TASK_COUNT is not", hint=hint)
        count = span
    if span is not None and span != count:
        raise ConfigError(
            f"the SLURM array is not one range: ids {first}..{last} step {step} but {count} tasks", hint=hint
        )
    offset = task - first
    if count < 1 or offset < 0 or offset % step or offset // step >= count:
        raise ConfigError(
            f"SLURM_ARRAY_TASK_ID={task} is not one of the {count} task(s) from SLURM_ARRAY_TASK_MIN={first} "
            f"in steps of {step}",
            hint=hint,
        )
    return offset // step, count


def _from_environment(environ: Mapping[str, str], dist: DistEnv, local_rank: int | None) -> Shard | None:
    slurm = slurm_part(environ)
    if slurm is not None and dist.is_distributed:
        index, count = slurm
        part, parts = index * dist.world_size + dist.rank, count * dist.world_size
        return Shard(part, parts, "slurm+torchrun", local_rank)
    if slurm is not None:
        return Shard(slurm[0], slurm[1], "slurm", local_rank)
    if dist.is_distributed:
        return Shard(dist.rank, dist.world_size, "torchrun", local_rank)
    return None


def resolve_shard(
    num_parts: int | None = None, part_id: int | None = None, environ: Mapping[str, str] | None = None
) -> Shard:
    """This process's part: flags, else SLURM array and/or torchrun, else everything (module docstring)."""
    env = os.environ if environ is None else environ
    dist = detect(env)
    local_rank = dist.local_rank if dist.is_distributed else None
    scheduled = _from_environment(env, dist, local_rank)
    if num_parts is not None or part_id is not None:
        shard = _from_flags(num_parts, part_id, local_rank)
        if scheduled is not None and (scheduled.part_id, scheduled.num_parts) != (shard.part_id, shard.num_parts):
            log.info("using %s; ignoring %s from the environment", shard.describe(), scheduled.describe())
        return shard
    return scheduled if scheduled is not None else Shard(local_rank=local_rank)


def shard_device(manager: DeviceManager, shard: Shard, device_count: int | None = None) -> DeviceManager:
    """One GPU per torchrun process: a CUDA manager moves to ``cuda:LOCAL_RANK``; others are returned unchanged.

    Without this every rank of ``torchrun --nproc_per_node 4`` would run on ``cuda:0``. ``device_count``
    (default: torch's count) exists so tests can check the rule on a machine without GPUs.
    """
    if shard.local_rank is None or manager.plan.kind != "cuda":
        return manager
    if device_count is None:
        import torch

        device_count = torch.cuda.device_count()
    if shard.local_rank >= device_count:
        raise DeviceError(
            f"LOCAL_RANK {shard.local_rank} has no GPU (only {device_count} visible)",
            hint="start torchrun with --nproc_per_node no larger than the number of GPUs",
        )
    device = f"cuda:{shard.local_rank}"
    if manager.plan.device == device:
        return manager
    from histostain.runtime.device import DeviceManager

    return DeviceManager(dataclasses.replace(manager.plan, device=device))


__all__ = ["Shard", "resolve_shard", "shard_device", "slurm_part"]
