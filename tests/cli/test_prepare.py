"""`histostain prepare` end to end through the real entry point, on synthetic data in the published layouts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from histostain import __version__
from histostain.synth import write_dataset


@pytest.fixture
def run(run_cli):
    """The CLI with --quiet first (as a user scripting it would type)."""
    return lambda args: run_cli(["--quiet", *args])


def test_prepare_bci_json_then_no_op_then_refusal(tmp_path: Path, run) -> None:
    write_dataset("bci", tmp_path / "raw", n=5, size=128, seed=3)
    args = ["prepare", "bci", str(tmp_path / "raw"), "--out", str(tmp_path / "prep"), "--patch", "64", "--size", "32"]
    code, out, _ = run([*args, "--json"])
    assert code == 0
    summary = json.loads(out)
    assert summary["skipped"] is False and sum(summary["splits"].values()) == 5 * 4
    code, out, _ = run([*args, "--json"])
    assert code == 0 and json.loads(out)["skipped"] is True
    code, out, err = run([*args[:-1], "16"])  # --size 16 instead of 32
    assert code == 2 and out == ""
    assert "size 32 -> 16" in err and len([line for line in err.splitlines() if line.strip()]) == 1


def test_prepared_manifest_records_the_command_as_typed_and_the_resolved_options(tmp_path: Path, run) -> None:
    write_dataset("bci", tmp_path / "raw", n=2, size=128, seed=3)
    args = ["prepare", "bci", str(tmp_path / "raw"), "--out", str(tmp_path / "prep"), "--patch", "64"]
    code, _, err = run(args)
    assert code == 0, err
    record = json.loads((tmp_path / "prep" / "manifest.json").read_text())["provenance"]
    assert record["command"] == ["histostain", "--quiet", *args]  # global options included, nothing rebuilt
    assert record["histostain_version"] == __version__
    assert record["created"].endswith("+00:00")  # UTC
    options = record["options"]
    assert (options["patch"], options["size"], options["val_fraction"], options["seed"]) == (64, 256, 0.2, 0)
    assert options["source"] == str(tmp_path / "raw") and options["settings"]["device"] == "auto"


def test_prepare_pannuke_table(tmp_path: Path, run) -> None:
    write_dataset("pannuke", tmp_path / "raw", n=9, size=64, seed=1, quirks=True)
    code, out, _ = run(["prepare", "pannuke", str(tmp_path / "raw"), "--out", str(tmp_path / "prep")])
    assert code == 0
    assert "test samples" in out and "empty patches" in out
    images = np.load(tmp_path / "prep" / "test" / "images.npy")
    assert images.dtype == np.uint8 and images.shape[1:] == (64, 64, 3)


def test_prepare_endonuke_seed_crops(tmp_path: Path, run) -> None:
    write_dataset("endonuke", tmp_path / "raw", n=6, seed=2)
    out_dir = tmp_path / "prep"
    code, out, _ = run(
        ["prepare", "endonuke", str(tmp_path / "raw"), "--out", str(out_dir), "--crops", "seed", "--json"]
    )
    assert code == 0
    summary = json.loads(out)
    assert sum(summary["splits"].values()) == 6 * 3  # three crops per tile
    manifest = json.loads((out_dir / "manifest.json").read_text())
    assert {record["id"].rsplit("_", 1)[1] for record in manifest["samples"]} == {"tl", "tr", "bc"}


@pytest.mark.parametrize("dataset", ["bci", "pannuke", "endonuke"])
def test_wrong_layout_is_one_line_exit_2_and_writes_nothing(tmp_path: Path, run, dataset: str) -> None:
    source = tmp_path / "not-a-dataset"
    source.mkdir()
    (source / "notes.txt").write_text("hello")
    code, out, err = run(["prepare", dataset, str(source), "--out", str(tmp_path / "prep")])
    assert code == 2 and out == ""
    assert len([line for line in err.splitlines() if line.strip()]) == 1 and err.startswith("Error: ")
    assert not (tmp_path / "prep").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["not-a-dataset"]
