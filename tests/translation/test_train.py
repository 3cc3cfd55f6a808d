"""CycleGAN training: reference defaults, LR rule, image pool, losses, overfitting, exact resume, NaN guard,
real DDP on two gloo processes, validation, config precedence, checkpoint contents."""

from __future__ import annotations

import copy
import os
import random
import socket
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from torch import nn
from torch.utils.data import Dataset

from histostain.errors import ConfigError
from histostain.io.images import read_image
from histostain.provenance import Provenance
from histostain.runtime.checkpoint import load_histostain_checkpoint
from histostain.runtime.device import DeviceManager
from histostain.runtime.distributed import DistContext, DistEnv, init_distributed
from histostain.runtime.training import RunDirectory, TrainingDiverged
from histostain.synth import generate_tile
from histostain.translation.cyclegan import build_generator
from histostain.translation.train import train_cyclegan
from histostain.translation.train_config import CycleGANConfig, check_resume_compatible, resolve_config
from histostain.translation.trainer import CycleGANTrainer, ImagePool, linear_decay

CPU = DeviceManager.create("cpu", "fp32")


@pytest.fixture
def prepared(prepared_bci: Path) -> Path:
    """The session's miniature prepared BCI (tests/conftest.py)."""
    return prepared_bci


class Tiles(Dataset):
    """4 synthetic H&E tiles (16 x 16) as A and a fixed colour mapping of them (RGB -> BRG) as B."""

    def __init__(self, nan_at: int | None = None) -> None:
        self.a = []
        for seed in range(4):
            he = torch.from_numpy(generate_tile(seed, 32).he).permute(2, 0, 1).float()
            self.a.append(F.avg_pool2d(he[None], 2)[0] / 127.5 - 1)
        self.b = [a[[2, 0, 1]].clone() for a in self.a]
        self.nan_at = nan_at

    def __len__(self) -> int:
        return len(self.a)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        a = self.a[index]
        if self.nan_at is not None and index == self.nan_at:
            a = torch.full_like(a, float("nan"))
        return {"A": a, "B": self.b[index]}


def tiny(**changes: Any) -> CycleGANConfig:
    options: dict[str, Any] = {
        "ngf": 8,
        "ndf": 8,
        "n_blocks": 1,
        "n_layers_d": 2,
        "crop": None,
        "epochs": 2,
        "epochs_decay": 1,
        "num_workers": 0,
        "log_every": 1,
        "sample_every": 0,
        "save_every": 0,
        "save_latest_steps": 0,
        "val_every": 0,
        "tensorboard": False,
        "pool_size": 4,
    }
    options.update(changes)
    return CycleGANConfig(**options)


def _run(tmp_path: Path, name: str) -> RunDirectory:
    run = RunDirectory(tmp_path / "runs", name)
    run.create()
    return run


# ------------------------------------------------------------------------------------------ config and rules


def test_defaults_are_the_reference_ones() -> None:
    config = CycleGANConfig()
    assert (config.ngf, config.ndf, config.n_blocks, config.n_layers_d, config.norm, config.dropout) == (
        64,
        64,
        9,
        3,
        "instance",
        False,
    )
    assert (config.gan_mode, config.lambda_a, config.lambda_b, config.lambda_identity) == ("lsgan", 10, 10, 0.5)
    assert (config.pool_size, config.lr, config.beta1, config.beta2) == (50, 2e-4, 0.5, 0.999)
    assert (config.epochs, config.epochs_decay, config.total_epochs, config.batch_size) == (100, 100, 200, 1)
    assert (config.init_gain, config.crop, config.augment, config.paired_sampling) == (0.02, 256, True, False)
    assert config.direction == "ihc2he" and config.domains == ("IHC", "HE")
    assert CycleGANConfig(direction="he2ihc").domains == ("HE", "IHC")


def test_linear_rule_matches_the_reference_formula() -> None:
    rule = linear_decay(100, 100)
    assert [rule(e) for e in (0, 50, 99)] == [1.0, 1.0, 1.0]
    assert rule(100) == pytest.approx(100 / 101) and rule(199) == pytest.approx(1 / 101)
    # through the optimiser, stepped once per epoch as the trainer does: the lr each epoch trains with
    param = nn.Parameter(torch.zeros(1))
    optimiser = torch.optim.Adam([param], lr=2e-4)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimiser, rule)
    rates = []
    for _ in range(200):
        rates.append(optimiser.param_groups[0]["lr"])
        optimiser.step()
        scheduler.step()
    assert rates[:100] == [2e-4] * 100
    assert rates[100] == pytest.approx(2e-4 * 100 / 101) and rates[199] == pytest.approx(2e-4 / 101)
    assert all(a > b for a, b in zip(rates[100:], rates[101:], strict=False))


def test_image_pool_fills_then_swaps_with_probability_one_half() -> None:
    pool = ImagePool(3, seed=0)
    first = torch.arange(2 * 2 * 4, dtype=torch.float32).reshape(2, 2, 2, 2)
    assert torch.equal(pool.query(first), first) and len(pool.images) == 2
    images = [torch.full((1, 2, 2, 2), float(i)) for i in range(100, 400)]
    returned_old = 0
    for image in images:
        out = pool.query(image)
        if not torch.equal(out, image):
            returned_old += 1
        assert len(pool.images) == 3
    # after the pool filled (one more insert), each query returns an old image with p = 0.5
    assert 120 < returned_old < 180
    state = pool.state_dict()
    clone = ImagePool(3, seed=99)
    clone.load_state_dict(state, torch.device("cpu"))
    probe = torch.full((4, 2, 2, 2), -1.0)
    assert torch.equal(pool.query(probe), clone.query(probe))
    assert ImagePool(0, seed=0).query(first) is not None and len(ImagePool(0, 0).images) == 0


def test_config_precedence_defaults_file_flags(tmp_path: Path) -> None:
    file = tmp_path / "cfg.toml"
    file.write_text('ngf = 16\nlr = 0.001\ndirection = "he2ihc"\n[run]\ncommand = ["ignored"]\n')
    config = resolve_config(config_file=file, overrides={"ngf": 8, "lr": None, "epochs": 3})
    assert (config.ngf, config.lr, config.direction, config.epochs) == (8, 0.001, "he2ihc", 3)
    assert config.ndf == 64  # untouched default
    base = {"ngf": 32, "crop": 128}
    assert resolve_config(overrides={}, base=base).crop == 128
    assert resolve_config(config_file=file, base=base).ngf == 16
    (tmp_path / "bad.toml").write_text("ngff = 3\n")
    with pytest.raises(ConfigError, match=r"ngff: unknown option \(from .*bad.toml\)"):
        resolve_config(config_file=tmp_path / "bad.toml")
    with pytest.raises(ConfigError, match=r"lr: .*greater than 0 \(from the command line\)"):
        resolve_config(overrides={"lr": -1.0})
    with pytest.raises(ConfigError, match="multiple of 4"):
        resolve_config(overrides={"crop": 30})
    with pytest.raises(ConfigError, match="cannot change ngf"):
        check_resume_compatible(CycleGANConfig(ngf=8), CycleGANConfig(ngf=16))
    check_resume_compatible(CycleGANConfig(ngf=8), CycleGANConfig(ngf=8, epochs=300, max_steps=5))


def test_lambda_cycle_sets_both_cycle_weights_and_flags_are_config_fields() -> None:
    flags = {"lambda_cycle": 3.0, "ngf": None, "fid_weights": Path("w.pth"), "direction": "HE2IHC"}
    overrides = CycleGANConfig.flag_overrides(flags)
    assert overrides == {"ngf": None, "fid_weights": "w.pth", "direction": "HE2IHC", "lambda_a": 3.0, "lambda_b": 3.0}
    config = resolve_config(overrides=overrides, base={"lambda_a": 7.0})
    assert (config.lambda_a, config.lambda_b, config.direction, config.ngf) == (3.0, 3.0, "he2ihc", 64)
    assert "lambda_a" not in CycleGANConfig.flag_overrides({"lambda_cycle": None})  # not given: nothing set


# ------------------------------------------------------------------------------------------ one step


def test_one_step_computes_the_reference_losses(tmp_path: Path) -> None:
    config = tiny(lambda_a=3.0, lambda_b=7.0, lambda_identity=0.5, pool_size=0)
    trainer = CycleGANTrainer(config, _run(tmp_path, "losses"), CPU)
    nets = {name: copy.deepcopy(model) for name, model in trainer.models.items()}
    data = Tiles()
    batch = {"A": data[0]["A"][None], "B": data[0]["B"][None]}
    a, b = batch["A"], batch["B"]
    with torch.no_grad():
        fake_b, fake_a = nets["G_A"](a), nets["G_B"](b)
        expected = {
            "G_A": ((nets["D_A"](fake_b) - 1) ** 2).mean(),
            "G_B": ((nets["D_B"](fake_a) - 1) ** 2).mean(),
            "cycle_A": (nets["G_B"](fake_b) - a).abs().mean() * 3.0,
            "cycle_B": (nets["G_A"](fake_a) - b).abs().mean() * 7.0,
            "idt_A": (nets["G_A"](b) - b).abs().mean() * 7.0 * 0.5,  # effective weight lambda_B * 0.5
            "idt_B": (nets["G_B"](a) - a).abs().mean() * 3.0 * 0.5,
        }
        expected["G"] = sum(expected.values())
        # the discriminators are updated after the generators, on the fakes the old generators made
        expected["D_A"] = 0.5 * (((nets["D_A"](b) - 1) ** 2).mean() + (nets["D_A"](fake_b) ** 2).mean())
        expected["D_B"] = 0.5 * (((nets["D_B"](a) - 1) ** 2).mean() + (nets["D_B"](fake_a) ** 2).mean())
    losses = trainer.train_step(batch)
    for name, value in expected.items():
        assert float(losses[name]) == pytest.approx(float(value), rel=1e-5), name
    for name, model in trainer.models.items():  # every network was updated by exactly one optimiser
        changed = any(not torch.equal(p, q) for p, q in zip(model.parameters(), nets[name].parameters(), strict=True))
        assert changed, name
    grid = trainer.sample_image()
    assert grid.shape == (32, 48, 3) and grid.dtype == np.uint8
    assert np.array_equal(grid[:16, :16], np.round((a[0].permute(1, 2, 0).numpy() + 1) * 127.5).astype(np.uint8))


@pytest.mark.slow
def test_tiny_model_overfits_a_fixed_colour_mapping(tmp_path: Path) -> None:
    config = tiny(lr=2e-3, batch_size=4, epochs=80, epochs_decay=0, log_every=0)
    trainer = CycleGANTrainer(config, _run(tmp_path, "overfit"), CPU)
    cycle: list[float] = []
    step = trainer.train_step

    def recording(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        losses = step(batch)
        cycle.append(float(losses["cycle_A"] + losses["cycle_B"]))
        return losses

    trainer.train_step = recording  # type: ignore[method-assign]
    result = trainer.fit(Tiles())
    assert result.status == "completed" and result.step == 80
    start, end = float(np.mean(cycle[:2])), float(np.mean(cycle[-3:]))
    assert start / end > 5, (start, end)


# ------------------------------------------------------------------------------------------ resume


def _snapshot(trainer: CycleGANTrainer) -> dict[str, Any]:
    return {
        "models": {n: copy.deepcopy(m.state_dict()) for n, m in trainer.models.items()},
        "optimizers": {n: copy.deepcopy(o.state_dict()) for n, o in trainer.optimizers.items()},
        "schedulers": {n: s.state_dict() for n, s in trainer.schedulers.items()},
        "pools": {n: (list(p.images), p.rng.getstate()) for n, p in trainer.pools.items()},
        "state": (trainer.state.epoch, trainer.state.step, trainer.state.batch_in_epoch),
    }


def _assert_identical(x: Any, y: Any, where: str = "") -> None:
    if isinstance(x, torch.Tensor):
        assert isinstance(y, torch.Tensor) and x.dtype == y.dtype and torch.equal(x, y), where
    elif isinstance(x, dict):
        assert set(x) == set(y), where
        for key in x:
            _assert_identical(x[key], y[key], f"{where}.{key}")
    elif isinstance(x, list | tuple):
        assert len(x) == len(y), where
        for index, (u, v) in enumerate(zip(x, y, strict=True)):
            _assert_identical(u, v, f"{where}[{index}]")
    else:
        assert x == y, where


@pytest.fixture
def deterministic():
    before = torch.are_deterministic_algorithms_enabled()
    yield
    torch.use_deterministic_algorithms(before)


def test_resume_equals_straight_run_tensor_for_tensor(tmp_path: Path, prepared: Path, deterministic: None) -> None:
    """2 steps + save + a new trainer resuming + 3 steps == 5 steps straight: weights, Adam, pools, RNGs."""
    options = {"crop": 32, "pool_size": 2, "deterministic": True, "ngf": 4, "ndf": 4, "sample_every": 2}
    straight = CycleGANTrainer(tiny(max_steps=5, **options), _run(tmp_path, "straight"), CPU)
    assert straight.fit(_train_set(prepared)).step == 5
    expected = _snapshot(straight)
    expected_rng = torch.get_rng_state()

    first = CycleGANTrainer(tiny(max_steps=2, **options), _run(tmp_path, "resumed"), CPU)
    first.fit(_train_set(prepared))
    torch.manual_seed(999)  # a new trainer in a scrambled process: everything must come from the checkpoint
    random.seed(999)
    np.random.seed(999)
    second = CycleGANTrainer(tiny(max_steps=5, **options), first.run, CPU)
    assert second.fit(_train_set(prepared), resume=True).step == 5
    got = _snapshot(second)
    assert len(got["pools"]["fake_A"][0]) == 2  # the pools are full and have been swapping
    assert expected["state"] == got["state"] == (1, 5, 2)  # 3 patches per epoch: crossed an epoch end
    _assert_identical(expected, got)
    assert torch.equal(expected_rng, torch.get_rng_state())
    samples = sorted(p.name for p in first.run.samples.iterdir())
    assert samples == sorted(p.name for p in straight.run.samples.iterdir()) == ["step_0000002.png", "step_0000004.png"]
    for name in samples:
        assert np.array_equal(read_image(first.run.samples / name), read_image(straight.run.samples / name))


def _train_set(prepared: Path) -> Any:
    from histostain.datasets.torch_data import TranslationPairs

    return TranslationPairs(prepared, "train", paired=False, crop=32, augment=True, seed=0)


# ------------------------------------------------------------------------------------------ guard


def test_nan_input_stops_before_any_update_and_keeps_last_good(tmp_path: Path) -> None:
    trainer = CycleGANTrainer(tiny(save_latest_steps=1), _run(tmp_path, "nan"), CPU)
    order = trainer.dist.sampler(Tiles(), seed=0)
    order.set_epoch(0)
    poisoned = Tiles(nan_at=order.indices()[2])  # the third batch of the first epoch
    with pytest.raises(TrainingDiverged, match=r"step 3 .*loss .*G.*NaN.*step 2"):
        trainer.fit(poisoned)
    payload = load_histostain_checkpoint(trainer.run.last, arch="cyclegan")
    assert payload["step"] == 2
    for name, model in trainer.models.items():
        _assert_identical(payload["models"][name], model.state_dict(), name)  # no update after the save


# ------------------------------------------------------------------------------------------ DDP


def _ddp_worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    torch.set_num_threads(1)
    with init_distributed(DeviceManager.create("cpu", "fp32")) as dist:
        run = RunDirectory(out, "ddp")
        if dist.is_main:
            run.create()
        dist.barrier()
        trainer = CycleGANTrainer(tiny(pool_size=0, epochs=1, epochs_decay=1), run, dist.manager, dist)
        assert type(trainer.nets["G_A"]).__name__ == "DistributedDataParallel"
        trainer.fit(Tiles())
        torch.save({n: m.state_dict() for n, m in trainer.models.items()}, Path(out) / f"rank{rank}.pt")


@pytest.mark.slow
def test_ddp_two_gloo_processes_match_one_process_with_the_union_batch(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.start_processes(_ddp_worker, args=(2, port, str(tmp_path)), nprocs=2, start_method="fork")
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    _assert_identical(ranks[0], ranks[1])  # gradients were averaged: the ranks never drift apart
    single = CycleGANTrainer(
        tiny(pool_size=0, epochs=1, epochs_decay=1, batch_size=2),
        _run(tmp_path, "single"),
        CPU,
        DistContext(DistEnv(), CPU),
    )
    single.fit(Tiles())
    # compare what the networks compute: biases feeding an instance norm get ~0 gradients that Adam turns into
    # noise-driven steps, but they cannot change any output
    probe = torch.stack([Tiles()[i]["A"] for i in range(2)])
    for name, model in single.models.items():
        twin = copy.deepcopy(model)
        twin.load_state_dict(ranks[0][name])
        with torch.no_grad():
            assert torch.allclose(model(probe), twin(probe), atol=1e-4), name
    payload = load_histostain_checkpoint(tmp_path / "ddp" / "checkpoints" / "last.pt")
    assert payload["world_size"] == 2 and len(payload["rank_states"]) == 2 and payload["step"] == 4


# ------------------------------------------------------------------------------------------ service level


def test_validation_is_bci_psnr_ssim_of_g_a_on_val(tmp_path: Path, prepared: Path) -> None:
    from histostain.datasets.torch_data import TranslationPairs

    val = TranslationPairs(prepared, "val", paired=True, augment=False)
    trainer = CycleGANTrainer(tiny(val_every=1), _run(tmp_path, "val"), CPU, val_dataset=val)
    trainer.models["G_A"] = nn.Identity()  # "translation" = the IHC input itself, so the expectation is closed
    metrics = trainer.validate()
    ihc = [read_image(prepared / "val" / "IHC" / f"{i}.png") for i in val.ids]
    he = [read_image(prepared / "val" / "HE" / f"{i}.png") for i in val.ids]
    assert metrics["val_psnr"] == pytest.approx(
        np.mean([peak_signal_noise_ratio(h, i, data_range=255) for h, i in zip(he, ihc, strict=True)])
    )
    assert metrics["val_ssim"] == pytest.approx(
        np.mean([structural_similarity(h, i, channel_axis=-1, data_range=255) for h, i in zip(he, ihc, strict=True)])
    )


def test_train_cyclegan_writes_a_translate_ready_checkpoint_and_best(tmp_path: Path, prepared: Path) -> None:
    config = tiny(crop=32, ngf=4, ndf=4, epochs=1, epochs_decay=0, val_every=1, direction="he2ihc")
    record = Provenance.capture(command=["histostain", "train", "cyclegan", "x"])
    resolved, result = train_cyclegan(prepared, config, name="svc", runs_dir=tmp_path, manager=CPU, provenance=record)
    assert resolved is config and result.status == "completed" and result.best_checkpoint is not None
    assert RunDirectory(tmp_path, "svc").commands() == [["histostain", "train", "cyclegan", "x"]]
    assert set(result.validation) == {"val_psnr", "val_ssim"} and result.best == result.validation["val_ssim"]
    payload = load_histostain_checkpoint(result.last_checkpoint, arch="cyclegan")
    assert payload["direction"] == "he2ihc" and payload["domains"] == {"A": "HE", "B": "IHC"}
    assert payload["generators"]["he2ihc"]["model"] == "G_A" and payload["generators"]["ihc2he"]["model"] == "G_B"
    generator = build_generator(payload["generators"]["ihc2he"]["config"])
    generator.load_state_dict(payload["models"]["G_B"])  # strict
    assert set(payload["state_dict"]) == set(payload["models"]["G_A"])
    # resuming with another architecture is refused before anything is loaded
    with pytest.raises(ConfigError, match="cannot change ngf"):
        train_cyclegan(prepared, name="svc", runs_dir=tmp_path, manager=CPU, resume=True, overrides={"ngf": 8})
    with pytest.raises(ConfigError, match="already exists"):
        train_cyclegan(prepared, config, name="svc", runs_dir=tmp_path, manager=CPU)


# config.toml of a run made before the loop options were shared (written by histostain 0.1.0; the prepared
# path is replaced by the test's, the long command array wrapped): no best_metric / best_mode keys, and
# save_latest_steps then defaulted to 5000.
PRE_LOOP_OPTIONS_CONFIG = """# histostain training run: the resolved configuration.
# Reuse it with --config (the [run] table is ignored when loading).

direction = "ihc2he"
paired_sampling = false
crop = 32
augment = true
ngf = 4
ndf = 4
n_blocks = 1
n_layers_d = 3
norm = "instance"
dropout = false
init_gain = 0.02
gan_mode = "lsgan"
lambda_a = 10.0
lambda_b = 10.0
lambda_identity = 0.5
pool_size = 50
lr = 0.0002
beta1 = 0.5
beta2 = 0.999
epochs = 100
epochs_decay = 100
batch_size = 1
num_workers = 0
seed = 0
deterministic = false
log_every = 100
sample_every = 400
save_every = 5
save_latest_steps = 5000
val_every = 5
val_max_images = 200
val_fid = false
max_steps = 1
tensorboard = true

[run]
name = "cg"
histostain_version = "0.1.0"
created = "2026-11-26T12:45:30+00:00"
updated = "2026-11-26T12:45:30+00:00"
command = [
    "histostain", "--device", "cpu", "train", "cyclegan", "bci", "--name", "cg", "--runs-dir", "runs",
    "--crop", "32", "--ngf", "4", "--ndf", "4", "--n-blocks", "1", "--max-steps", "1", "--num-workers", "0",
]
prepared = "/tmp/oldcfg/bci"
config_file = ""
world_size = 1
device = "cpu"
precision = "fp32"

[run.domains]
A = "IHC"
B = "HE"
"""


def test_a_run_recorded_before_the_shared_loop_options_resumes(tmp_path: Path, prepared: Path) -> None:
    text = PRE_LOOP_OPTIONS_CONFIG.replace("/tmp/oldcfg/bci", str(prepared))
    stored = tomllib.loads(text)
    first_command = stored.pop("run")["command"]
    # a checkpoint of the same networks (checkpoints did not change), then the config.toml as 0.1.0 left it
    train_cyclegan(prepared, CycleGANConfig.model_validate(stored), name="old", runs_dir=tmp_path, manager=CPU)
    (tmp_path / "old" / "config.toml").write_text(text)
    command = ["histostain", "train", "cyclegan", str(prepared), "--name", "old", "--resume", "--max-steps", "2"]
    resolved, result = train_cyclegan(
        prepared,
        name="old",
        runs_dir=tmp_path,
        manager=CPU,
        resume=True,
        overrides={"max_steps": 2},
        provenance=Provenance.capture(command=command),
    )
    assert (result.status, result.step) == ("max_steps", 2)
    assert resolved.save_latest_steps == 5000  # the run's own value, not today's default
    assert (resolved.best_metric, resolved.best_mode) == ("val_ssim", "max")  # keys it predates: the defaults
    run = RunDirectory(tmp_path, "old")
    assert run.commands() == [first_command, command]
    assert run.read_run_info()["created"] == "2026-11-26T12:45:30+00:00"
