"""`histostain segment` on whole slides: outputs, mixed inputs, errors, kill -9 and resume, the packaged HoVer-Net."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial import cKDTree

from histostain.io.images import write_image
from tests.conftest import CliRunner
from tests.io.slides_fixtures import make_mosaic, write_svs

ROWS, COLS = 3, 4
OUTPUTS = ("mosaic.geojson.gz", "mosaic.nuclei.csv.gz", "mosaic_overview.png", "mosaic.summary.jsonl")


@pytest.fixture(scope="module")
def slide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    mosaic, _ = make_mosaic(ROWS, COLS)
    return write_svs(tmp_path_factory.mktemp("slide") / "mosaic.svs", mosaic, mpp=0.5)


def test_segment_a_slide_and_an_image_in_one_run(run_cli: CliRunner, slide: Path, tmp_path: Path) -> None:
    mosaic, _ = make_mosaic(ROWS, COLS)
    write_image(tmp_path / "tile.png", np.ascontiguousarray(mosaic[256:512, 256:512]))
    out = tmp_path / "out"
    args = ["-q", "segment", str(slide), str(tmp_path / "tile.png"), "-o", str(out), "--mpp", "0.5"]
    code, stdout, stderr = run_cli([*args, "--chunk-size", "512", "--json"])
    assert code == 0, stderr
    report = json.loads(stdout)
    assert report["inputs"] == 2 and report["segmented"] == 2
    (slide_report,) = report["slides"]
    assert slide_report["size"] == [COLS * 256, ROWS * 256] and slide_report["nuclei"] > 100
    for name in OUTPUTS:
        assert (out / name).is_file(), name
    assert (out / "tile.geojson").is_file()  # the image got the image outputs
    summary = (out / "summary.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in summary[1:]] == ["mosaic", "tile"]
    assert report["nuclei"] == slide_report["nuclei"] + int(summary[2].split(",")[1])
    # the same command again: both are done and skipped
    code, stdout, _ = run_cli([*args, "--chunk-size", "512", "--json"])
    assert code == 0 and json.loads(stdout)["skipped"] == 2


def test_a_slide_in_a_sub_folder_keeps_it_in_the_outputs(run_cli: CliRunner, slide: Path, tmp_path: Path) -> None:
    folder, out = tmp_path / "in", tmp_path / "out"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / slide.name).symlink_to(slide)
    args = ["-q", "segment", str(folder), "-o", str(out), "-r", "--mpp", "0.5", "--chunk-size", "512", "--json"]
    code, stdout, stderr = run_cli(args)
    assert code == 0, stderr
    report = json.loads(stdout)
    assert report["inputs"] == report["segmented"] == 1
    for name in OUTPUTS:
        assert (out / "sub" / name).is_file(), name
    assert not (out / "sub" / "mosaic.partial").exists()
    summary = (out / "summary.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in summary[1:]] == ["sub/mosaic"]
    assert int(summary[1].split(",")[1]) == report["nuclei"] > 100


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--roi", "1,2,3"], "--roi 1,2,3: expected x,y,width,height"),
        (["--roi", "9000,0,10,10"], "starts outside the slide"),
        (["--tissue-mask", "missing.png"], "--tissue-mask missing.png: no such file"),
        (["--formats", "tif"], "none of them is a slide output"),
    ],
)
def test_bad_slide_options_give_one_line_and_exit_2(
    run_cli: CliRunner, slide: Path, tmp_path: Path, extra: list[str], message: str
) -> None:
    code, _, stderr = run_cli(["-q", "segment", str(slide), "-o", str(tmp_path / "out"), *extra])
    assert code == 2
    assert message in stderr
    assert len([line for line in stderr.splitlines() if line.startswith("Error")]) == 1


def test_roi_on_images_only_is_refused(run_cli: CliRunner, tmp_path: Path) -> None:
    write_image(tmp_path / "tile.png", np.full((64, 64, 3), 200, np.uint8))
    code, _, stderr = run_cli(
        ["-q", "segment", str(tmp_path / "tile.png"), "-o", str(tmp_path / "o"), "--roi", "0,0,8,8"]
    )
    assert code == 2 and "apply to whole slides only" in stderr


def _command(slide: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "histostain", "-q", "segment", str(slide), "-o", str(out), "--chunk-size", "128"]


def test_kill_9_mid_run_then_rerun_gives_the_same_outputs(slide: Path, tmp_path: Path) -> None:
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    subprocess.run(_command(slide, straight), check=True, capture_output=True, timeout=300)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(_command(slide, killed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    work = killed / "mosaic.partial"
    deadline = time.monotonic() + 240
    try:
        while len(list(work.glob("chunk-*.npz"))) < 4:
            assert process.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL
    recorded = len(list(work.glob("chunk-*.npz")))
    assert not (killed / "mosaic.summary.jsonl").exists()
    rerun = subprocess.run(
        [*_command(slide, killed), "--json"], check=True, capture_output=True, text=True, timeout=300
    )
    (report,) = json.loads(rerun.stdout)["slides"]
    assert report["resumed"] == recorded >= 4 and report["segmented"] + report["resumed"] + report["glass"] == 48
    for name in OUTPUTS:
        assert (killed / name).read_bytes() == (straight / name).read_bytes(), name
    assert not work.exists()


def test_packaged_hovernet_on_a_slide_equals_the_in_memory_run(slide: Path, tmp_path: Path, run_cli: CliRunner) -> None:
    """hovernet-demo (0.25 um/px) on the slide at its own 0.25 um/px, against the same pixels in memory."""
    from histostain.io.slides import open_slide
    from histostain.runtime.device import DeviceManager
    from histostain.segmentation.segment import build_segmenter

    mosaic, _ = make_mosaic(ROWS, COLS)
    fine = write_svs(tmp_path / "fine.svs", mosaic, mpp=0.25)
    out = tmp_path / "out"
    args = ["-q", "segment", str(fine), "-o", str(out), "-w", "hovernet-demo", "--chunk-size", "512", "--json"]
    code, stdout, stderr = run_cli(args)
    assert code == 0, stderr
    with gzip.open(out / "fine.geojson.gz", "rt") as handle:
        features = json.load(handle)["features"]
    classes = {f["properties"]["classification"]["name"] for f in features if "classification" in f["properties"]}
    assert classes <= {"Neoplastic", "Inflammatory", "Connective", "Dead", "Epithelial"} and classes
    found = np.array([[m["value"] for m in f["properties"]["measurements"] if m["name"] in ("centroid_x", "centroid_y")]
                      for f in features])  # fmt: skip
    device = DeviceManager.create(device="cpu", precision="fp32")
    segmenter = build_segmenter("hovernet", weights="hovernet-demo", device=device, chunk=512, compile="off")
    with open_slide(fine) as handle:
        pixels = handle.read_region(0, 0, COLS * 256, ROWS * 256)
    expected = segmenter.segment(pixels).centroids
    assert len(expected) > 100
    for a, b in ((found, expected), (expected, found)):
        distances, _ = cKDTree(b).query(a)
        assert np.mean(distances <= 1.0) >= 0.995


def test_the_real_slide_is_segmented_in_slide_coordinates(run_cli: CliRunner, tmp_path: Path) -> None:
    """CMU-1-Small-Region.svs (real Aperio H&E, 0.499 um/px): a region of it, nuclei inside the region only,
    with sizes of real nuclei."""
    real = Path(__file__).resolve().parents[1] / "data" / "slides" / "CMU-1-Small-Region.svs"
    out = tmp_path / "out"
    code, stdout, stderr = run_cli(["-q", "segment", str(real), "-o", str(out), "--roi", "1300,1350,600,500", "--json"])
    assert code == 0, stderr
    (report,) = json.loads(stdout)["slides"]
    assert report["mpp"] == pytest.approx(0.499) and report["level"] == 0  # within 5 % of 0.5: its own pixels
    with gzip.open(out / "CMU-1-Small-Region.nuclei.csv.gz", "rt") as handle:
        import csv

        rows = list(csv.DictReader(handle))
    assert len(rows) > 100
    xy = np.array([[float(r["x"]), float(r["y"])] for r in rows])
    assert (xy[:, 0] >= 1300).all() and (xy[:, 0] < 1900).all() and (xy[:, 1] >= 1350).all() and (xy[:, 1] < 1850).all()
    area = np.median([float(r["area_um2"]) for r in rows])
    assert 5 <= area <= 100  # um^2: nuclei, not tissue fragments or specks
