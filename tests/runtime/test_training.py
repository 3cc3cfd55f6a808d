"""The generic training runtime: run folder and its history, loop options, metrics, exact resume, NaN guard,
Ctrl-C/SIGTERM, RNG state, TOML writer.

A toy trainer (a linear model, input noise from the global torch RNG, an extra python-RNG state) exercises
every mechanism in milliseconds; the CycleGAN trainer is tested in tests/translation/test_train.py.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import random
import signal
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from torch import nn
from torch.utils.data import Dataset

from histostain.errors import ConfigError, WeightsError
from histostain.provenance import Provenance
from histostain.runtime.checkpoint import load_histostain_checkpoint
from histostain.runtime.config_toml import dumps, write_toml
from histostain.runtime.device import DeviceManager
from histostain.runtime.training import (
    SAVE_LATEST_STEPS,
    LoopConfig,
    LoopOptions,
    MetricsLog,
    RunDirectory,
    StopSignal,
    Trainer,
    TrainingDiverged,
    capture_rng_state,
    restore_rng_state,
)


class ToyData(Dataset):
    """y = x . w with fixed x; records the epochs it was told about."""

    def __init__(self, n: int = 5, dim: int = 4) -> None:
        generator = torch.Generator().manual_seed(1)
        self.x = torch.randn(n, dim, generator=generator)
        self.y = self.x @ torch.arange(1.0, dim + 1)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[index], "y": self.y[index]}


class ToyTrainer(Trainer):
    arch = "toy"

    def __init__(self, run: RunDirectory, loop: LoopConfig, nan_at: int | None = None, noise: float = 0.1) -> None:
        super().__init__(run, loop, DeviceManager.create("cpu", "fp32"), config={"noise": noise})
        torch.manual_seed(0)
        self.models = {"net": nn.Linear(4, 1)}
        self.net = self.dist.wrap(self.models["net"])
        self.optimizers = {"opt": torch.optim.Adam(self.models["net"].parameters(), lr=0.05)}
        self.schedulers = {"sched": torch.optim.lr_scheduler.StepLR(self.optimizers["opt"], 1, gamma=0.5)}
        self.nan_at = nan_at
        self.noise = noise
        self.draws = random.Random(7)  # per-rank extra state that must survive a resume
        self.history: list[int] = []
        self.seen: list[torch.Tensor] = []

    def train_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        self.seen.append(batch["x"].clone())
        x = batch["x"] + self.noise * torch.randn_like(batch["x"])  # global torch RNG
        loss = F.mse_loss(self.net(x).squeeze(-1), batch["y"])
        if self.nan_at == self.state.step + 1:
            loss = loss * float("nan")
        self.guard({"loss": loss})
        self.history.append(self.draws.randrange(1000))
        self.optimizers["opt"].zero_grad()
        loss.backward()
        self.optimizers["opt"].step()
        return {"loss": loss.detach(), "draw": torch.tensor(float(self.history[-1]))}

    def extra_state(self) -> dict[str, Any]:
        return {"draws": self.draws.getstate(), "history": list(self.history)}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        version, internal, gauss = state["draws"]
        self.draws.setstate((version, tuple(internal), gauss))
        self.history = list(state["history"])

    def sample_image(self) -> np.ndarray:
        return np.full((8, 8, 3), self.state.step, dtype=np.uint8)


def _loop(**changes: Any) -> LoopConfig:
    options: dict[str, Any] = {
        "epochs": 3,
        "batch_size": 2,
        "num_workers": 0,
        "log_every": 1,
        "sample_every": 2,
        "save_every": 1,
        "save_latest_steps": 0,
        "val_every": 0,
        "tensorboard": False,
        "seed": 3,
    }
    options.update(changes)
    return LoopConfig(**options)


def _trainer(tmp_path: Path, name: str, **changes: Any) -> ToyTrainer:
    nan_at = changes.pop("nan_at", None)
    run = RunDirectory(tmp_path / "runs", name)
    run.create()
    return ToyTrainer(run, _loop(**changes), nan_at=nan_at)


def _same_state(a: ToyTrainer, b: ToyTrainer) -> None:
    for key, value in a.models["net"].state_dict().items():
        assert torch.equal(value, b.models["net"].state_dict()[key]), key
    state_a, state_b = a.optimizers["opt"].state_dict(), b.optimizers["opt"].state_dict()
    for index, entry in state_a["state"].items():
        for key, value in entry.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(state_b["state"][index][key])), key
    assert a.schedulers["sched"].state_dict() == b.schedulers["sched"].state_dict()
    assert a.history == b.history
    assert a.draws.getstate() == b.draws.getstate()


def _scramble_globals() -> None:
    torch.manual_seed(12345)
    random.seed(12345)
    np.random.seed(12345)


# ------------------------------------------------------------------------------------------ the loop itself


def test_loop_runs_epochs_writes_metrics_samples_and_checkpoints(tmp_path: Path) -> None:
    trainer = _trainer(tmp_path, "a")
    data = ToyData(5)
    result = trainer.fit(data)
    # 5 samples, batch 2 -> 3 batches per epoch, 3 epochs
    assert (result.status, result.step, result.epoch) == ("completed", 9, 3)
    assert data.epoch == 2  # the dataset was told every epoch
    run = trainer.run
    assert sorted(p.name for p in run.checkpoints.iterdir()) == [
        "epoch_0001.pt",
        "epoch_0002.pt",
        "epoch_0003.pt",
        "last.pt",
    ]
    with run.metrics_path.open() as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["step", "epoch", "loss", "draw", "lr", "images_per_s"]
    assert [int(r["step"]) for r in rows] == list(range(1, 10))
    assert [int(r["epoch"]) for r in rows] == [1, 1, 1, 2, 2, 2, 3, 3, 3]
    # StepLR(gamma 0.5) stepped at each epoch end: 0.05, 0.025, 0.0125
    assert [float(r["lr"]) for r in rows[::3]] == pytest.approx([0.05, 0.025, 0.0125])
    assert sorted(p.name for p in run.samples.iterdir()) == [f"step_{s:07d}.png" for s in (2, 4, 6, 8)]
    payload = load_histostain_checkpoint(run.last, arch="toy")
    assert (payload["epoch"], payload["step"], payload["batch_in_epoch"]) == (3, 9, 0)
    assert payload["format"] == "histostain" and set(payload["models"]) == {"net"}
    assert torch.equal(payload["state_dict"]["weight"], trainer.models["net"].weight.detach())
    assert payload["rank_states"][0]["extra"]["history"] == trainer.history


def test_every_sample_is_seen_once_per_epoch(tmp_path: Path) -> None:
    trainer = _trainer(tmp_path, "order", epochs=2, batch_size=1)
    data = ToyData(5)
    trainer.fit(data)
    seen = [tuple(x[0].tolist()) for x in trainer.seen]
    everything = sorted(tuple(x.tolist()) for x in data.x)
    assert sorted(seen[:5]) == everything and sorted(seen[5:]) == everything
    assert seen[:5] != seen[5:]  # a new order each epoch


def test_max_steps_stops_mid_epoch_and_saves(tmp_path: Path) -> None:
    trainer = _trainer(tmp_path, "m", max_steps=4)
    result = trainer.fit(ToyData(5))
    assert (result.status, result.step, result.epoch) == ("max_steps", 4, 1)
    payload = load_histostain_checkpoint(trainer.run.last)
    assert (payload["step"], payload["epoch"], payload["batch_in_epoch"]) == (4, 1, 1)


@pytest.mark.parametrize("split", [1, 2, 3, 4, 7])
def test_resume_equals_straight_run(tmp_path: Path, split: int) -> None:
    """k steps + save + a new trainer resuming (global RNGs scrambled) == 8 steps straight, tensor for tensor."""
    straight = _trainer(tmp_path, "straight", max_steps=8)
    straight.fit(ToyData(5))
    straight_rng = torch.get_rng_state()

    first = _trainer(tmp_path, "resumed", max_steps=split)
    first.fit(ToyData(5))
    _scramble_globals()
    second = ToyTrainer(first.run, _loop(max_steps=8))
    result = second.fit(ToyData(5), resume=True)
    assert result.step == 8
    _same_state(straight, second)
    assert torch.equal(straight_rng, torch.get_rng_state())
    assert [x.tolist() for x in straight.seen] == [x.tolist() for x in first.seen + second.seen]
    # metrics.csv of the resumed run is the straight run's, row for row (except the timing column)
    rows = {}
    for name in ("straight", "resumed"):
        with (tmp_path / "runs" / name / "metrics.csv").open() as handle:
            rows[name] = [{k: v for k, v in row.items() if k != "images_per_s"} for row in csv.DictReader(handle)]
    assert rows["straight"] == rows["resumed"]


def test_resume_truncates_metrics_written_after_the_checkpoint(tmp_path: Path) -> None:
    trainer = _trainer(tmp_path, "t", max_steps=3)
    trainer.fit(ToyData(5))
    MetricsLog(trainer.run.metrics_path).write({"step": 99, "epoch": 9, "loss": 1.0})  # a row the crash left
    with trainer.run.metrics_path.open("a") as handle:
        handle.write("1,1")  # and a line cut short mid-write
    resumed = ToyTrainer(trainer.run, _loop(max_steps=4))
    resumed.fit(ToyData(5), resume=True)
    with trainer.run.metrics_path.open() as handle:
        assert [int(r["step"]) for r in csv.DictReader(handle)] == [1, 2, 3, 4]


def test_resume_of_a_different_trainer_is_a_weights_error(tmp_path: Path) -> None:
    trainer = _trainer(tmp_path, "w", max_steps=1)
    trainer.fit(ToyData(5))
    other = ToyTrainer(trainer.run, _loop())
    other.models["extra"] = nn.Linear(2, 2)
    with pytest.raises(WeightsError, match="models"):
        other.restore()


# ------------------------------------------------------------------------------------------ NaN guard


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_last_good_checkpoint(tmp_path: Path) -> None:
    trainer = _trainer(tmp_path, "nan", nan_at=4, save_latest_steps=1)
    snapshots: dict[int, torch.Tensor] = {}
    trainer.on_step_end = lambda t: snapshots.__setitem__(t.state.step, t.models["net"].weight.detach().clone())
    with pytest.raises(TrainingDiverged) as info:
        trainer.fit(ToyData(5))
    message = info.value.one_line()
    assert "step 4" in message and "loss" in message and "NaN" in message and "step 3" in message
    assert "last.pt" in message and "hint" in message
    payload = load_histostain_checkpoint(trainer.run.last)
    assert payload["step"] == 3
    assert torch.equal(payload["models"]["net"]["weight"], snapshots[3])
    # the guard ran before backward: the weights in memory were not touched by the NaN step
    assert torch.equal(trainer.models["net"].weight.detach(), snapshots[3])


def test_non_finite_parameters_are_never_saved(tmp_path: Path) -> None:
    trainer = _trainer(tmp_path, "p")
    trainer.fit(ToyData(5))  # writes a good last.pt
    good = trainer.run.last.read_bytes()
    with torch.no_grad():
        trainer.models["net"].bias.fill_(math.inf)
    with pytest.raises(TrainingDiverged, match="parameters of net"):
        trainer.save()
    assert trainer.run.last.read_bytes() == good


# ------------------------------------------------------------------------------------------ Ctrl-C / SIGTERM


def _interrupt_at(step: int):
    def hook(trainer: Trainer) -> None:
        if trainer.state.step == step:
            raise KeyboardInterrupt

    return hook


def test_keyboard_interrupt_saves_and_resume_continues_from_that_step(tmp_path: Path) -> None:
    straight = _trainer(tmp_path, "straight", max_steps=7)
    straight.fit(ToyData(5))

    trainer = _trainer(tmp_path, "ctrlc", max_steps=7)
    trainer.on_step_end = _interrupt_at(5)
    result = trainer.fit(ToyData(5))
    assert (result.status, result.step) == ("interrupted", 5)
    payload = load_histostain_checkpoint(trainer.run.last)
    assert (payload["step"], payload["epoch"], payload["batch_in_epoch"]) == (5, 1, 2)

    _scramble_globals()
    resumed = ToyTrainer(trainer.run, _loop(max_steps=7))
    assert resumed.fit(ToyData(5), resume=True).step == 7
    _same_state(straight, resumed)


def test_sigterm_finishes_the_step_saves_and_restores_handlers(tmp_path: Path) -> None:
    trainer = _trainer(tmp_path, "term")

    def hook(t: Trainer) -> None:
        if t.state.step == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    before = signal.getsignal(signal.SIGTERM)
    trainer.on_step_end = hook
    result = trainer.fit(ToyData(5))
    assert (result.status, result.step) == ("interrupted", 2)
    assert load_histostain_checkpoint(trainer.run.last)["step"] == 2
    assert signal.getsignal(signal.SIGTERM) is before


def test_second_ctrl_c_aborts_immediately() -> None:
    with StopSignal() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.requested and stop.signal_name == "SIGINT"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)


# ------------------------------------------------------------------------------------------ run folder


def test_run_directory_refuses_to_overwrite_or_to_resume_nothing(tmp_path: Path) -> None:
    run = RunDirectory(tmp_path, "r")
    with pytest.raises(ConfigError, match="cannot resume"):
        run.plan_start(resume=True)
    run.plan_start(resume=False)
    run.create()
    run.write_config(
        {"lr": 0.1, "crop": None, "nested": {"a": [1, 2]}}, Provenance.capture(command=["histostain", "train"])
    )
    (run.last).write_bytes(b"a checkpoint")
    with pytest.raises(ConfigError, match="already exists"):
        run.plan_start(resume=False)
    assert run.read_config() == {"lr": 0.1, "nested": {"a": [1, 2]}}
    info = run.read_run_info()
    assert info["command"] == ["histostain", "train"] and info["name"] == "r" and "histostain_version" in info
    with pytest.raises(ConfigError, match="invalid run name"):
        RunDirectory(tmp_path, "a/b")


def _record(command: list[str], day: int, **options: Any) -> Provenance:
    return Provenance(tuple(command), f"0.{day}", f"2026-01-0{day}T00:00:00+00:00", options)


def test_each_resume_appends_its_command_and_the_first_start_stays_the_origin(tmp_path: Path) -> None:
    run = RunDirectory(tmp_path, "h")
    run.create()
    first = ["histostain", "train", "cyclegan", "data", "--name", "h"]
    commands = [first, [*first, "--resume"], [*first, "--resume", "--max-steps", "9"]]
    for day, command in enumerate(commands, start=1):
        run.write_config({"lr": 0.1 * day}, _record(command, day, step=day), info={"world_size": day})
    assert run.commands() == commands
    info = run.read_run_info()
    # the origin: the first start's record, whatever came after
    assert (info["command"], info["histostain_version"], info["created"]) == (first, "0.1", "2026-01-01T00:00:00+00:00")
    assert info["options"] == {"step": 1}
    # the latest start: when, and what it ran on; each resume's own record, in order
    assert (info["updated"], info["world_size"]) == ("2026-01-03T00:00:00+00:00", 3)
    assert [(e["histostain_version"], e["created"], e["options"]) for e in info["resumed"]] == [
        ("0.2", "2026-01-02T00:00:00+00:00", {"step": 2}),
        ("0.3", "2026-01-03T00:00:00+00:00", {"step": 3}),
    ]
    assert "[[run.resumed]]" in run.config_path.read_text()
    assert run.read_config() == {"lr": pytest.approx(0.3)}  # the config is the latest start's, history aside


# The [run] table histostain wrote before runs kept a history (command overwritten by every start).
LEGACY_RUN_TABLE = """lr = 0.0002

[run]
name = "cg"
histostain_version = "0.1.0"
created = "2026-11-26T12:45:30+00:00"
updated = "2026-11-26T12:45:30+00:00"
command = ["histostain", "--device", "cpu", "train", "cyclegan", "bci", "--name", "cg", "--max-steps", "1"]
prepared = "/tmp/oldcfg/bci"
config_file = ""
world_size = 1
device = "cpu"
precision = "fp32"

[run.domains]
A = "IHC"
B = "HE"
"""


def test_a_resume_of_a_run_recorded_without_history_keeps_its_first_command(tmp_path: Path) -> None:
    run = RunDirectory(tmp_path, "cg")
    run.create()
    run.config_path.write_text(LEGACY_RUN_TABLE)
    resumed = ["histostain", "train", "cyclegan", "bci", "--name", "cg", "--resume"]
    run.write_config(run.read_config(), _record(resumed, 5), info={"domains": {"A": "IHC", "B": "HE"}})
    info = run.read_run_info()
    assert run.commands()[1:] == [resumed] and run.commands()[0][-2:] == ["--max-steps", "1"]
    assert (info["created"], info["histostain_version"]) == ("2026-11-26T12:45:30+00:00", "0.1.0")
    assert "options" not in info and info["domains"] == {"A": "IHC", "B": "HE"}


def test_metrics_log_adds_columns_as_they_appear(tmp_path: Path) -> None:
    log = MetricsLog(tmp_path / "m.csv")
    log.write({"step": 1, "loss": 0.5})
    log.write({"step": 2, "loss": 0.25})
    log.write({"step": 2, "val_ssim": 0.75})
    with (tmp_path / "m.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert rows == [
        {"step": "1", "loss": "0.5", "val_ssim": ""},
        {"step": "2", "loss": "0.25", "val_ssim": ""},
        {"step": "2", "loss": "", "val_ssim": "0.75"},
    ]
    assert MetricsLog(tmp_path / "m.csv").columns == ["step", "loss", "val_ssim"]


def test_rng_state_round_trip_through_a_weights_only_checkpoint(tmp_path: Path) -> None:
    from histostain.runtime.checkpoint import load_checkpoint, save_checkpoint

    np.random.normal()  # leaves a cached gaussian in numpy's legacy state
    state = capture_rng_state()
    expected = (random.random(), float(np.random.normal()), float(torch.rand(1)))
    save_checkpoint(tmp_path / "rng.pt", {"rng": state})
    _scramble_globals()
    restore_rng_state(load_checkpoint(tmp_path / "rng.pt")["rng"])
    assert (random.random(), float(np.random.normal()), float(torch.rand(1))) == expected


def test_cuda_rng_states_of_another_gpu_count_are_kept_out_and_both_counts_reported(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from histostain.runtime.training import rng

    state = capture_rng_state()
    state["cuda"] = [torch.zeros(16, dtype=torch.uint8), torch.ones(16, dtype=torch.uint8)]  # written on 2 GPUs
    restored: list[Any] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", restored.append)
    messages: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())  # type: ignore[method-assign]
    rng.log.addHandler(handler)
    try:
        restore_rng_state(state)
        assert restored == [] and messages == ["checkpoint holds 2 CUDA RNG states for 3 GPUs; not restored"]
        monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
        restore_rng_state(state)
    finally:
        rng.log.removeHandler(handler)
    assert len(restored) == 1 and len(messages) == 1


# ------------------------------------------------------------------------------------------ loop options


def test_loop_options_are_declared_once_with_each_trainers_published_defaults() -> None:
    from histostain.segmentation.config import HoVerNetConfig
    from histostain.translation.train_config import CycleGANConfig

    for config in (CycleGANConfig, HoVerNetConfig, LoopConfig):
        for name, declared in LoopOptions.model_fields.items():
            field = config.model_fields[name]
            assert (field.annotation, field.description, field.metadata) == (
                declared.annotation,
                declared.description,
                declared.metadata,
            ), (config.__name__, name)
    cyclegan, hovernet = CycleGANConfig(), HoVerNetConfig()
    # the reference CycleGAN's print_freq / display_freq; validation every 5 epochs; best.pt by SSIM
    assert (cyclegan.log_every, cyclegan.sample_every, cyclegan.val_every, cyclegan.seed) == (100, 400, 5, 0)
    assert (cyclegan.best_metric, cyclegan.best_mode) == ("val_ssim", "max")
    # hover_net's seed 10 and validation every epoch; best.pt by NP Dice
    assert (hovernet.log_every, hovernet.sample_every, hovernet.val_every, hovernet.seed) == (50, 500, 1, 10)
    assert (hovernet.best_metric, hovernet.best_mode) == ("np_dice", "max")
    assert cyclegan.save_latest_steps == hovernet.save_latest_steps == SAVE_LATEST_STEPS == 2000
    with pytest.raises(ValidationError, match="greater than or equal to 0"):
        HoVerNetConfig(log_every=-1)  # an overridden default keeps the declared bound
    with pytest.raises(ValidationError, match="best_mode"):
        CycleGANConfig(best_mode="lowest")


def test_a_config_gives_the_loop_its_epochs_first_batch_and_validation() -> None:
    from histostain.segmentation.config import HoVerNetConfig
    from histostain.translation.train_config import CycleGANConfig

    hovernet = HoVerNetConfig(phase1_epochs=2, phase2_epochs=3, batch_size_phase1=7, log_every=9, max_steps=4)
    loop = hovernet.loop_config()
    assert (loop.epochs, loop.batch_size, loop.val_every, loop.log_every, loop.max_steps) == (5, 7, 1, 9, 4)
    assert (loop.seed, loop.best_metric) == (10, "np_dice")
    assert hovernet.loop_config(validation=False).val_every == 0  # no val split: no epoch waits for one
    loop = CycleGANConfig(epochs=3, epochs_decay=4, batch_size=2).loop_config()
    assert (loop.epochs, loop.batch_size, loop.val_every, loop.best_metric) == (7, 2, 5, "val_ssim")


# ------------------------------------------------------------------------------------------ TOML writer

_keys = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=8)
_scalars = (
    st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=12)
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False)
    | st.booleans()
)
_values = st.recursive(
    _scalars | st.lists(_scalars, max_size=4),
    lambda children: st.dictionaries(_keys, children, max_size=4),
    max_leaves=12,
)


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(_keys, _values, max_size=6))
def test_toml_round_trips_through_tomllib(data: dict[str, Any]) -> None:
    assert tomllib.loads(dumps(data)) == data


def test_toml_specials_none_paths_and_nesting(tmp_path: Path) -> None:
    data = {
        "skip": None,
        "path": Path("/data/bci"),
        "inf": math.inf,
        "ninf": -math.inf,
        "quote": 'a "b"\n\tc\\',
        "a b": 1,
        "0\n": {"x": 2},  # a key ending in a newline must be quoted (a "$" regex would take it as bare)
        "mixed": [1, "x", [2.5, True]],
        "empty": {},
        "table": {"inner": {"x": 1, "skip": None}, "list": [{"k": 1}]},
        "history": [{"command": ["a", "b"], "options": {"n": 1, "skip": None}}, {"command": ["c"]}],
    }
    write_toml(tmp_path / "c.toml", data, header="first\nsecond")
    text = (tmp_path / "c.toml").read_text()
    assert text.startswith("# first\n# second\n")
    parsed = tomllib.loads(text)
    assert "skip" not in parsed and "skip" not in parsed["table"]["inner"]
    assert parsed["path"] == "/data/bci" and parsed["inf"] == math.inf and parsed["ninf"] == -math.inf
    assert parsed["quote"] == data["quote"] and parsed["a b"] == 1 and parsed["0\n"] == {"x": 2}
    assert parsed["mixed"] == [1, "x", [2.5, True]] and parsed["empty"] == {}
    assert parsed["table"] == {"inner": {"x": 1}, "list": [{"k": 1}]}
    # a list of tables: one [[history]] section per item, its nested tables under it
    assert parsed["history"] == [{"command": ["a", "b"], "options": {"n": 1}}, {"command": ["c"]}]
    assert text.count("[[history]]") == 2 and "[history.options]" in text
    assert math.isnan(tomllib.loads(dumps({"n": math.nan}))["n"])
    with pytest.raises(TypeError):
        dumps({"bad": object()})
