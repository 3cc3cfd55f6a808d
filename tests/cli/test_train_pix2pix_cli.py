"""`histostain train pix2pix` end to end through the real entry point, then `translate` with the run folder."""

from __future__ import annotations

import csv
import json
import re
import shlex
import tomllib
from pathlib import Path

import numpy as np
import pytest

from histostain.io.images import read_image, write_image
from histostain.runtime.checkpoint import load_histostain_checkpoint

CLI = ["--quiet", "--device", "cpu"]
TINY = ["--net-g", "unet_32", "--ngf", "4", "--ndf", "4", "--crop", "32", "--num-workers", "0"]


def test_train_pix2pix_then_translate_with_the_run_folder(
    tmp_path: Path, prepared_bci: Path, run_cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HISTOSTAIN_NUM_THREADS", "1")
    runs = tmp_path / "runs"
    args = [*CLI, "train", "pix2pix", str(prepared_bci), "--name", "x", "--runs-dir", str(runs), *TINY]
    first = [*args, "--epochs", "1", "--epochs-decay", "0", "--loss", "pyramid", "--val-every", "1"]
    code, out, err = run_cli([*first, "--log-every", "1", "--sample-every", "1"])
    assert code == 0, err
    assert "completed" in out and "he2ihc (A = HE, B = IHC)" in out and "val_identity_psnr" in out
    folder = runs / "x"
    with (folder / "config.toml").open("rb") as handle:
        config = tomllib.load(handle)
    assert (config["loss"], config["lambda_l1"], config["gan_mode"], config["net_g"]) == (
        "pyramid",
        25.0,
        "vanilla",
        "unet_32",
    )
    assert config["run"]["domains"] == {"A": "HE", "B": "IHC"} and config["run"]["norm_mode"] == "per-input"
    with (folder / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    losses = [row for row in rows if row["G"]]
    assert [int(row["step"]) for row in losses] == [1, 2, 3]  # 3 training patches, batch 1
    validation = [row for row in rows if row["val_ssim"]]
    assert len(validation) == 1 and float(validation[0]["val_identity_ssim"]) > 0
    assert read_image(sorted((folder / "samples").glob("*.png"))[0]).shape == (32, 96, 3)  # A | fake B | B
    best = folder / "checkpoints" / "best.pt"
    assert load_histostain_checkpoint(best, arch="pix2pix")["generator"]["config"]["arch"] == "unet_32"

    # resume refuses an architecture change; a longer resume continues
    base = [*CLI, "train", "pix2pix", str(prepared_bci), "--name", "x", "--runs-dir", str(runs), "--resume"]
    code, _, err = run_cli([*base, "--net-g", "unet_64"])
    assert code == 2 and "cannot change net_g" in err
    code, out, err = run_cli([*base, "--epochs", "2", "--json"])
    assert code == 0, err
    summary = json.loads(out)
    assert summary["status"] == "completed" and summary["step"] == 6 and summary["config"]["loss"] == "pyramid"

    # translate tiles with the run folder: its best checkpoint, a UnetGenerator, the run's direction
    tiles = tmp_path / "tiles"
    rng = np.random.default_rng(0)
    for index in range(2):
        write_image(tiles / f"t{index}.png", rng.integers(0, 256, (40, 56, 3), dtype=np.uint8))
    out_dir = tmp_path / "out"
    command = [*CLI, "translate", str(tiles), "-w", str(folder), "--direction", "he2ihc", "-o", str(out_dir)]
    code, out, err = run_cli([*command, "--json"])
    assert code == 0, err
    assert json.loads(out)["translated"] == 2
    assert read_image(out_dir / "t0.png").shape == (40, 56, 3)
    record = json.loads((out_dir / "translate.json").read_text())
    assert "unet_32" in json.dumps(record) and "pix2pix" in json.dumps(record)
    assert record["settings"]["norm_mode"] == "per-input"  # the mode the run recorded, with no --norm-mode
    code, _, err = run_cli([*command[:-1], str(tmp_path / "out_eval"), "--norm-mode", "eval"])
    assert code == 0, err
    assert json.loads((tmp_path / "out_eval" / "translate.json").read_text())["settings"]["norm_mode"] == "eval"
    code, _, err = run_cli([*CLI, "translate", str(tiles), "-w", str(folder), "--direction", "ihc2he", "-o", "o2"])
    assert code == 2 and "he2ihc" in err  # the run translates H&E to IHC only


def test_help_shows_every_default_and_a_runnable_example(run_cli, monkeypatch: pytest.MonkeyPatch) -> None:
    import typer.main

    from histostain.cli import app

    monkeypatch.setenv("COLUMNS", "200")
    code, out, _ = run_cli(["train", "--help"])
    assert code == 0 and "pix2pix" in out
    code, out, _ = run_cli(["train", "pix2pix", "--help"])
    assert code == 0 and re.search(r"Usage: histostain train pix2pix \[OPTIONS\] PREPARED", out)
    command = typer.main.get_command(app).load("train").commands["pix2pix"]  # type: ignore[attr-defined]
    shown = {param.name: param.show_default for param in command.params if param.param_type_name == "option"}
    assert all(isinstance(value, str) for name, value in shown.items() if name not in ("name",)), shown
    assert shown["lambda_l1"] == "100 (25 with --loss pyramid)" and shown["loss"] == "l1"
    assert (shown["direction"], shown["net_g"], shown["lr"], shown["val_every"]) == (
        "he2ihc",
        "unet_256",
        "0.0002",
        "5",
    )
    assert (shown["epochs"], shown["epochs_decay"], shown["batch_size"], shown["norm_mode"]) == (
        "100",
        "100",
        "1",
        "per-input",
    )
    example = shlex.split(command.epilog.removeprefix("Example: "))
    assert example[:3] == ["histostain", "train", "pix2pix"] and " ".join(example) in " ".join(out.split())
    command.make_context("pix2pix", example[3:])


def test_bad_options_are_one_line_errors(tmp_path: Path, prepared_bci: Path, run_cli) -> None:
    base = [*CLI, "train", "pix2pix", str(prepared_bci), "--name", "bad", "--runs-dir", str(tmp_path)]
    code, _, err = run_cli([*base, "--loss", "l2"])
    assert code == 2 and "loss" in err and "Traceback" not in err
    code, _, err = run_cli([*base, "--net-g", "unet_100"])
    assert code == 2 and "net_g" in err
    assert not (tmp_path / "bad").exists()
