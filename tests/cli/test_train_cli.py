"""`histostain train cyclegan` end to end through the real entry point, on a tiny prepared BCI set."""

from __future__ import annotations

import csv
import json
import tomllib
from dataclasses import replace
from pathlib import Path

import pytest

from histostain.io.images import read_image
from histostain.runtime.checkpoint import load_histostain_checkpoint
from histostain.runtime.training import FitResult
from histostain.segmentation.config import HoVerNetConfig
from histostain.translation.train_config import CycleGANConfig

CLI = ["--quiet", "--device", "cpu"]  # global options: no progress output, and CPU even on a machine with a GPU
TINY = ["--ngf", "4", "--ndf", "4", "--n-blocks", "1", "--crop", "32", "--num-workers", "0"]


@pytest.fixture
def prepared(prepared_bci: Path) -> Path:
    """The session's miniature prepared BCI (tests/conftest.py)."""
    return prepared_bci


@pytest.mark.slow
def test_train_cyclegan_end_to_end(tmp_path: Path, prepared: Path, run_cli, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HISTOSTAIN_NUM_THREADS", "1")  # torch is first imported inside the command
    runs = tmp_path / "runs"
    args = [*CLI, "train", "cyclegan", str(prepared), "--name", "smoke", "--runs-dir", str(runs), *TINY]
    first = [*args, "--max-steps", "2", "--sample-every", "1", "--log-every", "1", "--direction", "he2ihc"]
    code, out, err = run_cli(first)
    assert code == 0, err
    assert "max_steps" in out and "he2ihc (A = HE, B = IHC)" in out and "last checkpoint" in out
    folder = runs / "smoke"
    with (folder / "config.toml").open("rb") as handle:
        config = tomllib.load(handle)
    assert (config["ngf"], config["crop"], config["direction"], config["max_steps"]) == (4, 32, "he2ihc", 2)
    assert config["lambda_a"] == config["lambda_b"] == 10.0 and config["pool_size"] == 50  # reference defaults
    run = config["run"]
    assert run["command"] == ["histostain", *first]  # as typed, global options included
    assert run["options"]["max_steps"] == 2 and run["options"]["settings"]["device"] == "cpu"
    assert run["domains"] == {"A": "HE", "B": "IHC"}
    assert run["histostain_version"] and run["world_size"] == 1 and "resumed" not in run
    with (folder / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [int(row["step"]) for row in rows] == [1, 2]
    for column in ("step", "epoch", "G", "G_A", "G_B", "cycle_A", "cycle_B", "idt_A", "idt_B", "D_A", "D_B"):
        assert column in rows[0]
    assert float(rows[0]["lr"]) == pytest.approx(2e-4) and float(rows[0]["images_per_s"]) > 0
    samples = sorted((folder / "samples").glob("*.png"))
    assert [p.name for p in samples] == ["step_0000001.png", "step_0000002.png"]
    assert read_image(samples[0]).shape == (64, 96, 3)  # 2 x 3 grid of 32 px crops
    assert load_histostain_checkpoint(folder / "checkpoints" / "last.pt", arch="cyclegan")["step"] == 2

    # resume continues from step 2; the stored config is the base, so the tiny widths need not be repeated
    base = [*CLI, "train", "cyclegan", str(prepared), "--name", "smoke", "--runs-dir", str(runs), "--resume"]
    second = [*base, "--max-steps", "3", "--json"]
    code, out, err = run_cli(second)
    assert code == 0, err
    summary = json.loads(out)
    assert summary["status"] == "max_steps" and summary["step"] == 3 and summary["config"]["ngf"] == 4
    with (folder / "metrics.csv").open() as handle:
        assert [int(row["step"]) for row in csv.DictReader(handle)] == [1, 2, 3]

    # a second resume: the run's record keeps every command, in order, the first one as its origin
    third = [*base, "--max-steps", "4"]
    code, _, err = run_cli(third)
    assert code == 0, err
    with (folder / "config.toml").open("rb") as handle:
        run = tomllib.load(handle)["run"]
    assert [run["command"], *(entry["command"] for entry in run["resumed"])] == [
        ["histostain", *first],
        ["histostain", *second],
        ["histostain", *third],
    ]
    assert run["created"] <= run["resumed"][0]["created"] <= run["resumed"][1]["created"] == run["updated"]
    assert run["resumed"][1]["options"]["max_steps"] == 4 and run["resumed"][1]["options"]["resume"] is True

    # a second run under the same name is refused, so is an architecture change on resume; neither is recorded
    code, out, err = run_cli([*args, "--max-steps", "1"])
    assert code == 2 and "already exists" in err and "--resume" in err
    code, out, err = run_cli([*base, "--ngf", "8"])
    assert code == 2 and "cannot change ngf" in err
    with (folder / "config.toml").open("rb") as handle:
        assert len(tomllib.load(handle)["run"]["resumed"]) == 2


def test_config_file_and_flag_precedence(
    tmp_path: Path, prepared: Path, run_cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HISTOSTAIN_NUM_THREADS", "1")  # torch is first imported inside the command
    config = tmp_path / "cfg.toml"
    config.write_text("ngf = 8\nndf = 4\nn_blocks = 1\ncrop = 32\nlambda_identity = 0.25\nnum_workers = 0\n")
    args = [*CLI, "train", "cyclegan", str(prepared), "--name", "cfg", "--runs-dir", str(tmp_path)]
    code, out, err = run_cli([*args, "--config", str(config), "--ngf", "4", "--lambda-cycle", "5", "--max-steps", "1"])
    assert code == 0, err
    with (tmp_path / "cfg" / "config.toml").open("rb") as handle:
        resolved = tomllib.load(handle)
    assert resolved["ngf"] == 4  # flag beats file
    assert resolved["lambda_identity"] == 0.25 and resolved["crop"] == 32  # file beats default
    assert resolved["lambda_a"] == resolved["lambda_b"] == 5.0  # --lambda-cycle sets both directions
    assert resolved["ndf"] == 4 and resolved["epochs"] == 100  # default where nobody said anything
    assert resolved["run"]["config_file"] == str(config)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--direction", "he2he"], "direction"),
        (["--crop", "30"], "multiple of 4"),
        (["--lr", "0"], "lr"),
        (["--resume"], "cannot resume"),
    ],
)
def test_bad_options_are_one_line_errors(
    tmp_path: Path, prepared: Path, run_cli, extra: list[str], message: str
) -> None:
    code, out, err = run_cli(
        [*CLI, "train", "cyclegan", str(prepared), "--name", "bad", "--runs-dir", str(tmp_path), *extra]
    )
    assert code == 2 and out == "" and message in err
    assert "Traceback" not in err and not (tmp_path / "bad").exists()


def test_missing_prepared_folder(tmp_path: Path, run_cli) -> None:
    code, _, err = run_cli(
        [*CLI, "train", "cyclegan", str(tmp_path / "nope"), "--name", "x", "--runs-dir", str(tmp_path)]
    )
    assert code == 2 and "nope" in err and not (tmp_path / "x").exists()


def test_val_fid_needs_weights_before_training(
    tmp_path: Path, prepared: Path, run_cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HISTOSTAIN_HOME", str(tmp_path / "home"))
    args = [*CLI, "train", "cyclegan", str(prepared), "--name", "fid", "--runs-dir", str(tmp_path / "runs"), *TINY]
    code, out, err = run_cli([*args, "--max-steps", "1", "--val-fid"])
    assert code == 2 and "pt_inception-2015-12-05-6726825d.pth" in err
    assert not (tmp_path / "runs" / "fid").exists()  # refused before anything was written


@pytest.mark.slow
def test_val_fid_is_logged_with_psnr_and_ssim(
    tmp_path: Path, prepared: Path, run_cli, fid_weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HISTOSTAIN_NUM_THREADS", "1")  # torch is first imported inside the command
    weights = fid_weights
    runs = tmp_path / "runs"
    args = [*CLI, "train", "cyclegan", str(prepared), "--name", "fid", "--runs-dir", str(runs), *TINY]
    extra = ["--epochs", "1", "--epochs-decay", "0", "--val-every", "1", "--val-fid", "--fid-weights", str(weights)]
    code, out, err = run_cli([*args, *extra, "--log-every", "1"])
    assert code == 0, err
    with (runs / "fid" / "metrics.csv").open() as handle:
        rows = [row for row in csv.DictReader(handle) if row.get("val_fid")]
    assert rows, "no validation row with val_fid"
    assert float(rows[-1]["val_fid"]) >= 0 and float(rows[-1]["val_ssim"]) <= 1
    with (runs / "fid" / "config.toml").open("rb") as handle:
        assert tomllib.load(handle)["fid_weights"] == str(weights)  # the file validation used is pinned


def _result(**changes: object) -> FitResult:
    values: dict[str, object] = {
        "status": "completed",
        "run_dir": Path("runs/x"),
        "epoch": 3,
        "epochs": 3,
        "step": 12,
        "seconds": 1.0,
        "images_per_second": 2.0,
        "last_checkpoint": Path("runs/x/checkpoints/last.pt"),
        "best_checkpoint": None,
        "best": None,
        "best_metric": None,
        "metrics": {"loss": 1.5, "loss_np_ce": 0.25, "G": 9.0, "D_A": 0.5, "lr": 1e-4},
    }
    values.update(changes)
    return FitResult(**values)  # type: ignore[arg-type]


def test_one_summary_renderer_with_each_trainers_own_rows() -> None:
    from histostain.cli.train import summary_rows

    result = _result(validation={"np_dice": 0.5}, best=0.5, best_metric="np_dice", best_checkpoint=Path("b.pt"))
    rows = summary_rows(result, HoVerNetConfig(phase1_epochs=3, phase2_epochs=0))
    assert [label for label, _ in rows[:6]] == ["run folder", "status", "network", "phase", "epochs", "steps"]
    values = dict(rows)
    assert values["network"] == "fast mode, 6 types" and values["epochs"] == "3/3 (3 frozen + 0 all)"
    assert values["phase"] == "1 (encoder frozen)"  # a run of phase 1 only ends in phase 1
    assert values["last losses"] == "loss 1.5  np_ce 0.25" and values["learning rate"] == "0.0001"
    assert values["val np_dice"] == "0.5" and values["best np_dice"] == "0.5 (b.pt)"
    assert dict(summary_rows(_result(epoch=1), HoVerNetConfig(phase1_epochs=1)))["phase"] == "2 (all layers)"

    rows = summary_rows(replace(result, validation={"val_ssim": 0.75}), CycleGANConfig(direction="he2ihc"))
    values = dict(rows)
    assert [label for label, _ in rows[:4]] == ["run folder", "status", "direction", "epochs"]
    assert values["direction"] == "he2ihc (A = HE, B = IHC)" and values["epochs"] == "3/3"
    assert values["last losses"] == "G 9  D_A 0.5" and values["val_ssim"] == "0.75"


def test_both_train_commands_share_their_options_with_each_trainers_defaults() -> None:
    import typer.main

    from histostain.cli import app

    train = typer.main.get_command(app).load("train")  # type: ignore[attr-defined]
    shared = {"name", "config", "runs_dir", "resume", "max_steps", "seed", "num_workers", "save_every"}
    shared |= {"log_every", "sample_every", "val_every", "as_json"}
    published = {
        "cyclegan": {"log_every": "100", "sample_every": "400", "val_every": "5", "seed": "0", "lr": "0.0002"},
        "hovernet": {"log_every": "50", "sample_every": "500", "val_every": "1", "seed": "10", "lr": "0.0001"},
    }
    for command, defaults in published.items():
        params = {param.name: param for param in train.commands[command].params}
        assert shared <= set(params), command
        assert {name: params[name].show_default for name in defaults} == defaults, command
        assert params["max_steps"].show_default == "no limit" and params["max_steps"].default is None
