"""`histostain train cyclegan` end to end through the real entry point, on a tiny prepared BCI set."""

from __future__ import annotations

import csv
import json
import tomllib
from pathlib import Path

import pytest
import torch

from histostain.cli import main
from histostain.datasets.bci import prepare_bci
from histostain.io.images import read_image
from histostain.runtime.checkpoint import load_histostain_checkpoint
from histostain.synth import write_dataset

TINY = ["--ngf", "4", "--ndf", "4", "--n-blocks", "1", "--crop", "32", "--num-workers", "0"]


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch: pytest.MonkeyPatch):
    threads = torch.get_num_threads()
    monkeypatch.setenv("HISTOSTAIN_NUM_THREADS", "1")  # the DeviceManager applies it
    monkeypatch.setenv("HISTOSTAIN_DEVICE", "cpu")
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bci")
    write_dataset("bci", root / "raw", n=6, size=48, seed=1)
    prepare_bci(root / "raw", root / "prepared", patch=48, size=0, val_fraction=0.34, seed=0)
    return root / "prepared"


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        main(["--quiet", *args])
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_train_cyclegan_end_to_end(tmp_path: Path, prepared: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runs = tmp_path / "runs"
    args = ["train", "cyclegan", str(prepared), "--name", "smoke", "--runs-dir", str(runs), *TINY]
    code, out, err = run(
        [*args, "--max-steps", "2", "--sample-every", "1", "--log-every", "1", "--direction", "he2ihc"], capsys
    )
    assert code == 0, err
    assert "max_steps" in out and "he2ihc (A = HE, B = IHC)" in out and "last checkpoint" in out
    folder = runs / "smoke"
    with (folder / "config.toml").open("rb") as handle:
        config = tomllib.load(handle)
    assert (config["ngf"], config["crop"], config["direction"], config["max_steps"]) == (4, 32, "he2ihc", 2)
    assert config["lambda_a"] == config["lambda_b"] == 10.0 and config["pool_size"] == 50  # reference defaults
    command = config["run"]["command"]
    assert command[:5] == ["histostain", "train", "cyclegan", str(prepared), "--name"]
    assert "--max-steps" in command and config["run"]["domains"] == {"A": "HE", "B": "IHC"}
    assert config["run"]["histostain_version"] and config["run"]["world_size"] == 1
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
    code, out, err = run([*args[:7], "--resume", "--max-steps", "3", "--json"], capsys)
    assert code == 0, err
    summary = json.loads(out)
    assert summary["status"] == "max_steps" and summary["step"] == 3 and summary["config"]["ngf"] == 4
    with (folder / "metrics.csv").open() as handle:
        assert [int(row["step"]) for row in csv.DictReader(handle)] == [1, 2, 3]

    # a second run under the same name is refused, so is an architecture change on resume
    code, out, err = run([*args, "--max-steps", "1"], capsys)
    assert code == 2 and "already exists" in err and "--resume" in err
    code, out, err = run([*args[:7], "--resume", "--ngf", "8"], capsys)
    assert code == 2 and "cannot change ngf" in err


def test_config_file_and_flag_precedence(tmp_path: Path, prepared: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "cfg.toml"
    config.write_text("ngf = 8\nndf = 4\nn_blocks = 1\ncrop = 32\nlambda_identity = 0.25\nnum_workers = 0\n")
    args = ["train", "cyclegan", str(prepared), "--name", "cfg", "--runs-dir", str(tmp_path)]
    code, out, err = run(
        [*args, "--config", str(config), "--ngf", "4", "--lambda-cycle", "5", "--max-steps", "1"], capsys
    )
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
    tmp_path: Path, prepared: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    code, out, err = run(
        ["train", "cyclegan", str(prepared), "--name", "bad", "--runs-dir", str(tmp_path), *extra], capsys
    )
    assert code == 2 and out == "" and message in err
    assert "Traceback" not in err and not (tmp_path / "bad").exists()


def test_missing_prepared_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(
        ["train", "cyclegan", str(tmp_path / "nope"), "--name", "x", "--runs-dir", str(tmp_path)], capsys
    )
    assert code == 2 and "nope" in err and not (tmp_path / "x").exists()


def test_val_fid_needs_weights_before_training(
    tmp_path: Path, prepared: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HISTOSTAIN_HOME", str(tmp_path / "home"))
    args = ["train", "cyclegan", str(prepared), "--name", "fid", "--runs-dir", str(tmp_path / "runs"), *TINY]
    code, out, err = run([*args, "--max-steps", "1", "--val-fid"], capsys)
    assert code == 2 and "pt_inception-2015-12-05-6726825d.pth" in err
    assert not (tmp_path / "runs" / "fid").exists()  # refused before anything was written


def test_val_fid_is_logged_with_psnr_and_ssim(
    tmp_path: Path, prepared: Path, capsys: pytest.CaptureFixture[str], fid_weights: Path
) -> None:
    weights = fid_weights
    runs = tmp_path / "runs"
    args = ["train", "cyclegan", str(prepared), "--name", "fid", "--runs-dir", str(runs), *TINY]
    extra = ["--epochs", "1", "--epochs-decay", "0", "--val-every", "1", "--val-fid", "--fid-weights", str(weights)]
    code, out, err = run([*args, *extra, "--log-every", "1"], capsys)
    assert code == 0, err
    with (runs / "fid" / "metrics.csv").open() as handle:
        rows = [row for row in csv.DictReader(handle) if row.get("val_fid")]
    assert rows, "no validation row with val_fid"
    assert float(rows[-1]["val_fid"]) >= 0 and float(rows[-1]["val_ssim"]) <= 1
