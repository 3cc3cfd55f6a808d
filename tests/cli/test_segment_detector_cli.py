"""`histostain segment --model detector` through the real entry point: points in every format, IHC scoring in
the disks, the run record, and refusals in one line. (The packaged weights on real tissue:
tests/cli/test_detector_packaged.py.)"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from histostain.io.annotations import read_centroids_txt
from histostain.io.annotations.qupath_check import qupath_geojson_problems
from histostain.io.images import write_image
from histostain.runtime.checkpoint import make_checkpoint, save_checkpoint
from histostain.segmentation.detector import DetectorNet
from histostain.synth import generate_tile

CLI = ["--quiet", "--device", "cpu", "--precision", "fp32"]


@pytest.fixture(scope="module")
def tiles(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tiles")
    for seed in range(2):
        write_image(folder / f"ihc{seed}.png", generate_tile(seed, 96).ihc)
    return folder


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained tiny detector whose stored threshold sits just above its flat prior, so it finds points."""
    torch.manual_seed(0)
    net = DetectorNet(width=4, levels=2)
    path = tmp_path_factory.mktemp("w") / "tiny-detector.pt"
    with torch.no_grad():
        prior = torch.sigmoid(net(torch.rand(1, 3, 64, 64))).median().item()
    payload = make_checkpoint(
        "detector",
        net.state_dict(),
        {},
        model_config={"in_channels": 3, "num_classes": 3, "width": 4, "levels": 2},
        class_names={0: "stroma", 1: "epithelium", 2: "other"},
        mpp=0.5,
        threshold=prior,
        nms_kernel=3,
    )
    save_checkpoint(path, payload)
    return path


def test_detector_writes_points_in_every_format(run_cli, tiles: Path, weights: Path, tmp_path: Path) -> None:
    out = tmp_path / "points"
    args = [*CLI, "segment", str(tiles), "-o", str(out), "--model", "detector", "-w", str(weights), "--stain", "ihc"]
    code, stdout, err = run_cli([*args, "--mpp", "0.5", "--json"])
    assert code == 0, err
    report = json.loads(stdout)
    assert report["model"] == "detector" and report["segmented"] == 2 and report["nuclei"] > 0
    for stem in ("ihc0", "ihc1"):
        features = json.loads((out / f"{stem}.geojson").read_text())["features"]
        assert features and {f["geometry"]["type"] for f in features} == {"Point"}
        assert qupath_geojson_problems(out / f"{stem}.geojson", allow_points=True, image_size=(96, 96)) == []
        names = {m["name"] for m in features[0]["properties"]["measurements"]}
        assert {"dab_od", "positivity", "detection_score"} <= names and "area_um2" not in names
        hover = json.loads((out / f"{stem}.json").read_text())["nuc"]
        txt = read_centroids_txt(out / f"{stem}.txt")
        assert [list(n.centroid) for n in txt] == [r["centroid"] for r in hover.values()]
        assert [f["geometry"]["coordinates"] for f in features] == [r["centroid"] for r in hover.values()]
        assert all(r["contour"] == [] and r["type"] in (0, 1, 2) for r in hover.values())
        inst = tifffile.TiffFile(out / f"{stem}.tif").pages[0].asarray()
        assert inst.max() == len(hover)  # one disk per point
    with open(out / "summary.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["image"] for r in rows] == ["ihc0", "ihc1"]
    assert "mean_area_um2" not in rows[0] and {"h_score", "positive_percent", "stroma"} <= set(rows[0])
    assert sum(int(r["nuclei"]) for r in rows) == report["nuclei"]
    record = json.loads((out / "segment.json").read_text())
    assert record["settings"]["model"] == "detector" and record["settings"]["disk_radius_um"] == 2.5
    assert record["weights"]["path"].endswith(weights.name) and record["weights"]["arch"] == "detector"


def test_detector_points_follow_the_input_scale(run_cli, tiles: Path, weights: Path, tmp_path: Path) -> None:
    """The same tile at 0.25 um/px (2x) is segmented at the detector's 0.5: its points land in its own pixels."""
    from histostain.io.images import read_image

    big = tmp_path / "big"
    big.mkdir()
    write_image(big / "ihc0.png", np.kron(read_image(tiles / "ihc0.png"), np.ones((2, 2, 1), np.uint8)))
    out = tmp_path / "scaled"
    code, _, err = run_cli([*CLI, "segment", str(big), "-o", str(out), "--model", "detector", "-w", str(weights),
                            "--mpp", "0.25", "--formats", "txt,png"])  # fmt: skip
    assert code == 0, err
    points = np.array([n.centroid for n in read_centroids_txt(out / "ihc0.txt")])
    assert len(points) and points.min() >= 0 and points.max() <= 191  # pixels of the 192 px input
    assert np.allclose((points + 0.5) % 2, 1.0)  # (x + 0.5) * 2 - 0.5: the centre of a 2x2 block


def test_detector_refuses_hovernet_weights_and_hovernet_refuses_detector(run_cli, weights, tiles, tmp_path):
    from histostain.segmentation.hovernet import HoVerNet

    hover = tmp_path / "hovernet.pth"
    torch.save(HoVerNet("fast", 6, encoder_width=1 / 16, units=[1, 1, 1, 1], decoder_width=0.125).state_dict(), hover)
    code, _, err = run_cli([*CLI, "segment", str(tiles), "-o", str(tmp_path / "a"), "--model", "detector",
                            "-w", str(hover)])  # fmt: skip
    assert code == 2 and "not a histostain checkpoint" in err and len(err.strip().splitlines()) <= 2
    code, _, err = run_cli([*CLI, "segment", str(tiles), "-o", str(tmp_path / "b"), "--model", "hovernet",
                            "-w", str(weights)])  # fmt: skip
    assert code == 2 and not (tmp_path / "b" / "ihc0.json").exists()
