"""The celldet tables at an 80-column terminal (issue point 13): nothing wider than 80 characters, no column
header broken over lines, and a legend for the CoNIC error terms; every column stays in the JSON."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

Runner = Callable[[list[str]], tuple[int, str, str]]  # the run_cli fixture of tests/conftest.py


def _write_points(path: Path, xy: np.ndarray, classes: np.ndarray, scores: np.ndarray | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["x,y,type" + (",score" if scores is not None else "")]
    for i, ((x, y), c) in enumerate(zip(xy, classes, strict=True)):
        lines.append(f"{x},{y},{c}" + (f",{scores[i]}" if scores is not None else ""))
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture
def five_classes(tmp_path: Path) -> tuple[str, str]:
    """Two images, 120 nuclei of 5 PanNuke classes; predictions jittered, some reclassified, some missed."""
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        xy = rng.uniform(0, 1000, (60, 2)).round(1)
        classes = rng.integers(1, 6, 60)
        keep = rng.random(60) > 0.1
        pred_classes = np.where(rng.random(60) < 0.2, rng.integers(1, 6, 60), classes)[keep]
        _write_points(tmp_path / "gt" / f"{name}.csv", xy, classes)
        _write_points(tmp_path / "pred" / f"{name}.csv", xy[keep] + 1.5, pred_classes, rng.random(keep.sum()))
    return str(tmp_path / "gt"), str(tmp_path / "pred")


def test_celldet_tables_fit_80_columns_with_a_legend(
    five_classes: tuple[str, str], run_cli: Runner, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    gt, pred = five_classes
    code, stdout, err = run_cli(["--quiet", "evaluate", "celldet", gt, pred, "--threshold", "0.5"])
    assert code == 0, err
    lines = stdout.splitlines()
    too_wide = [line for line in lines if len(line) > 80]
    assert too_wide == []
    headers = [line for line in lines if line.startswith("┃")]
    # each table's header on one line, whole words: no column squeezed until its name wraps
    assert any(all(f" {c} " in h for c in ("n_true", "n_pred", "tp", "precision", "recall", "f1")) for h in headers)
    assert any(all(f" {c} " in h for c in ("fp_dt", "fn_dt", "fp_d", "fn_d")) for h in headers)
    per_class_rows = [line for line in lines if line.startswith("│")]
    assert len(per_class_rows) >= 2 * 5  # one line per class in both per-class tables (no wrapped cells)
    words = " ".join(stdout.split())
    assert "fp_dt: predicted as this class on a true nucleus of another class" in words
    assert "fn_dt: a true nucleus of this class predicted as another class" in words
    assert "fp_d: unmatched predictions of this class" in words and "fn_d: unmatched true nuclei of this class" in words


def test_every_column_stays_in_the_json(five_classes: tuple[str, str], run_cli: Runner) -> None:
    gt, pred = five_classes
    code, stdout, err = run_cli(["--quiet", "evaluate", "celldet", gt, pred, "--threshold", "0.5", "--json"])
    assert code == 0, err
    payload = json.loads(stdout)
    row = payload["tables"]["per_class"][0]
    assert {"class", "tp", "fp_dt", "fn_dt", "fp_d", "fn_d", "precision", "recall", "f1", "n_true", "n_pred"} <= set(
        row
    )
    assert any(key.startswith("f1_class_") for key in payload["tables"]["per_threshold"][0])


def test_class_names_replace_codes_and_still_fit(
    tmp_path: Path, run_cli: Runner, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Prepared EndoNuke ground truth carries class names (stroma, epithelium, other): shown instead of codes."""
    from histostain.datasets.endonuke import prepare_endonuke
    from histostain.synth import write_dataset

    write_dataset("endonuke", tmp_path / "raw", 3, seed=5)
    prepare_endonuke(tmp_path / "raw", tmp_path / "prepared", mpp=2.0, fractions="0,0,1")
    monkeypatch.setenv("COLUMNS", "80")
    labels = str(tmp_path / "prepared" / "test" / "labels")
    code, stdout, err = run_cli(["--quiet", "evaluate", "celldet", str(tmp_path / "prepared"), labels])
    assert code == 0, err
    assert max(len(line) for line in stdout.splitlines()) <= 80
    headers = [line for line in stdout.splitlines() if line.startswith("┃") and " fp_dt " in line]
    assert headers and " name " in headers[0] and " class " not in headers[0]
    assert "stroma" in stdout
