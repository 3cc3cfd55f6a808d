"""Shard selection: flags, SLURM arrays, torchrun, their combination, conflicts, and the per-rank GPU."""

from __future__ import annotations

import pytest

from histostain.errors import ConfigError, DeviceError
from histostain.io.sharding import Shard, resolve_shard, shard_device


def _slurm(task: int, first: int, count: int, last: int | None = None, step: int | None = None) -> dict[str, str]:
    env = {"SLURM_ARRAY_TASK_ID": str(task), "SLURM_ARRAY_TASK_MIN": str(first), "SLURM_ARRAY_TASK_COUNT": str(count)}
    if last is not None:
        env["SLURM_ARRAY_TASK_MAX"] = str(last)
    if step is not None:
        env["SLURM_ARRAY_TASK_STEP"] = str(step)
    return env


def _part(shard: Shard) -> tuple[int, int, str]:
    return shard.part_id, shard.num_parts, shard.source


@pytest.mark.parametrize(
    ("num_parts", "part_id", "expected"),
    [(None, None, (0, 1, "single")), (4, 2, (2, 4, "flags")), (1, None, (0, 1, "flags")), (3, 0, (0, 3, "flags"))],
)
def test_flags(num_parts: int | None, part_id: int | None, expected: tuple[int, int, str]) -> None:
    assert _part(resolve_shard(num_parts, part_id, environ={})) == expected


@pytest.mark.parametrize(
    ("num_parts", "part_id", "fragment"),
    [
        (2, 2, "part 2 of 2"),
        (0, 0, "part 0 of 0"),
        (2, -1, "part -1 of 2"),
        (None, 1, "needs --num-parts"),
        (4, None, "needs --part-id"),
    ],
)
def test_inconsistent_flags_are_config_errors(num_parts: int | None, part_id: int | None, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        resolve_shard(num_parts, part_id, environ={})


def test_slurm_array_counts_from_its_first_id() -> None:
    # sbatch --array=3-6: ids 3, 4, 5, 6 are parts 0..3 of 4
    parts = [_part(resolve_shard(environ=_slurm(task, 3, 4, last=6))) for task in (3, 4, 5, 6)]
    assert parts == [(0, 4, "slurm"), (1, 4, "slurm"), (2, 4, "slurm"), (3, 4, "slurm")]
    assert _part(resolve_shard(environ=_slurm(5, 3, 4))) == (2, 4, "slurm")  # without SLURM_ARRAY_TASK_MAX


def test_slurm_array_with_a_step() -> None:
    # sbatch --array=0-30:10: ids 0, 10, 20, 30
    assert _part(resolve_shard(environ=_slurm(20, 0, 4, last=30, step=10))) == (2, 4, "slurm")
    env = _slurm(20, 0, 4, last=30, step=10)
    del env["SLURM_ARRAY_TASK_COUNT"]  # the count follows from min, max and step
    assert _part(resolve_shard(environ=env)) == (2, 4, "slurm")


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        (_slurm(9, 3, 4), "SLURM_ARRAY_TASK_ID=9 is not one of the 4 task"),
        (_slurm(2, 3, 4), "SLURM_ARRAY_TASK_ID=2"),
        (_slurm(5, 1, 3, last=9), "not one range"),  # --array=1,5,9: a list, parts would have gaps
        (_slurm(15, 0, 4, last=30, step=10), "SLURM_ARRAY_TASK_ID=15"),
        ({"SLURM_ARRAY_TASK_ID": "x1", "SLURM_ARRAY_TASK_COUNT": "2"}, "SLURM_ARRAY_TASK_ID='x1' is not an integer"),
        ({"SLURM_ARRAY_TASK_ID": "1"}, "SLURM_ARRAY_TASK_COUNT is not"),
    ],
)
def test_inconsistent_slurm_environment_is_a_config_error(env: dict[str, str], fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        resolve_shard(environ=env)


def test_torchrun_rank_and_world_size() -> None:
    shard = resolve_shard(environ={"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1"})
    assert _part(shard) == (3, 4, "torchrun") and shard.local_rank == 1
    assert resolve_shard(environ={"WORLD_SIZE": "1", "RANK": "0"}) == Shard()  # one process: everything
    with pytest.raises(ConfigError, match="RANK=4 WORLD_SIZE=4"):
        resolve_shard(environ={"WORLD_SIZE": "4", "RANK": "4"})


def test_torchrun_inside_a_slurm_array_multiplies_the_parts() -> None:
    env = {**_slurm(1, 0, 2), "WORLD_SIZE": "4", "RANK": "2", "LOCAL_RANK": "2"}
    shard = resolve_shard(environ=env)
    assert _part(shard) == (6, 8, "slurm+torchrun") and shard.local_rank == 2
    assert shard.describe() == "part 6 of 8 (SLURM array + torchrun)"


def test_explicit_flags_beat_the_environment() -> None:
    env = {**_slurm(2, 0, 3), "WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1"}
    shard = resolve_shard(5, 4, environ=env)
    assert _part(shard) == (4, 5, "flags")
    assert shard.local_rank == 1  # the GPU still follows torchrun's LOCAL_RANK


@pytest.mark.parametrize(("count", "parts"), [(0, 3), (1, 4), (7, 2), (10, 3), (23, 5)])
def test_parts_are_disjoint_and_cover_everything(count: int, parts: int) -> None:
    items = [f"item{i:03d}" for i in range(count)]
    shares = [Shard(part, parts, "flags").select(items) for part in range(parts)]
    flat = [item for share in shares for item in share]
    assert sorted(flat) == items and len(flat) == len(set(flat))
    assert max(map(len, shares)) - min(map(len, shares)) <= 1  # balanced


def test_each_torchrun_process_gets_its_own_gpu() -> None:
    from histostain.runtime.device import DeviceManager, DevicePlan

    cuda = DeviceManager(DevicePlan("cuda:0", "bf16", "auto", "auto", channels_last=True))
    moved = shard_device(cuda, Shard(1, 2, "torchrun", local_rank=1), device_count=2)
    assert moved.plan.device == "cuda:1" and moved.plan.precision == "bf16" and moved.plan.channels_last
    assert cuda.plan.device == "cuda:0"  # the given manager is not changed
    assert shard_device(cuda, Shard(0, 2, "torchrun", local_rank=0), device_count=2) is cuda
    assert shard_device(cuda, Shard(1, 2, "flags"), device_count=2) is cuda  # no torchrun: as configured
    cpu = DeviceManager(DevicePlan("cpu", "fp32", "requested", "auto", channels_last=False))
    assert shard_device(cpu, Shard(1, 2, "torchrun", local_rank=1)) is cpu
    with pytest.raises(DeviceError, match="LOCAL_RANK 2 has no GPU"):
        shard_device(cuda, Shard(2, 4, "torchrun", local_rank=2), device_count=2)
