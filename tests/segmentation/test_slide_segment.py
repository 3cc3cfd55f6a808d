"""Whole-slide segmentation (``segmentation.slide_segment``): chunked over the slide, equal to the in-memory run on
the same pixels, resumable, streamed outputs that QuPath reads, glass skipped, ROI and tissue masks honoured."""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial import cKDTree

from histostain.errors import InputError
from histostain.io.annotations.qupath_check import qupath_geojson_problems
from histostain.io.images import write_image
from histostain.io.slide_regions import Roi, parse_roi, plan_slide
from histostain.io.slides import open_slide
from histostain.segmentation.segment import build_segmenter
from histostain.segmentation.slide_segment import segment_slide, target_mpp
from tests.io.slides_fixtures import make_mosaic, write_ome_tiff, write_svs

ROWS, COLS = 3, 4  # 768 x 1024 px; cells (0, 0), (0, 1), (1, 0) are glass
CHUNK = 256


@pytest.fixture(scope="module")
def slide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic Aperio slide at 0.5 um/px (the classical model's scale: no resampling)."""
    mosaic, _ = make_mosaic(ROWS, COLS)
    return write_svs(tmp_path_factory.mktemp("slide") / "mosaic.svs", mosaic, mpp=0.5)


def classical(chunk: int = CHUNK):
    return build_segmenter("classical", weights=None, device=None, stain="auto", mpp=0.5, chunk=chunk)


def read_rows(path: Path) -> list[dict[str, str]]:
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def centroids(rows: list[dict[str, str]]) -> np.ndarray:
    return np.array([[float(r["x"]), float(r["y"])] for r in rows]).reshape(-1, 2)


def matched_within(a: np.ndarray, b: np.ndarray, radius: float = 1.0) -> float:
    """Share of ``a``'s points with a point of ``b`` within ``radius`` (both ways checked by the caller)."""
    if not len(a):
        return 1.0 if not len(b) else 0.0
    distances, _ = cKDTree(b).query(a)
    return float(np.mean(distances <= radius))


@pytest.fixture(scope="module")
def straight(slide: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One uninterrupted run with every output and no tissue mask (the reference for the other tests)."""
    out = tmp_path_factory.mktemp("straight")
    segment_slide(slide, out, classical(), chunk=CHUNK, tissue="none", formats=("geojson", "csv", "json", "png"))
    return out


def test_slide_nuclei_equal_the_in_memory_run_on_the_same_pixels(slide: Path, straight: Path) -> None:
    with open_slide(slide) as handle:
        pixels = handle.read_region(0, 0, COLS * 256, ROWS * 256)
    in_memory = classical().segment(pixels)  # segment_in_chunks with the same chunk and margin
    found = centroids(read_rows(straight / "mosaic.nuclei.csv.gz"))
    assert len(in_memory) > 300
    assert matched_within(found, in_memory.centroids) >= 0.995
    assert matched_within(in_memory.centroids, found) >= 0.995
    assert abs(len(found) - len(in_memory)) <= 0.005 * len(in_memory)


def test_outputs_are_streamed_in_formats_qupath_and_hover_net_read(straight: Path) -> None:
    with gzip.open(straight / "mosaic.geojson.gz", "rt", encoding="utf-8") as handle:
        collection = json.load(handle)
    rows = read_rows(straight / "mosaic.nuclei.csv.gz")
    hovernet = json.loads((straight / "mosaic.json").read_text())
    features = collection["features"]
    assert len(features) == len(rows) == len(hovernet["nuc"]) > 0
    assert qupath_geojson_problems(collection, image_size=(COLS * 256, ROWS * 256)) == []
    assert len({f["id"] for f in features}) == len(features)  # uuid5 of slide name and nucleus number
    # the CSV, the GeoJSON and the JSON describe the same nuclei in the same order
    first = {m["name"]: m["value"] for m in features[0]["properties"]["measurements"]}
    assert first["nucleus_id"] == int(rows[0]["id"]) == 1
    assert first["centroid_x"] == pytest.approx(float(rows[0]["x"]), abs=0.01)
    assert hovernet["nuc"]["1"]["centroid"] == pytest.approx([first["centroid_x"], first["centroid_y"]])
    summary = json.loads((straight / "mosaic.summary.jsonl").read_text())
    assert summary["nuclei"] == len(rows)
    areas = [float(r["area_um2"]) for r in rows]
    assert summary["mean_area_um2"] == pytest.approx(np.mean(areas), rel=1e-3)
    assert not (straight / "mosaic.partial").exists()  # the chunk records are gone once the outputs exist


def test_overview_is_the_thumbnail_with_a_legend(straight: Path) -> None:
    from histostain.io.images import read_image

    overview = read_image(straight / "mosaic_overview.png")
    assert overview.shape[1] == COLS * 256  # the slide is smaller than 2048 px: level 0, not enlarged
    assert overview.shape[0] > ROWS * 256  # the legend strip below


def test_glass_chunks_are_skipped_and_hold_no_nuclei(slide: Path, straight: Path, tmp_path: Path) -> None:
    report = segment_slide(slide, tmp_path, classical(), chunk=CHUNK, tissue="auto")
    assert report.glass >= 1  # the chunk at (0, 0) is a glass cell
    assert report.segmented + report.glass == report.chunks == 12
    everywhere = centroids(read_rows(straight / "mosaic.nuclei.csv.gz"))
    in_tissue = centroids(read_rows(tmp_path / "mosaic.nuclei.csv.gz"))
    glass_core = (everywhere[:, 0] < CHUNK) & (everywhere[:, 1] < CHUNK)
    assert len(in_tissue) == len(everywhere) - int(glass_core.sum())


def test_roi_keeps_slide_coordinates(slide: Path, straight: Path, tmp_path: Path) -> None:
    roi = parse_roi("512,256,512,512")
    report = segment_slide(slide, tmp_path, classical(), chunk=CHUNK, roi=roi, tissue="none")
    assert report.chunks == 4
    inside = centroids(read_rows(tmp_path / "mosaic.nuclei.csv.gz"))
    assert len(inside) > 50
    assert inside[:, 0].min() >= 512 and inside[:, 1].min() >= 256
    assert inside[:, 0].max() < 1024 and inside[:, 1].max() < 768
    # away from the ROI's edges the nuclei are those of the whole slide
    everywhere = centroids(read_rows(straight / "mosaic.nuclei.csv.gz"))
    inner = (inside[:, 0] > 600) & (inside[:, 0] < 940) & (inside[:, 1] > 340) & (inside[:, 1] < 680)
    assert matched_within(inside[inner], everywhere) >= 0.95


def test_a_tissue_mask_png_decides_which_chunks_run(slide: Path, tmp_path: Path) -> None:
    mask = np.zeros((ROWS * 16, COLS * 16), np.uint8)  # any size with the slide's proportions
    mask[:, COLS * 8 :] = 255  # the right half only
    write_image(tmp_path / "mask.png", np.dstack([mask] * 3))
    report = segment_slide(slide, tmp_path / "out", classical(), chunk=CHUNK, tissue=tmp_path / "mask.png")
    assert report.glass == 6 and report.segmented == 6
    found = centroids(read_rows(tmp_path / "out" / "mosaic.nuclei.csv.gz"))
    assert found[:, 0].min() >= 512 - 1


def test_a_mask_of_other_proportions_is_refused(slide: Path, tmp_path: Path) -> None:
    write_image(tmp_path / "mask.png", np.full((100, 100, 3), 255, np.uint8))
    with pytest.raises(InputError, match="aspect ratios differ"):
        segment_slide(slide, tmp_path / "out", classical(), chunk=CHUNK, tissue=tmp_path / "mask.png")


def test_resume_uses_recorded_chunks_and_refuses_other_settings(slide: Path, straight: Path, tmp_path: Path) -> None:
    # a first run interrupted after its chunk records: simulate it by running, then removing the outputs only
    first = segment_slide(slide, tmp_path, classical(), chunk=CHUNK, tissue="none")
    assert first.segmented == 12
    work = tmp_path / "mosaic.partial"
    assert not work.exists()
    # a run that leaves records behind: drop the outputs and recreate records by a partial run
    for path in tmp_path.iterdir():
        path.unlink()
    calls = []
    segmenter = classical()
    inner_segment = segmenter.inner.segment

    class Interrupt(Exception):
        pass

    def failing(rgb: np.ndarray):
        calls.append(rgb.shape)
        if len(calls) > 5:
            raise Interrupt
        return inner_segment(rgb)

    segmenter.inner.segment = failing  # type: ignore[method-assign]
    with pytest.raises(Interrupt):
        segment_slide(slide, tmp_path, segmenter, chunk=CHUNK, tissue="none")
    assert len(list(work.glob("chunk-*.npz"))) == 5
    with pytest.raises(InputError, match="other settings"):
        segment_slide(slide, tmp_path, classical(), chunk=CHUNK, tissue="auto")
    resumed = segment_slide(slide, tmp_path, classical(), chunk=CHUNK, tissue="none")
    assert (resumed.resumed, resumed.segmented) == (5, 7)
    for name in ("mosaic.geojson.gz", "mosaic.nuclei.csv.gz", "mosaic.summary.jsonl"):
        assert (tmp_path / name).read_bytes() == (straight / name).read_bytes(), name
    again = segment_slide(slide, tmp_path, classical(), chunk=CHUNK, tissue="none")
    assert again.skipped


def test_ome_tiff_slide_at_a_finer_scale_is_read_from_the_right_level(tmp_path: Path) -> None:
    mosaic, _ = make_mosaic(ROWS, COLS)
    path = write_ome_tiff(tmp_path / "fine.ome.tif", mosaic, mpp=0.25)  # levels at 0.25, 1.0 and 4.0 um/px
    with open_slide(path) as handle:
        plan = plan_slide(handle, target_mpp(classical(), handle.mpp), chunk=CHUNK)
        assert (plan.level, plan.scale, plan.mpp) == (0, 2.0, 0.5)  # level 0 halved: 1.0 would lose detail
        assert plan.shape == (ROWS * 128, COLS * 128)
    report = segment_slide(path, tmp_path / "out", classical(), chunk=CHUNK, tissue="none", formats=("csv",))
    found = centroids(read_rows(tmp_path / "out" / "fine.nuclei.csv.gz"))
    assert report.nuclei == len(found) > 100
    assert found[:, 0].max() > COLS * 256 * 0.9  # level-0 coordinates, not processing ones
    # the same nuclei as the 0.5 um/px slide of the same mosaic, scaled to level 0 (resampling moves them a bit)
    half = classical().segment(np.ascontiguousarray(mosaic[::2, ::2]))
    assert matched_within(found, half.centroids * 2, radius=4) >= 0.8


@pytest.mark.parametrize("text", ["1,2,3", "a,b,c,d", "0,0,0,10", "-1,0,5,5"])
def test_bad_roi_is_refused(text: str) -> None:
    with pytest.raises(InputError, match="--roi"):
        parse_roi(text)


def test_roi_outside_the_slide_is_refused(slide: Path) -> None:
    with open_slide(slide) as handle, pytest.raises(InputError, match="outside the slide"):
        plan_slide(handle, None, roi=Roi(5000, 0, 10, 10))


def test_ihc_slide_summary_adds_up_its_chunks(tmp_path: Path) -> None:
    """Positive % and H-score of the slide's row, computed by hand from its per-nucleus CSV (the chunks' counts
    are added up, never the nuclei kept)."""
    from histostain.synth import generate_tile

    tiles = [generate_tile(500 + i, 256).ihc for i in range(6)]
    mosaic = np.concatenate([np.concatenate(tiles[:3], axis=1), np.concatenate(tiles[3:], axis=1)], axis=0)
    path = write_svs(tmp_path / "ihc.svs", np.ascontiguousarray(mosaic), mpp=0.5)
    segmenter = build_segmenter("classical", weights=None, device=None, stain="ihc", mpp=0.5, chunk=CHUNK)
    segment_slide(path, tmp_path / "out", segmenter, chunk=CHUNK, tissue="none")
    rows = read_rows(tmp_path / "out" / "ihc.nuclei.csv.gz")
    scores = np.array([int(r["positivity"]) for r in rows if r["positivity"] != ""])
    assert len(scores) > 50 and len(set(scores.tolist())) > 1
    summary = json.loads((tmp_path / "out" / "ihc.summary.jsonl").read_text())
    share = {k: 100.0 * np.mean(scores == k) for k in range(4)}
    assert summary["nuclei"] == len(rows)
    assert summary["positive_percent"] == pytest.approx(share[1] + share[2] + share[3], abs=1e-3)
    assert summary["h_score"] == pytest.approx(share[1] + 2 * share[2] + 3 * share[3], abs=1e-3)
    assert [summary[name] for name in ("Negative", "1+", "2+", "3+")] == [int(np.sum(scores == k)) for k in range(4)]
    assert {r["class"] for r in rows} <= {"Negative", "1+", "2+", "3+"}


def test_a_transform_never_paints_glass(slide: Path, tmp_path: Path) -> None:
    """pipeline's translation runs on tissue chunks, but their glass pixels are the slide's own again before
    segmentation (a CycleGAN turns near-uniform glass into textured blocks a segmenter could take for nuclei)."""
    segmenter = classical(chunk=512)
    seen: list[np.ndarray] = []
    inner = segmenter.inner.segment

    def capture(rgb: np.ndarray):
        seen.append(rgb.copy())
        return inner(rgb)

    segmenter.inner.segment = capture  # type: ignore[method-assign]
    segment_slide(
        slide, tmp_path, segmenter, chunk=512, tissue="auto", transform=np.zeros_like, transform_settings={"t": 0}
    )
    first = seen[0]  # chunk 0: cells (0, 0), (0, 1), (1, 0) are glass, (1, 1) is tissue
    with open_slide(slide) as handle:
        source = handle.read_region(0, 0, first.shape[1], first.shape[0])
    glass = (slice(40, 216), slice(40, 216))  # inside cell (0, 0), away from the widened tissue edge
    assert np.array_equal(first[glass], source[glass])
    tissue = (slice(296, 472), slice(296, 472))  # inside cell (1, 1)
    assert (first[tissue] == 0).all()
