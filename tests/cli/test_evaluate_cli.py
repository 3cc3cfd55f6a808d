"""`histostain evaluate` end to end through the real entry point: tables, JSON, --out files, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from skimage.metrics import structural_similarity

from histostain.cli import main
from histostain.io.images import write_image, write_label_tiff


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        main(["--quiet", *args])
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def write_points(folder: Path, name: str, lines: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.txt").write_text("".join(f"{line}\n" for line in lines))


def test_celldet_hand_computed_json_and_out_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # image a: 3 GT, 2 predictions within 12 px, 1 prediction 30 px away -> TP 2, FP 1, FN 1
    write_points(tmp_path / "gt", "a", ["10 10 1", "50 50 1", "100 100 0"])
    write_points(tmp_path / "pred", "a", ["12 10 1", "50 60 0", "130 100 1"])
    # image b: 1 GT, 1 prediction exactly 12 px away (kept: the radius is inclusive)
    write_points(tmp_path / "gt", "b", ["20 20 0"])
    write_points(tmp_path / "pred", "b", ["32 20 0"])
    out = tmp_path / "res" / "metrics.json"
    code, stdout, _ = run(
        ["evaluate", "celldet", str(tmp_path / "gt"), str(tmp_path / "pred"), "--out", str(out), "--json"], capsys
    )
    assert code == 0
    summary = json.loads(stdout)["summary"]
    tp, fp, fn = 3, 1, 1
    assert (summary["tp"], summary["fp"], summary["fn"]) == (tp, fp, fn)
    assert summary["f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert json.loads(out.read_text())["summary"] == summary
    per_image = (tmp_path / "res" / "metrics_per_image.csv").read_text().splitlines()
    assert len(per_image) == 3  # header + two images


def test_celldet_option_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_points(tmp_path / "gt", "a", ["1 1 0"])
    for extra, fragment in ((["--radius-um", "3"], "--radius-um and --mpp"), (["--class-map", "0-3"], "--class-map")):
        code, out, err = run(["evaluate", "celldet", str(tmp_path / "gt"), str(tmp_path / "gt"), *extra], capsys)
        assert code == 2 and out == "" and fragment in err
        assert len([line for line in err.splitlines() if line.strip()]) == 1


def test_paired_matches_skimage(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(0)
    real = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
    fake = np.clip(real.astype(int) + rng.integers(-20, 21, real.shape), 0, 255).astype(np.uint8)
    write_image(tmp_path / "real" / "t1.png", real)
    write_image(tmp_path / "fake" / "t1.png", fake)
    code, out, _ = run(
        ["evaluate", "paired", str(tmp_path / "real"), str(tmp_path / "fake"), "--metrics", "psnr,ssim", "--json"],
        capsys,
    )
    assert code == 0
    summary = json.loads(out)["summary"]
    mse = np.mean((real.astype(float) - fake.astype(float)) ** 2)
    assert summary["psnr"] == pytest.approx(10 * np.log10(255**2 / mse))
    expected_ssim = structural_similarity(real, fake, channel_axis=-1, data_range=255)
    assert summary["ssim"] == pytest.approx(expected_ssim)


def test_instance_perfect_prediction_and_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    labels = np.zeros((32, 32), np.int32)
    labels[2:10, 2:10] = 1
    labels[15:25, 12:30] = 7  # non-contiguous ids are fine
    write_label_tiff(tmp_path / "gt" / "x.tif", labels)
    write_label_tiff(tmp_path / "pred" / "x.tif", labels)
    code, out, _ = run(["evaluate", "instance", str(tmp_path / "gt"), str(tmp_path / "pred")], capsys)
    assert code == 0
    assert "PQ" in out and "AJI" in out
    code, out, _ = run(["evaluate", "instance", str(tmp_path / "gt"), str(tmp_path / "pred"), "--json"], capsys)
    summary = json.loads(out)["summary"]
    assert summary["Dice"] == pytest.approx(1.0) and summary["AJI"] == pytest.approx(1.0)
    assert summary["PQ"] == pytest.approx(1.0, abs=1e-5)


def test_fid_without_weights_says_where_to_get_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HISTOSTAIN_HOME", str(tmp_path / "home"))
    write_image(tmp_path / "a" / "x.png", np.zeros((8, 8, 3), np.uint8))
    write_image(tmp_path / "a" / "y.png", np.ones((8, 8, 3), np.uint8))
    code, out, err = run(["evaluate", "fid", str(tmp_path / "a"), str(tmp_path / "a")], capsys)
    assert code == 2 and out == ""
    assert "pt_inception-2015-12-05-6726825d.pth" in err and "https://" in err
    assert str(tmp_path / "home" / "weights") in err


def test_fid_and_kid_with_weights_from_home(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, install_fid_weights
) -> None:
    install_fid_weights(tmp_path / "home" / "weights")
    monkeypatch.setenv("HISTOSTAIN_HOME", str(tmp_path / "home"))
    rng = np.random.default_rng(1)
    for i in range(3):
        write_image(tmp_path / "real" / f"{i}.png", rng.integers(0, 256, (48, 48, 3), dtype=np.uint8))
    code, out, err = run(
        ["evaluate", "fid", str(tmp_path / "real"), str(tmp_path / "real"), "--num-workers", "0", "--json"], capsys
    )
    assert code == 0, err
    payload = json.loads(out)
    assert abs(payload["summary"]["fid"]) < 1e-3  # identical folders
    assert any("2048" in warning for warning in payload["warnings"])
    code, out, err = run(
        ["evaluate", "kid", str(tmp_path / "real"), str(tmp_path / "real"), "--num-workers", "0", "--subsets", "5"],
        capsys,
    )
    assert code == 0, err
    assert "kid" in out
