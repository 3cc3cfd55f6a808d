"""`histostain translate` on whole slides: OME-TIFF outputs, options, one-line errors, kill -9 and resume."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from histostain.io.images import read_image, write_image
from histostain.io.slides import open_slide
from histostain.translation.compat import save_generator
from histostain.translation.cyclegan import ResnetGenerator, init_weights
from tests.io.slides_fixtures import make_mosaic, write_svs

CliRunner = Callable[[list[str]], tuple[int, str, str]]  # the shared ``run_cli`` fixture (tests/conftest.py)
GLOBAL = ["--quiet", "--device", "cpu", "--precision", "fp32"]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("slides")
    torch.manual_seed(0)
    weights = folder / "g.pt"
    save_generator(weights, init_weights(ResnetGenerator(ngf=2, n_blocks=1)), direction="ihc2he")
    mosaic, _ = make_mosaic(3, 4)  # 1024 x 768 px at 0.25 um/px
    return {"weights": weights, "slide": write_svs(folder / "small.svs", mosaic)}


def _args(files: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return [*GLOBAL, "translate", str(files["slide"]), "-w", str(files["weights"]), "--direction", "ihc2he"] + [
        "-o",
        str(out),
        *extra,
    ]


def _one_line_error(code: int, stdout: str, err: str) -> str:
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "Traceback" not in err, err
    return lines[0]


def test_slide_becomes_a_pyramidal_ome_tiff_with_a_summary_row(
    files: dict[str, Path], tmp_path: Path, run_cli: CliRunner
) -> None:
    out = tmp_path / "out"
    code, stdout, err = run_cli(_args(files, out, "--roi", "100,50,600,500", "--chunk-size", "256"))
    assert code == 0, err
    assert "slide small.svs" in stdout and "600 x 500 px" in stdout and "small.ome.tif" in stdout
    assert sorted(p.name for p in out.iterdir()) == ["small.ome.tif"]  # work folder removed, no batch record
    slide = open_slide(out / "small.ome.tif")
    assert slide.format == "ome" and slide.levels == [(500, 600)] and slide.mpp == pytest.approx(0.25)
    slide.close()
    with tifffile.TiffFile(out / "small.ome.tif") as tif:
        assert tif.is_ome and tif.pages.first.compression == tifffile.COMPRESSION.JPEG
    code, stdout, err = run_cli([*_args(files, out, "--roi", "100,50,600,500", "--chunk-size", "256"), "--json"])
    report = json.loads(stdout)  # re-run: the finished output is skipped
    assert code == 0 and report["skipped"] == 1 and report["slides"][0]["status"] == "skipped"


def test_a_run_mixing_a_slide_and_images(files: dict[str, Path], tmp_path: Path, run_cli: CliRunner) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "small.svs").symlink_to(files["slide"])
    write_image(inputs / "tile.png", np.random.default_rng(0).integers(0, 256, (40, 36, 3), dtype=np.uint8))
    out = tmp_path / "out"
    args = [*GLOBAL, "translate", str(inputs), "-w", str(files["weights"]), "--direction", "ihc2he", "-o", str(out)]
    code, stdout, err = run_cli([*args, "--roi", "0,0,300,200", "--compression", "zlib", "--json"])
    assert code == 0, err
    report = json.loads(stdout)
    assert report["inputs"] == 2 and report["translated"] == 2 and len(report["slides"]) == 1
    slide = report["slides"][0]
    assert slide["size"] == [300, 200] and slide["chunks"] == 1 and slide["megapixels_per_second"] > 0
    assert read_image(out / "tile.png").shape == (40, 36, 3)
    assert (out / "small.ome.tif").is_file() and (out / "translate.json").is_file()


def test_tissue_mask_png_and_none(files: dict[str, Path], tmp_path: Path, run_cli: CliRunner) -> None:
    mask = np.zeros((48, 64, 3), dtype=np.uint8)
    mask[:24] = 255  # the top half is tissue
    write_image(tmp_path / "mask.png", mask)
    code, stdout, err = run_cli(
        [*_args(files, tmp_path / "a", "--tissue-mask", str(tmp_path / "mask.png"), "--chunk-size", "384")]
        + ["--compression", "zlib", "--json"]
    )
    assert code == 0, err
    slide = json.loads(stdout)["slides"][0]
    assert slide["glass"] == 3 and slide["chunks"] == 6  # the bottom row of 3 chunks
    with tifffile.TiffFile(tmp_path / "a" / "small.ome.tif") as tif:
        pixels = tif.series[0].levels[0].asarray()
    with open_slide(files["slide"]) as slide:
        source = slide.read_region(0, 0, *slide.dimensions[::-1])
    assert np.array_equal(pixels[384:], source[384:]) and not np.array_equal(pixels[:384], source[:384])
    code, stdout, err = run_cli(
        [*_args(files, tmp_path / "b", "--tissue-mask", "none", "--chunk-size", "384"), "--json"]
    )
    assert code == 0 and json.loads(stdout)["slides"][0]["glass"] == 0


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--roi", "10,10,0,5"], "--roi 10,10,0,5: expected x,y,width,height"),
        (["--roi", "a,b"], "--roi a,b: expected"),
        (["--roi", "5000,0,10,10"], "starts outside the slide small.svs"),
        (["--tissue-mask", "missing.png"], "--tissue-mask missing.png: no such file"),
        (["--compression", "lzw"], "--compression lzw: unknown"),
        (["--chunk-size", "10"], "--chunk-size 10: must be at least 64"),
        (["--mpp", "-1"], "--mpp -1.0: must be a positive number"),
    ],
)
def test_bad_slide_options_are_one_line_errors(
    files: dict[str, Path], tmp_path: Path, run_cli: CliRunner, extra: list[str], expected: str
) -> None:
    line = _one_line_error(*run_cli(_args(files, tmp_path / "out", *extra)))
    assert expected in line, line
    assert not (tmp_path / "out" / "small.ome.tif").exists()


def test_a_mask_of_other_proportions_is_a_one_line_error(
    files: dict[str, Path], tmp_path: Path, run_cli: CliRunner
) -> None:
    write_image(tmp_path / "square.png", np.full((50, 50, 3), 255, dtype=np.uint8))
    line = _one_line_error(*run_cli(_args(files, tmp_path / "out", "--tissue-mask", str(tmp_path / "square.png"))))
    assert "aspect ratios differ" in line


def test_help_names_the_slide_options_and_their_defaults(run_cli: CliRunner) -> None:
    from histostain.cli.translate import SLIDE_CHUNK, SLIDE_COMPRESSION
    from histostain.io.ome_writer import DEFAULT_COMPRESSION
    from histostain.segmentation.chunks import DEFAULT_CHUNK

    assert (SLIDE_CHUNK, SLIDE_COMPRESSION) == (DEFAULT_CHUNK, DEFAULT_COMPRESSION)
    code, stdout, _ = run_cli(["translate", "--help"])
    assert code == 0
    text = " ".join(stdout.replace("│", " ").split())
    for option in ("--roi", "--tissue-mask", "--chunk-size", "--mpp", "--compression"):
        assert option in text
    assert text.count("Slides only") >= 4 and "[default: 2048]" in text and "[default: jpeg]" in text


def _records(done: Path) -> list[Path]:
    """The finished chunks' records (not the temporary file of one being written: those start with a dot)."""
    return [p for p in done.iterdir() if p.suffix == ".json" and not p.name.startswith(".")]


def _cli_command(files: dict[str, Path], out: Path) -> list[str]:
    return [sys.executable, "-m", "histostain", *_args(files, out, "--chunk-size", "128", "--tissue-mask", "none")]


@pytest.mark.slow
def test_kill_9_mid_run_then_rerun_gives_byte_identical_output(
    files: dict[str, Path], tmp_path: Path, run_cli: CliRunner
) -> None:
    env = {**os.environ, "HISTOSTAIN_NUM_THREADS": "1"}  # the same arithmetic as this (single-thread) process
    out = tmp_path / "killed"
    done = out / "small.partial" / "done"
    process = subprocess.Popen(_cli_command(files, out), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline and process.poll() is None:
            if done.is_dir() and len(_records(done)) >= 3:
                break
            time.sleep(0.01)
        assert process.poll() is None, f"the run ended before it could be killed: {process.stderr.read()!r}"
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait(timeout=30)
        assert process.stderr is not None
        process.stderr.close()
    assert process.returncode == -signal.SIGKILL
    finished = len(_records(done))
    assert 3 <= finished < 48 and not (out / "small.ome.tif").exists()

    code, stdout, err = run_cli([*_cli_command(files, out)[3:], "--json"])  # the re-run, in this process
    assert code == 0, err
    slide = json.loads(stdout)["slides"][0]
    assert slide["resumed"] >= finished and slide["resumed"] + slide["done"] == slide["chunks"] == 48

    straight = tmp_path / "straight"
    code, _, err = run_cli(_cli_command(files, straight)[3:])
    assert code == 0, err
    assert _sha(out / "small.ome.tif") == _sha(straight / "small.ome.tif")
    assert sorted(p.name for p in out.iterdir()) == ["small.ome.tif"]


def test_resuming_with_other_settings_is_refused_with_a_hint(
    files: dict[str, Path], tmp_path: Path, run_cli: CliRunner
) -> None:
    out = tmp_path / "out"
    work = out / "small.partial"
    (work / "done").mkdir(parents=True)
    (work / "plan.json").write_text(json.dumps({"settings": {"chunk": 512, "tile": 512}}))
    line = _one_line_error(*run_cli(_args(files, out, "--chunk-size", "256", "--tile", "256")))
    assert "other settings (chunk 512 -> 256; tile 512 -> 256)" in line and "--overwrite" in line
    code, _, err = run_cli(_args(files, out, "--chunk-size", "256", "--roi", "0,0,200,200", "--overwrite"))
    assert code == 0, err
    assert not work.exists()
