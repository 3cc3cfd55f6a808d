"""`histostain segment` through the real entry point: HoVer-Net weights in both official containers, the
classical model, every output format read back, the summary, resume, and bad options in one line."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from histostain.io.annotations import read_annotations, read_centroids_txt
from histostain.io.annotations.qupath_check import qupath_geojson_problems
from histostain.io.images import read_image, write_image
from histostain.segmentation.hovernet import HoVerNet
from histostain.synth import generate_tile

CLI = ["--quiet", "--device", "cpu", "--precision", "fp32"]
ALL = (".json", ".geojson", ".tif", "_overlay.png", ".txt", ".summary.jsonl")


@pytest.fixture(scope="module")
def tiles(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tiles")
    for seed in range(2):
        tile = generate_tile(seed, 96)
        write_image(folder / f"he{seed}.png", tile.he)
        write_image(folder / f"ihc{seed}.png", tile.ihc)
    return folder


def _weights(folder: Path, container: str) -> Path:
    torch.manual_seed(0)
    net = HoVerNet("fast", 6, encoder_width=1 / 16, units=[1, 1, 1, 1], decoder_width=0.125, decoder_units=[1, 1])
    state = net.state_dict()
    folder.mkdir(parents=True, exist_ok=True)
    if container == "official":  # hover_net's .tar: {"desc": state_dict}
        path = folder / "hovernet_fast_pannuke_type_tf2pytorch.tar"
        torch.save({"desc": state}, path)
    else:  # TIAToolbox's .pth: the flat state dict
        path = folder / "hovernet_fast-pannuke.pth"
        torch.save(state, path)
    return path


def _check_outputs(out: Path, stem: str, shape: tuple[int, int]) -> None:
    for suffix in ALL:
        assert (out / f"{stem}{suffix}").is_file(), f"{stem}{suffix}"
    data = json.loads((out / f"{stem}.json").read_text())
    assert set(data) == {"mag", "nuc"}
    for record in data["nuc"].values():
        (y0, x0), (y1, x1) = record["bbox"]  # hover_net order: [[row, col], [row, col]]
        x, y = record["centroid"]
        assert y0 <= y <= y1 and x0 <= x <= x1
    assert qupath_geojson_problems(out / f"{stem}.geojson", image_size=(shape[1], shape[0])) == []
    pages = tifffile.TiffFile(out / f"{stem}.tif").pages
    inst = pages[0].asarray()
    assert inst.dtype == np.int32 and inst.shape == shape
    assert len(np.unique(inst)) - 1 == len(data["nuc"])  # the label map and the JSON agree
    txt = read_centroids_txt(out / f"{stem}.txt", image_size=(shape[1], shape[0]))
    assert len(txt) == len(data["nuc"])
    assert len(read_annotations(out / f"{stem}.geojson")) == len(data["nuc"])
    overlay = read_image(out / f"{stem}_overlay.png")
    assert overlay.shape[1] == shape[1] and overlay.shape[0] > shape[0]  # the legend strip sits below


@pytest.mark.parametrize("container", ["official", "tiatoolbox"])
def test_hovernet_weights_in_either_official_container_segment_a_folder(
    run_cli, tiles: Path, tmp_path: Path, container: str
) -> None:
    weights = _weights(tmp_path / "w", container)
    out = tmp_path / "out"
    code, stdout, err = run_cli([*CLI, "segment", str(tiles), "-w", str(weights), "-o", str(out), "--json"])
    assert code == 0, err
    report = json.loads(stdout)
    assert report["model"] == "hovernet" and report["segmented"] == 4
    for stem in ("he0", "he1", "ihc0", "ihc1"):
        _check_outputs(out, stem, (96, 96))
    with (out / "summary.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert sorted(row["image"] for row in rows) == ["he0", "he1", "ihc0", "ihc1"]
    record = json.loads((out / "segment.json").read_text())
    assert record["status"] == "finished" and record["settings"]["model"] == "hovernet"
    assert record["weights"]["format"] == container and len(record["settings"]["weights_sha256"]) == 64
    # a second run skips everything and still writes the whole summary
    code, stdout, err = run_cli([*CLI, "segment", str(tiles), "-w", str(weights), "-o", str(out), "--json"])
    assert code == 0, err
    again = json.loads(stdout)
    assert again["skipped"] == 4 and again["segmented"] == 0 and again["totals"]["images"] == 4


def test_without_weights_the_classical_model_scores_ihc_positivity(run_cli, tiles: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    inputs = [str(tiles / "ihc0.png"), str(tiles / "ihc1.png")]
    code, stdout, err = run_cli([*CLI, "segment", *inputs, "-o", str(out), "--stain", "ihc", "--mpp", "0.25"])
    assert code == 0, err
    assert "classical (weight-free: no weights given)" in stdout
    _check_outputs(out, "ihc0", (96, 96))
    with (out / "summary.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 2
    for row in rows:
        assert 0.0 <= float(row["h_score"]) <= 300.0 and 0.0 <= float(row["positive_percent"]) <= 100.0
        counts = sum(int(row[name]) for name in ("Negative", "1+", "2+", "3+"))
        assert counts == int(row["nuclei"])


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--model", "hovernet"], "--model hovernet needs --weights"),
        (["--model", "unet"], "--model unet: unknown model"),
        (["--formats", "json,pdf"], "--formats pdf: unknown format"),
        (["--positivity", "0.4,0.2,0.6"], "--positivity"),
        (["--mpp", "-1"], "--mpp -1.0: must be a positive number"),
        (["--chunk-size", "10"], "--chunk-size 10: must be at least 64"),
    ],
)
def test_bad_options_are_one_line_and_write_nothing(
    run_cli, tiles: Path, tmp_path: Path, args: list[str], fragment: str
) -> None:
    out = tmp_path / "out"
    code, _, err = run_cli([*CLI, "segment", str(tiles), "-o", str(out), *args])
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and fragment in lines[0], err
    assert not out.exists() or not any(out.iterdir())


def test_classical_on_real_ihc_then_evaluate_celldet(run_cli, tmp_path: Path) -> None:
    """The issue's real-tissue chain through the entry point: segment six real EndoNuke tiles (RGBA PNG) with
    no weights, then score the centroids against the experts' keypoints at 3 um."""
    sample = Path(__file__).resolve().parents[1] / "data" / "endonuke_dev_sample"
    out = tmp_path / "seg"
    code, stdout, err = run_cli([*CLI, "segment", str(sample / "images"), "-o", str(out), "--mpp", "0.5", "--json"])
    assert code == 0, err
    report = json.loads(stdout)
    assert report["model"] == "classical" and report["segmented"] == 6
    assert 0 < report["totals"]["mean_positive_percent"] <= 100  # ER/PR tiles: recognised as IHC and scored
    truth = sample / "labels" / "bulk" / "ptg1"
    code, stdout, err = run_cli(
        ["evaluate", "celldet", str(truth), str(out), "--radius-um", "3", "--mpp", "0.5", "--json"]
    )
    assert code == 0, err
    summary = json.loads(stdout)["summary"]
    assert summary["n_images"] == 6 and summary["f1"] >= 0.75
    assert err.count("formats") <= 1  # one note about .json/.geojson/.txt, not one per image


def test_classical_on_skimage_ihc_sample(run_cli, tmp_path: Path) -> None:
    from skimage import data

    image = tmp_path / "in" / "ihc.png"
    image.parent.mkdir()
    write_image(image, np.ascontiguousarray(data.immunohistochemistry()[:256, :256]))
    out = tmp_path / "out"
    code, _, err = run_cli([*CLI, "segment", str(image), "-o", str(out), "--stain", "ihc"])
    assert code == 0, err
    _check_outputs(out, "ihc", (256, 256))
    features = json.loads((out / "ihc.geojson").read_text())["features"]
    assert len(features) >= 30
    names = {m["name"] for m in features[0]["properties"]["measurements"]}
    assert {"dab_od", "positivity"} <= names
    classes = {f["properties"]["classification"]["name"] for f in features}
    assert classes <= {"Negative", "1+", "2+", "3+"} and len(classes) >= 2
