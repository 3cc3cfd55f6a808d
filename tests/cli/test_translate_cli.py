"""`histostain translate` through the real entry point: outputs, record, resume, sharding, bad inputs."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from histostain.cli import main
from histostain.io.images import read_image, write_image
from histostain.translation.compat import save_generator
from histostain.translation.cyclegan import ResnetGenerator, init_weights


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        main(["--quiet", "--device", "cpu", "--precision", "fp32", *args])
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture()
def weights(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    path = tmp_path / "weights" / "g.pt"
    save_generator(path, init_weights(ResnetGenerator(ngf=2, n_blocks=1)), direction="ihc2he")
    return path


def _tiles(folder: Path, sizes: list[tuple[int, int]], prefix: str = "t") -> list[Path]:
    rng = np.random.default_rng(len(sizes))
    paths = []
    for i, (h, w) in enumerate(sizes):
        path = folder / f"{prefix}{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_image(path, rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        paths.append(path)
    return paths


def test_translate_folder_recursive_writes_same_size_outputs_and_record(
    tmp_path: Path, weights: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _tiles(tmp_path / "in", [(40, 36), (21, 33)])
    _tiles(tmp_path / "in" / "sub", [(16, 16)], prefix="s")
    out = tmp_path / "out"
    code, stdout, err = run(
        ["translate", str(tmp_path / "in"), "-w", str(weights), "--direction", "ihc2he", "--out", str(out), "-r"],
        capsys,
    )
    assert code == 0, err
    assert "translated" in stdout and "images/s" in stdout
    assert read_image(out / "t0.png").shape == (40, 36, 3)
    assert read_image(out / "t1.png").shape == (21, 33, 3)
    assert read_image(out / "sub" / "s0.png").shape == (16, 16, 3)
    record = json.loads((out / "translate.json").read_text())
    assert record["weights_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert record["weights_format"] == "histostain" and record["direction"] == "ihc2he"
    assert (record["tile"], record["overlap"]) == (512, 64)
    assert record["command"][:2] == ["histostain", "translate"] and "--recursive" in record["command"]
    assert record["result"]["translated"] == 3
    assert record["histostain_version"]


def test_second_run_skips_and_overwrite_redoes(
    tmp_path: Path, weights: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _tiles(tmp_path / "in", [(24, 24), (24, 24), (24, 28)])
    args = ["translate", str(tmp_path / "in"), "-w", str(weights), "--direction", "ihc2he"]
    args += ["--out", str(tmp_path / "o")]
    code, stdout, _ = run([*args, "--json"], capsys)
    assert code == 0 and json.loads(stdout)["translated"] == 3
    code, stdout, _ = run([*args, "--json"], capsys)
    report = json.loads(stdout)
    assert code == 0 and (report["translated"], report["skipped"]) == (0, 3)
    code, stdout, _ = run([*args, "--json", "--overwrite", "--format", "tif"], capsys)
    assert code == 0 and json.loads(stdout)["translated"] == 3
    assert read_image(tmp_path / "o" / "t2.tif").shape == (24, 28, 3)


def test_resume_with_other_weights_is_refused(
    tmp_path: Path, weights: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _tiles(tmp_path / "in", [(16, 16)])
    args = ["translate", str(tmp_path / "in"), "--direction", "ihc2he", "--out", str(tmp_path / "o")]
    assert run([*args, "-w", str(weights)], capsys)[0] == 0
    other = tmp_path / "other.pt"
    save_generator(other, ResnetGenerator(ngf=2, n_blocks=0), direction="ihc2he")
    code, out, err = run([*args, "-w", str(other)], capsys)
    assert code == 2 and "different weights_sha256" in err


def test_two_shards_cover_every_input_exactly_once(
    tmp_path: Path, weights: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _tiles(tmp_path / "in", [(16, 16)] * 7)
    outputs: list[set[str]] = []
    for part in (0, 1):
        out = tmp_path / f"o{part}"
        args = ["translate", str(tmp_path / "in"), "-w", str(weights), "--direction", "ihc2he", "--out", str(out)]
        code, stdout, _ = run([*args, "--num-parts", "2", "--part-id", str(part), "--json"], capsys)
        assert code == 0 and json.loads(stdout)["translated"] in (3, 4)
        assert (out / f"translate.part-{part}-of-2.json").is_file()
        outputs.append({p.name for p in out.glob("*.png")})
    assert outputs[0].isdisjoint(outputs[1])
    assert outputs[0] | outputs[1] == {f"t{i}.png" for i in range(7)}
    code, _, err = run(
        ["translate", str(tmp_path / "in"), "-w", str(weights), "--direction", "ihc2he", "--out", str(tmp_path / "x")]
        + ["--num-parts", "2", "--part-id", "2"],
        capsys,
    )
    assert code == 2 and "part 2 of 2" in err


def test_glob_and_file_inputs(tmp_path: Path, weights: Path, capsys: pytest.CaptureFixture[str]) -> None:
    paths = _tiles(tmp_path / "in", [(16, 16), (20, 20), (24, 24)])
    out = tmp_path / "o"
    pattern = str(tmp_path / "in" / "t[01].png")
    code, stdout, err = run(
        ["translate", pattern, str(paths[2]), "-w", str(weights), "--direction", "ihc2he", "--out", str(out), "--json"],
        capsys,
    )
    assert code == 0, err
    assert sorted(p.name for p in out.glob("*.png")) == ["t0.png", "t1.png", "t2.png"]


def test_corrupt_image_among_many_is_reported_and_others_are_kept(
    tmp_path: Path, weights: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _tiles(tmp_path / "in", [(16, 16), (16, 16)])
    (tmp_path / "in" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    out = tmp_path / "o"
    args = ["translate", str(tmp_path / "in"), "-w", str(weights), "--direction", "ihc2he", "--out", str(out)]
    code, stdout, err = run([*args, "--json"], capsys)
    assert code == 2
    report = json.loads(stdout)
    assert report["translated"] == 2 and len(report["failed"]) == 1 and "broken.png" in report["failed"][0]["path"]
    assert "broken.png" in err and "1 of 3" in err
    assert (out / "t0.png").is_file() and (out / "t1.png").is_file() and not (out / "broken.png").exists()
    assert json.loads((out / "translate.json").read_text())["result"]["failed"][0]["path"].endswith("broken.png")


def test_missing_folder_and_wrong_weights_are_one_line_errors(
    tmp_path: Path, weights: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = str(tmp_path / "o")
    code, stdout, err = run(
        ["translate", str(tmp_path / "nope"), "-w", str(weights), "--direction", "ihc2he", "--out", out], capsys
    )
    assert code == 2 and stdout == "" and "does not exist" in err and "Traceback" not in err
    _tiles(tmp_path / "in", [(16, 16)])
    hovernet = tmp_path / "hovernet.tar"
    torch.save({"desc": {f"conv0.{i}.weight": torch.zeros(1) for i in range(5)}}, hovernet)
    code, _, err = run(
        ["translate", str(tmp_path / "in"), "-w", str(hovernet), "--direction", "ihc2he", "--out", out], capsys
    )
    assert code == 2 and "expected a CycleGAN generator" in err and "HoVer-Net" in err
    code, _, err = run(
        ["translate", str(tmp_path / "in"), "-w", str(weights), "--direction", "sideways", "--out", out], capsys
    )
    assert code == 2 and "unknown direction" in err
    code, _, err = run(
        ["translate", str(tmp_path / "in"), "-w", str(weights), "--direction", "he2ihc", "--out", out], capsys
    )
    assert code == 2 and "ihc2he generator" in err


def test_cli_module_does_not_import_torch() -> None:
    code = "import sys, histostain.cli.translate; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
