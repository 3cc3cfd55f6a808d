"""`histostain train detector` end to end through the real entry point, on a tiny prepared EndoNuke set."""

from __future__ import annotations

import csv
import json
import tomllib
from pathlib import Path

import pytest
import torch

from histostain.synth import write_dataset

CLI = ["--quiet", "--device", "cpu"]
TINY = ["--width", "4", "--levels", "2", "--crop", "48", "--batch-size", "2", "--num-workers", "0"]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from histostain.datasets.endonuke import prepare_endonuke

    root = tmp_path_factory.mktemp("endonuke")
    write_dataset("endonuke", root / "raw", n=5, size=64, seed=3)
    prepare_endonuke(root / "raw", root / "prepared", mpp=0.5)
    return root / "prepared"


def test_train_detector_end_to_end_then_resume(
    tmp_path: Path, prepared: Path, run_cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HISTOSTAIN_NUM_THREADS", "1")
    runs = tmp_path / "runs"
    base = [*CLI, "train", "detector", str(prepared), "--name", "det", "--runs-dir", str(runs), *TINY]
    code, out, err = run_cli([*base, "--epochs", "1", "--log-every", "1", "--sample-every", "1"])
    assert code == 0, err
    assert "completed" in out and "val f1" in out and "val threshold" in out and "DetectorNet width 4" in out
    folder = runs / "det"
    with (folder / "config.toml").open("rb") as handle:
        config = tomllib.load(handle)
    assert (config["width"], config["levels"], config["crop"], config["run"]["mpp"]) == (4, 2, 48, 0.5)
    with (folder / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    validation = [row for row in rows if row["f1"]]
    assert len(validation) == 1 and 0.01 <= float(validation[0]["threshold"]) <= 0.9  # the grid's bounds
    assert any(row["loss"] for row in rows) and list((folder / "samples").glob("*.png"))

    code, out, err = run_cli([*base, "--epochs", "2", "--resume", "--json"])  # one more epoch on the same run
    assert code == 0, err
    # strict JSON even when an untrained detector finds nothing (its precision is NaN inside histostain)
    summary = json.loads(out, parse_constant=lambda name: pytest.fail(f"{name} in --json output"))
    assert summary["status"] == "completed" and "validation" in summary
    payload = torch.load(folder / "checkpoints" / "last.pt", weights_only=True)
    assert payload["epoch"] == 2 and payload["class_names"][1] == "epithelium"
    assert payload["threshold"] == pytest.approx(float(payload["threshold"])) and "model_config" in payload
    assert (folder / "checkpoints" / "best.pt").is_file()


def test_train_lists_detector_and_refuses_a_non_endonuke_folder(tmp_path: Path, run_cli) -> None:
    code, out, _ = run_cli(["train", "--help"])
    assert code == 0 and "detector" in out
    code, out, err = run_cli([*CLI, "train", "detector", str(tmp_path), "--name", "x", "--runs-dir", str(tmp_path)])
    assert code == 2 and out == ""
    assert not (tmp_path / "x").exists()
