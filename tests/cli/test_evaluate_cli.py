"""`histostain evaluate` end to end through the real entry point: tables, JSON, --out files, one-line errors,
the provenance record, and what `--help` imports."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from skimage.metrics import structural_similarity

from histostain import __version__
from histostain.io.images import write_image, write_label_tiff

Runner = Callable[[list[str]], tuple[int, str, str]]  # the run_cli fixture of tests/conftest.py


def write_points(folder: Path, name: str, lines: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.txt").write_text("".join(f"{line}\n" for line in lines))


def test_celldet_hand_computed_json_and_out_files(tmp_path: Path, run_cli: Runner) -> None:
    # image a: 3 GT, 2 predictions within 12 px, 1 prediction 30 px away -> TP 2, FP 1, FN 1
    write_points(tmp_path / "gt", "a", ["10 10 1", "50 50 1", "100 100 0"])
    write_points(tmp_path / "pred", "a", ["12 10 1", "50 60 0", "130 100 1"])
    # image b: 1 GT, 1 prediction exactly 12 px away (kept: the radius is inclusive)
    write_points(tmp_path / "gt", "b", ["20 20 0"])
    write_points(tmp_path / "pred", "b", ["32 20 0"])
    out = tmp_path / "res"  # --out is a folder: res/celldet.json and res/celldet_per_image.csv
    code, stdout, _ = run_cli(
        ["--quiet", "evaluate", "celldet", str(tmp_path / "gt"), str(tmp_path / "pred"), "--out", str(out), "--json"]
    )
    assert code == 0
    summary = json.loads(stdout)["summary"]
    tp, fp, fn = 3, 1, 1
    assert (summary["tp"], summary["fp"], summary["fn"]) == (tp, fp, fn)
    assert summary["f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert json.loads((out / "celldet.json").read_text())["summary"] == summary
    per_image = (out / "celldet_per_image.csv").read_text().splitlines()
    assert len(per_image) == 3  # header + two images


def test_celldet_option_errors_are_one_line(tmp_path: Path, run_cli: Runner) -> None:
    write_points(tmp_path / "gt", "a", ["1 1 0"])
    for extra, fragment in ((["--radius-um", "3"], "--radius-um and --mpp"), (["--class-map", "0-3"], "--class-map")):
        code, out, err = run_cli(["--quiet", "evaluate", "celldet", str(tmp_path / "gt"), str(tmp_path / "gt"), *extra])
        assert code == 2 and out == "" and fragment in err
        assert len([line for line in err.splitlines() if line.strip()]) == 1


def test_paired_matches_skimage(tmp_path: Path, run_cli: Runner) -> None:
    rng = np.random.default_rng(0)
    real = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
    fake = np.clip(real.astype(int) + rng.integers(-20, 21, real.shape), 0, 255).astype(np.uint8)
    write_image(tmp_path / "real" / "t1.png", real)
    write_image(tmp_path / "fake" / "t1.png", fake)
    code, out, _ = run_cli(
        [
            "--quiet",
            "evaluate",
            "paired",
            str(tmp_path / "real"),
            str(tmp_path / "fake"),
            "--metrics",
            "psnr,ssim",
            "--json",
        ]
    )
    assert code == 0
    summary = json.loads(out)["summary"]
    mse = np.mean((real.astype(float) - fake.astype(float)) ** 2)
    assert summary["psnr"] == pytest.approx(10 * np.log10(255**2 / mse))
    expected_ssim = structural_similarity(real, fake, channel_axis=-1, data_range=255)
    assert summary["ssim"] == pytest.approx(expected_ssim)


def test_instance_perfect_prediction_and_table(tmp_path: Path, run_cli: Runner) -> None:
    labels = np.zeros((32, 32), np.int32)
    labels[2:10, 2:10] = 1
    labels[15:25, 12:30] = 7  # non-contiguous ids are fine
    write_label_tiff(tmp_path / "gt" / "x.tif", labels)
    write_label_tiff(tmp_path / "pred" / "x.tif", labels)
    code, out, _ = run_cli(["--quiet", "evaluate", "instance", str(tmp_path / "gt"), str(tmp_path / "pred")])
    assert code == 0
    assert "PQ" in out and "AJI" in out
    code, out, _ = run_cli(["--quiet", "evaluate", "instance", str(tmp_path / "gt"), str(tmp_path / "pred"), "--json"])
    summary = json.loads(out)["summary"]
    assert summary["Dice"] == pytest.approx(1.0) and summary["AJI"] == pytest.approx(1.0)
    assert summary["PQ"] == pytest.approx(1.0, abs=1e-5)


def test_fid_without_weights_says_where_to_get_them(
    tmp_path: Path, run_cli: Runner, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HISTOSTAIN_HOME", str(tmp_path / "home"))
    write_image(tmp_path / "a" / "x.png", np.zeros((8, 8, 3), np.uint8))
    write_image(tmp_path / "a" / "y.png", np.ones((8, 8, 3), np.uint8))
    code, out, err = run_cli(["--quiet", "evaluate", "fid", str(tmp_path / "a"), str(tmp_path / "a")])
    assert code == 2 and out == ""
    assert "pt_inception-2015-12-05-6726825d.pth" in err and "https://" in err
    assert str(tmp_path / "home" / "weights") in err


@pytest.mark.slow
def test_fid_and_kid_with_weights_from_home(
    tmp_path: Path, run_cli: Runner, monkeypatch: pytest.MonkeyPatch, install_fid_weights
) -> None:
    install_fid_weights(tmp_path / "home" / "weights")
    monkeypatch.setenv("HISTOSTAIN_HOME", str(tmp_path / "home"))
    rng = np.random.default_rng(1)
    for i in range(3):
        write_image(tmp_path / "real" / f"{i}.png", rng.integers(0, 256, (48, 48, 3), dtype=np.uint8))
    real = str(tmp_path / "real")
    code, out, err = run_cli(["--quiet", "--device", "cpu", "evaluate", "fid", real, real, "--json"])
    assert code == 0, err
    payload = json.loads(out)
    assert abs(payload["summary"]["fid"]) < 1e-3  # identical folders
    assert any("2048" in warning for warning in payload["warnings"])
    # --num-workers not given: the service's policy decides (0 on a CPU) and both records say so
    assert payload["meta"]["num_workers"] == 0
    assert payload["provenance"]["options"]["num_workers"] == 0
    code, out, err = run_cli(
        [
            "--quiet",
            "evaluate",
            "kid",
            str(tmp_path / "real"),
            str(tmp_path / "real"),
            "--num-workers",
            "0",
            "--subsets",
            "5",
        ]
    )
    assert code == 0, err
    assert "kid" in out


def test_json_records_the_command_as_typed_and_the_resolved_options(tmp_path: Path, run_cli: Runner) -> None:
    write_points(tmp_path / "gt", "a", ["10 10", "50 50"])
    write_points(tmp_path / "pred", "a", ["11 10"])
    out = str(tmp_path / "m")
    argv = ["--quiet", "evaluate", "celldet", str(tmp_path / "gt"), str(tmp_path / "pred"), "--out", out]
    code, _, err = run_cli(argv)
    assert code == 0, err
    record = json.loads((tmp_path / "m" / "celldet.json").read_text())["provenance"]
    assert record["command"] == ["histostain", *argv]  # global options included, in the order typed
    assert record["histostain_version"] == __version__
    options = record["options"]
    assert options["radius"] == 12.0 and options["compat"] == "histostain"  # defaults not typed are resolved too
    assert options["true"] == str(tmp_path / "gt") and options["out"] == out
    assert options["threshold"] == [] and options["split"] is None
    assert options["settings"]["device"] == "auto"
    assert "as_json" not in options  # how a result is shown is not part of how it was made


def test_json_stdout_carries_the_same_provenance(tmp_path: Path, run_cli: Runner) -> None:
    labels = np.zeros((16, 16), np.int32)
    labels[2:6, 2:6] = 1
    write_label_tiff(tmp_path / "gt" / "x.tif", labels)
    write_label_tiff(tmp_path / "pred" / "x.tif", labels)
    argv = ["--quiet", "evaluate", "instance", str(tmp_path / "gt"), str(tmp_path / "pred"), "--match-iou", "0.3"]
    code, out, err = run_cli([*argv, "--json"])
    assert code == 0, err
    record = json.loads(out)["provenance"]
    assert record["command"] == ["histostain", *argv, "--json"]
    assert record["options"]["match_iou"] == 0.3 and record["options"]["protocol"] == "hovernet"


@pytest.mark.slow
def test_evaluate_help_imports_no_numpy_scipy_or_torch() -> None:
    """Defaults come from histostain.metrics.defaults, which imports nothing: --help stays instant."""
    code = (
        "import sys\n"
        "from histostain.cli import main\n"
        "for command in ('fid', 'kid', 'celldet', 'instance', 'paired'):\n"
        "    try:\n        main(['evaluate', command, '--help'])\n    except SystemExit:\n        pass\n"
        "print('HEAVY', sorted(m for m in ('torch', 'scipy', 'numpy') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "HEAVY []" in result.stdout
    assert "[default: 12.0]" in result.stdout  # celldet's radius, from DEFAULT_RADIUS
