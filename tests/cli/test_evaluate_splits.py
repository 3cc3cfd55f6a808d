"""Which split of a prepared dataset `evaluate` scores (issue point 9): one rule for celldet and instance (test if
present, else the only split, else ask for --split; `--split all` pools), said in every table title and in
`meta.split`."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from histostain.io.images import write_label_tiff

Runner = Callable[[list[str]], tuple[int, str, str]]  # the run_cli fixture of tests/conftest.py


@pytest.fixture(scope="module")
def endonuke(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Prepared EndoNuke folders of 4 synthetic tiles: ``three`` (train 2, val 1, test 1), ``no_test`` (train,
    val), ``one`` (train only), and ``pred/`` holding every tile's ground truth as the prediction."""
    from histostain.datasets.endonuke import prepare_endonuke
    from histostain.synth import write_dataset

    root = tmp_path_factory.mktemp("endonuke")
    write_dataset("endonuke", root / "raw", 4, seed=5)
    for name, fractions in (("three", "0.4,0.3,0.3"), ("no_test", "0.5,0.5,0"), ("one", "1,0,0")):
        prepare_endonuke(root / "raw", root / name, mpp=2.0, fractions=fractions)
    (root / "pred").mkdir()
    for label in (root / "three").glob("*/labels/*.txt"):
        shutil.copy(label, root / "pred" / label.name)
    return root


def _celldet(run_cli: Runner, truth: Path, pred: Path, *extra: str) -> tuple[int, str, str]:
    return run_cli(["--quiet", "evaluate", "celldet", str(truth), str(pred), "--radius", "2", *extra])


def _title_lines(stdout: str) -> list[str]:
    """Table titles: the lines right above a table's top border."""
    lines = stdout.splitlines()
    return [line.strip() for line, below in zip(lines, lines[1:], strict=False) if below.startswith("┏")]


def test_celldet_scores_the_test_split_by_default_not_every_split(endonuke: Path, run_cli: Runner) -> None:
    code, stdout, err = _celldet(run_cli, endonuke / "three", endonuke / "pred")
    assert code == 0, err
    titles = _title_lines(stdout)
    assert titles[0] == "Cell detection (split test)"
    assert len(titles) == 3 and all(title.endswith("(split test)") for title in titles), titles  # + per class
    code, stdout, err = _celldet(run_cli, endonuke / "three", endonuke / "pred", "--json")
    payload = json.loads(stdout)
    assert payload["meta"]["split"] == "test" and payload["meta"]["splits"] == ["test"]
    assert payload["summary"]["n_images"] == 1  # not the 4 tiles of every split
    assert payload["meta"]["split_reason"] == "default: the test split"


def test_celldet_split_all_pools_every_split_and_says_so(endonuke: Path, run_cli: Runner) -> None:
    code, stdout, err = _celldet(run_cli, endonuke / "three", endonuke / "pred", "--split", "all")
    assert code == 0, err
    assert _title_lines(stdout)[0] == "Cell detection (splits train+val+test pooled)"
    code, stdout, _ = _celldet(run_cli, endonuke / "three", endonuke / "pred", "--split", "all", "--json")
    payload = json.loads(stdout)
    assert payload["meta"]["split"] == "all" and payload["meta"]["splits"] == ["train", "val", "test"]
    assert payload["summary"]["n_images"] == 4 and payload["summary"]["fn"] == 0


def test_celldet_folder_with_one_split_uses_it(endonuke: Path, run_cli: Runner) -> None:
    code, stdout, err = _celldet(run_cli, endonuke / "one", endonuke / "pred", "--json")
    assert code == 0, err
    payload = json.loads(stdout)
    assert payload["meta"]["split"] == "train" and payload["meta"]["split_reason"] == "default: the folder's only split"
    assert payload["summary"]["n_images"] == 4


def test_celldet_several_splits_without_test_asks_for_split(endonuke: Path, run_cli: Runner) -> None:
    code, stdout, err = _celldet(run_cli, endonuke / "no_test", endonuke / "pred")
    assert code == 2 and stdout == ""
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines == [
        f"Error: {endonuke / 'no_test'} holds the splits train, val and no test split: choose one with --split "
        "(hint: e.g. --split val, or --split all to pool every split)"
    ]


def test_celldet_unknown_split_names_the_available_ones(endonuke: Path, run_cli: Runner) -> None:
    code, _, err = _celldet(run_cli, endonuke / "three", endonuke / "pred", "--split", "holdout")
    assert code == 2
    assert f"Error: --split holdout: {endonuke / 'three'} has no such split; it has train, val, test" in err


@pytest.fixture(scope="module")
def pannuke(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from histostain.datasets.pannuke import prepare_pannuke
    from histostain.synth import write_dataset

    root = tmp_path_factory.mktemp("pannuke")
    write_dataset("pannuke", root / "raw", 6, size=64, seed=0)
    prepare_pannuke(root / "raw", root / "prepared")
    return root / "prepared"


def test_instance_says_which_split_it_scored(pannuke: Path, run_cli: Runner) -> None:
    code, stdout, err = run_cli(["--quiet", "evaluate", "instance", str(pannuke), str(pannuke)])
    assert code == 0, err
    assert _title_lines(stdout)[0] == "Instance segmentation (hovernet) (split test)"
    code, stdout, _ = run_cli(["--quiet", "evaluate", "instance", str(pannuke), str(pannuke), "--json"])
    assert json.loads(stdout)["meta"]["split"] == "test"
    code, stdout, err = run_cli(
        ["--quiet", "evaluate", "instance", str(pannuke), str(pannuke), "--protocol", "pannuke", "--json"]
    )
    assert code == 0, err
    assert json.loads(stdout)["meta"]["split"] == "test"


def test_instance_split_all_pools_with_hovernet_and_is_refused_by_the_pannuke_protocol(
    pannuke: Path, run_cli: Runner
) -> None:
    args = ["--quiet", "evaluate", "instance", str(pannuke), str(pannuke), "--split", "all"]
    code, stdout, err = run_cli([*args, "--json"])
    assert code == 0, err
    payload = json.loads(stdout)
    assert payload["meta"]["split"] == "all" and payload["meta"]["splits"] == ["train", "val", "test"]
    assert payload["summary"]["images"] == sum(json.loads((pannuke / "manifest.json").read_text())["splits"].values())
    code, stdout, err = run_cli([*args, "--protocol", "pannuke"])
    assert code == 2 and stdout == ""
    assert "Error: --split all: the PanNuke protocol scores one split at a time" in err
    assert len([line for line in err.splitlines() if line.strip()]) == 1


def test_split_for_an_input_that_is_not_prepared_is_refused(tmp_path: Path, run_cli: Runner) -> None:
    """Today `evaluate instance` ignores --split on label folders silently."""
    labels = np.zeros((16, 16), np.int32)
    labels[2:6, 2:6] = 1
    write_label_tiff(tmp_path / "gt" / "x.tif", labels)
    gt = str(tmp_path / "gt")
    code, stdout, err = run_cli(["--quiet", "evaluate", "instance", gt, gt, "--split", "test"])
    assert code == 2 and stdout == ""
    assert f"Error: --split test applies to a prepared dataset folder (with manifest.json); {gt} is not one" in err
