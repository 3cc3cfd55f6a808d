"""torchrun detection, the resumable distributed sampler, and real DDP with 2 CPU processes on gloo."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from histostain.errors import ConfigError
from histostain.runtime.checkpoint import load_histostain_checkpoint
from histostain.runtime.device import DeviceManager
from histostain.runtime.distributed import DistContext, DistEnv, ResumableSampler, detect, init_distributed, unwrap
from histostain.runtime.training import LoopConfig, RunDirectory, Trainer

# ------------------------------------------------------------------------------------------ detection


def test_detect_reads_the_torchrun_environment() -> None:
    assert detect({}) == DistEnv(0, 1, 0)
    env = detect({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"})
    assert (env.rank, env.world_size, env.local_rank, env.is_distributed, env.is_main) == (3, 4, 1, True, False)
    assert detect({"RANK": "0", "WORLD_SIZE": "1"}).is_distributed is False
    assert detect({"RANK": "2", "WORLD_SIZE": "3"}).local_rank == 2  # LOCAL_RANK defaults to RANK
    for bad in ({"RANK": "4", "WORLD_SIZE": "4"}, {"RANK": "x", "WORLD_SIZE": "2"}, {"WORLD_SIZE": "0"}):
        with pytest.raises(ConfigError):
            detect(bad)


def test_single_process_context_is_a_no_op() -> None:
    manager = DeviceManager.create("cpu", "fp32")
    context = init_distributed(manager, DistEnv())
    model = nn.Linear(2, 2)
    assert context.wrap(model) is model and unwrap(model) is model
    assert context.any_flag(True) is True and context.any_flag(False) is False
    assert context.mean({"a": 2.0}) == {"a": 2.0}
    assert context.gather_object({"x": 1}) == [{"x": 1}]
    assert context.broadcast_object(5) == 5
    context.barrier()
    context.cleanup()


# ------------------------------------------------------------------------------------------ sampler


class _Sized(Dataset):
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> int:
        return index


@pytest.mark.parametrize(("n", "world"), [(10, 1), (10, 2), (7, 3), (5, 4)])
def test_sampler_splits_every_epoch_across_ranks(n: int, world: int) -> None:
    per_rank = -(-n // world)
    samplers = [ResumableSampler(_Sized(n), world, rank, seed=4) for rank in range(world)]
    for epoch in (0, 1):
        shards = []
        for sampler in samplers:
            sampler.set_epoch(epoch)
            shards.append(list(sampler))
        assert all(len(shard) == per_rank for shard in shards)
        joined = [index for shard in shards for index in shard]
        assert set(joined) == set(range(n))  # everything, padded by repeating the head of the order
        assert len(joined) - len(set(joined)) == per_rank * world - n
    again = ResumableSampler(_Sized(n), world, 0, seed=4)
    again.set_epoch(1)
    assert list(again) == shards[0]  # a function of (seed, epoch) only


def test_sampler_skip_applies_to_the_next_iteration_only() -> None:
    sampler = ResumableSampler(_Sized(9), seed=1)
    sampler.set_epoch(2)
    full = list(sampler)
    sampler.skip(4)
    assert len(sampler) == 5
    assert list(sampler) == full[4:]
    assert list(sampler) == full
    unshuffled = ResumableSampler(_Sized(4), shuffle=False)
    assert list(unshuffled) == [0, 1, 2, 3]


# ------------------------------------------------------------------------------------------ real DDP


class _Data(Dataset):
    def __init__(self) -> None:
        generator = torch.Generator().manual_seed(2)
        self.x = torch.randn(6, 4, generator=generator)
        self.y = self.x @ torch.tensor([1.0, -2.0, 3.0, 0.5])

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[index], "y": self.y[index]}


class _Linear(Trainer):
    arch = "toy"

    def __init__(self, run: RunDirectory, loop: LoopConfig, manager: DeviceManager, dist: DistContext) -> None:
        super().__init__(run, loop, manager, dist)
        torch.manual_seed(dist.rank)  # different initial weights per rank: DDP must broadcast rank 0's
        self.models = {"net": nn.Linear(4, 1)}
        self.net = self.dist.wrap(self.models["net"])
        self.optimizers = {"opt": torch.optim.Adam(self.models["net"].parameters(), lr=0.05)}
        self.seen: list[list[float]] = []

    def train_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        self.seen += batch["x"].tolist()
        loss = F.mse_loss(self.net(batch["x"]).squeeze(-1), batch["y"])
        self.guard({"loss": loss})
        self.optimizers["opt"].zero_grad()
        loss.backward()
        self.optimizers["opt"].step()
        return {"loss": loss.detach()}

    def extra_state(self) -> dict[str, Any]:
        return {"rank": self.dist.rank}


def _loop(batch_size: int) -> LoopConfig:
    return LoopConfig(epochs=2, batch_size=batch_size, num_workers=0, log_every=1, sample_every=0, save_every=0, seed=5)


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    torch.set_num_threads(1)
    manager = DeviceManager.create("cpu", "fp32")
    with init_distributed(manager) as dist:
        assert dist.is_distributed and dist.backend == "gloo" and dist.rank == rank
        run = RunDirectory(out, "ddp")
        if dist.is_main:
            run.create()
        dist.barrier()
        trainer = _Linear(run, _loop(1), manager, dist)
        result = trainer.fit(_Data())
        torch.save(
            {"state": trainer.models["net"].state_dict(), "seen": trainer.seen, "step": result.step},
            Path(out) / f"rank{rank}.pt",
        )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_ddp_on_two_gloo_processes_synchronises_gradients(tmp_path: Path) -> None:
    mp.start_processes(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, start_method="fork")
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    # each rank saw its own half of the data in every epoch
    assert ranks[0]["step"] == ranks[1]["step"] == 6
    for epoch in (0, 1):
        seen0, seen1 = ({tuple(x) for x in r["seen"][3 * epoch : 3 * epoch + 3]} for r in ranks)
        assert not seen0 & seen1 and len(seen0 | seen1) == 6
    # identical weights on both ranks ...
    for key, value in ranks[0]["state"].items():
        assert torch.equal(value, ranks[1]["state"][key]), key
    # ... equal to one process training on the union batch (the mean of the two per-rank gradients)
    run = RunDirectory(tmp_path, "single")
    run.create()
    manager = DeviceManager.create("cpu", "fp32")
    single_dist = DistContext(DistEnv(), manager)
    single = _Linear(run, _loop(2), manager, single_dist)
    single.fit(_Data())
    for key, value in single.models["net"].state_dict().items():
        assert torch.allclose(value, ranks[0]["state"][key], atol=1e-6), key
    # rank 0 wrote the run folder; the checkpoint holds both ranks' extra state
    payload = load_histostain_checkpoint(tmp_path / "ddp" / "checkpoints" / "last.pt")
    assert payload["world_size"] == 2 and [s["extra"]["rank"] for s in payload["rank_states"]] == [0, 1]
    assert (tmp_path / "ddp" / "metrics.csv").is_file()
