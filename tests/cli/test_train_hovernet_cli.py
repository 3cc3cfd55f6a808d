"""`histostain train hovernet` end to end through the real entry point, on a tiny prepared PanNuke set."""

from __future__ import annotations

import csv
import json
import tomllib
from pathlib import Path

import pytest

from histostain.datasets.pannuke import prepare_pannuke
from histostain.runtime.checkpoint import load_histostain_checkpoint
from histostain.segmentation import load_hovernet
from histostain.synth import write_dataset

CLI = ["--quiet", "--device", "cpu"]  # global options: no progress output, and CPU even on a machine with a GPU
# 64 px patches -> 40 px output with one dense unit per decoder stage; units are only settable in the config file
TINY = ["--encoder-width", "0.125", "--decoder-width", "0.125", "--num-workers", "0"]
TINY_TOML = "units = [1, 1, 1, 1]\ndecoder_units = [1, 1]\ntensorboard = false\n"


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pannuke")
    write_dataset("pannuke", root / "raw", n=8, size=64, seed=2)
    prepare_pannuke(root / "raw", root / "prepared", split="random", fractions="0.5,0.25,0.25")
    return root / "prepared"


@pytest.fixture
def tiny_config(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(TINY_TOML)
    return path


@pytest.mark.slow
def test_train_hovernet_end_to_end_then_resume(
    tmp_path: Path, prepared: Path, tiny_config: Path, run_cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HISTOSTAIN_NUM_THREADS", "1")  # torch is first imported inside the command
    runs = tmp_path / "runs"
    options = ["--name", "smoke", "--runs-dir", str(runs), "--config", str(tiny_config)]
    base = [*CLI, "train", "hovernet", str(prepared), *options]
    phases = ["--phase1-epochs", "1", "--phase2-epochs", "2", "--batch-size-phase1", "2", "--batch-size-phase2", "4"]
    first = [*base, *TINY, *phases, "--max-steps", "3", "--log-every", "1", "--sample-every", "1"]
    code, out, err = run_cli(first)
    assert code == 0, err
    assert "max_steps" in out and "fast mode, 6 types" in out and "val np_dice" in out and "last checkpoint" in out
    folder = runs / "smoke"
    with (folder / "config.toml").open("rb") as handle:
        config = tomllib.load(handle)
    assert (config["encoder_width"], config["units"], config["batch_size_phase2"], config["max_steps"]) == (
        0.125,
        [1, 1, 1, 1],
        4,
        3,
    )
    assert config["run"]["command"] == ["histostain", *first]
    assert config["run"]["output_size"] == 40 and config["run"]["init"] == "from scratch"
    with (folder / "metrics.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    columns = set(rows[0])
    assert {"step", "epoch", "loss", "loss_np_ce", "loss_hv_msge", "loss_tp_dice", "lr"} <= columns
    assert {"np_dice", "np_acc", "hv_mse", "dice", "tp_acc"} <= columns
    validation = [row for row in rows if row["np_dice"]]
    assert validation and 0.0 <= float(validation[0]["np_dice"]) <= 1.0  # after epoch 1 (train: 4 patches, 2 steps)
    assert (folder / "checkpoints" / "best.pt").is_file() and sorted((folder / "samples").iterdir())
    payload = load_histostain_checkpoint(folder / "checkpoints" / "last.pt", arch="hovernet")
    assert (payload["step"], payload["phase"]) == (3, 2)
    model, info = load_hovernet(folder / "checkpoints" / "last.pt", mode="fast", num_types=6)
    assert info.format == "histostain" and model.encoder_width == 0.125
    assert (info.mpp, info.class_names[5], payload["geometry"]["patch_out"]) == (0.25, "Epithelial", 40)

    code, out, err = run_cli([*base, "--resume", "--max-steps", "4", "--json"])
    assert code == 0, err
    summary = json.loads(out)
    # 4 train patches: phase 1 = 2 steps of 2, phase 2 = 2 epochs of one step of 4; step 4 ends the run
    assert (summary["step"], summary["epoch"], summary["status"]) == (4, 3, "completed")
    assert summary["config"]["batch_size_phase2"] == 4
    assert summary["config"]["units"] == [1, 1, 1, 1]  # kept from the run's own config.toml

    code, _, err = run_cli([*base, "--resume", "--batch-size-phase2", "8"])
    assert code == 2 and "cannot change batch_size_phase2 when resuming" in err


@pytest.mark.slow
def test_init_from_a_checkpoint_and_bad_inputs_are_one_line_errors(
    tmp_path: Path, prepared: Path, tiny_config: Path, run_cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HISTOSTAIN_NUM_THREADS", "1")  # torch is first imported inside the command
    from histostain.segmentation.compat import save_hovernet
    from histostain.segmentation.hovernet import HoVerNet

    source = HoVerNet("fast", 6, encoder_width=0.125, units=(1, 1, 1, 1), decoder_width=0.125, decoder_units=(1, 1))
    weights = save_hovernet(source, tmp_path / "init.pt")
    runs = tmp_path / "runs"
    common = [str(prepared), "--runs-dir", str(runs), "--config", str(tiny_config), *TINY]
    args = [*CLI, "train", "hovernet", *common, "--name", "ok", "--init", str(weights), "--max-steps", "1"]
    code, out, err = run_cli(args)
    assert code == 0, err
    payload = load_histostain_checkpoint(runs / "ok" / "checkpoints" / "last.pt")
    assert payload["init"]["kind"] == "hovernet" and payload["init"]["missing"] == 0
    weights.unlink()  # a resumed run takes its weights from the checkpoint; the init file may be gone
    code, _, err = run_cli([*args[:-1], "2", "--resume"])
    assert code == 0, err
    payload = load_histostain_checkpoint(runs / "ok" / "checkpoints" / "last.pt")
    assert payload["step"] == 2 and payload["init"]["path"] == str(weights)
    with (runs / "ok" / "config.toml").open("rb") as handle:
        assert tomllib.load(handle)["run"]["init"].startswith(f"hovernet weights from {weights}: ")

    wrong = HoVerNet("fast", 6, encoder_width=0.25, units=(1, 1, 1, 1), decoder_width=0.125, decoder_units=(1, 1))
    bad = save_hovernet(wrong, tmp_path / "wrong.pt")
    code, _, err = run_cli([*CLI, "train", "hovernet", *common, "--name", "bad", "--init", str(bad)])
    assert code == 2 and "this checkpoint is fast mode with 6 types" in err and "Traceback" not in err
    assert not (runs / "bad").exists()

    code, _, err = run_cli([*CLI, "train", "hovernet", *common, "--name", "m", "--mode", "original"])
    assert code == 2 and "does not fit HoVer-Net original" in err
    code, _, err = run_cli([*CLI, "train", "hovernet", *common, "--name", "m", "--mode", "slow"])
    assert code == 2 and "mode" in err
    code, _, err = run_cli([*CLI, "train", "hovernet", str(tmp_path / "nowhere"), "--name", "m", *TINY])
    assert code == 2 and "nowhere" in err


def test_train_help_lists_both_trainers(run_cli) -> None:
    code, out, _ = run_cli(["train", "--help"])
    assert code == 0 and "cyclegan" in out and "hovernet" in out
    code, out, _ = run_cli(["train", "hovernet", "--help"])
    assert code == 0 and "--phase1-epochs" in out and "--init" in out and "--max-steps" in out
