"""segment outputs: every format written, then read back with the project's readers (and tifffile, csv, PIL)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image
from skimage import data, measure

from histostain.errors import ConfigError
from histostain.io.annotations import (
    IHC_CLASS_COLOURS,
    IHC_CLASS_NAMES,
    qupath_geojson_problems,
    read_centroids_txt,
    read_geojson,
    read_hovernet_json,
)
from histostain.io.images import read_image, read_label_pages, read_label_tiff
from histostain.segmentation.nuclei import Nuclei
from histostain.segmentation.outputs import (
    FORMATS,
    check_formats,
    output_suffixes,
    summary_row,
    write_outputs,
    write_summary_csv,
)
from histostain.segmentation.overlay import NUCLEUS_COLOUR, render_overlay
from histostain.synth import generate_tile
from histostain.vocabulary import ENDONUKE_CLASS_NAMES, ENDONUKE_TYPE_COLOURS, PANNUKE_TYPE_NAMES, type_colour

# ------------------------------------------------------------------------------------------------- helpers


def nuclei_from_maps(
    inst_map: np.ndarray,
    type_map: np.ndarray | None = None,
    *,
    type_names: dict[int, str] | None = None,
    mpp: float | None = None,
) -> Nuclei:
    """A Nuclei of label maps: pixel centroids and boxes, sub-pixel iso-line contours (skimage), majority types.

    Independent of the segmenters' own code on purpose: these tests check the writers, not the segmenters.
    """
    inst_map = np.asarray(inst_map, dtype=np.int32)
    ids = np.unique(inst_map[inst_map > 0]).astype(np.int32)
    centroids, bboxes, contours, areas, types, probs = [], [], [], [], [], []
    for nucleus_id in ids.tolist():
        mask = inst_map == nucleus_id
        ys, xs = np.nonzero(mask)
        centroids.append((xs.mean(), ys.mean()))
        bboxes.append((xs.min(), ys.min(), xs.max() + 1, ys.max() + 1))
        areas.append(mask.sum())
        # Longest iso-line of the padded mask, as (x, y), open ring.
        lines = measure.find_contours(np.pad(mask, 1).astype(float), 0.5)
        line = max(lines, key=len)[:-1] - 1
        contours.append(line[:, ::-1].copy())
        if type_map is not None:
            votes = np.bincount(type_map[mask], minlength=1)
            votes[0] = 0
            code = int(np.argmax(votes))
            types.append(code)
            probs.append(votes[code] / mask.sum())
    n = len(ids)
    return Nuclei(
        inst_map=inst_map,
        type_map=None if type_map is None else type_map.astype(np.uint8),
        ids=ids,
        centroids=np.array(centroids, dtype=np.float64).reshape(n, 2),
        bboxes=np.array(bboxes, dtype=np.int64).reshape(n, 4),
        contours=contours,
        areas=np.array(areas, dtype=np.int64),
        types=np.array(types, dtype=np.int64) if type_map is not None else None,
        type_probs=np.array(probs, dtype=np.float64) if type_map is not None else None,
        type_names=type_names,
        mpp=mpp,
    )


def he_tile(seed: int = 3, size: int = 160) -> tuple[np.ndarray, Nuclei]:
    tile = generate_tile(seed, size)
    return tile.he, nuclei_from_maps(tile.inst_map, tile.type_map, mpp=tile.mpp)


def ihc_image(size: int = 160) -> tuple[np.ndarray, Nuclei]:
    """A crop of scikit-image's IHC sample with disc nuclei scored 0..3 by a made-up DAB value."""
    image = np.ascontiguousarray(data.immunohistochemistry()[:size, :size])
    inst = np.zeros((size, size), np.int32)
    yy, xx = np.mgrid[:size, :size]
    rng = np.random.default_rng(5)
    for nucleus_id, (cy, cx) in enumerate(rng.integers(10, size - 10, size=(12, 2)), start=1):
        inst[((yy - cy) ** 2 + (xx - cx) ** 2 <= 25) & (inst == 0)] = nucleus_id
    nuclei = nuclei_from_maps(inst, mpp=0.5)
    dab = np.linspace(0.0, 0.6, len(nuclei))
    dab[2] = np.nan  # a nucleus the scorer could not measure
    nuclei.measurements["dab_od"] = dab
    nuclei.measurements["positivity"] = np.where(np.isnan(dab), np.nan, np.digitize(dab, [0.15, 0.3, 0.45]))
    return image, nuclei


def write_all(nuclei: Nuclei, image: np.ndarray | None, folder: Path, stem: str = "img", **kw) -> dict[str, Path]:
    formats = check_formats(kw.pop("formats", None))
    targets = [folder / f"{stem}{suffix}" for suffix in output_suffixes(formats)]
    write_outputs(nuclei, targets, image=image, image_name=f"{stem}.png", formats=formats, **kw)
    return dict(zip(formats, targets, strict=True))


# ------------------------------------------------------------------------------------------------- formats


def test_formats_keep_one_order_whatever_the_user_typed() -> None:
    assert FORMATS == ("json", "geojson", "tif", "png", "txt")
    assert output_suffixes() == (".json", ".geojson", ".tif", "_overlay.png", ".txt")
    assert check_formats(["txt", "JSON", "txt"]) == ("json", "txt")
    assert output_suffixes(["png", "geojson"]) == (".geojson", "_overlay.png")
    with pytest.raises(ConfigError, match="unknown output format"):
        check_formats(["json", "mat"])
    with pytest.raises(ConfigError, match="no output format"):
        check_formats([])


def test_write_outputs_checks_its_arguments(tmp_path: Path) -> None:
    image, nuclei = he_tile(size=64)
    with pytest.raises(ValueError, match="2 targets for 1 formats"):
        write_outputs(nuclei, [tmp_path / "a.json", tmp_path / "b"], image=image, image_name="a", formats=["json"])
    with pytest.raises(ValueError, match="needs the image"):
        write_outputs(nuclei, [tmp_path / "a.png"], image=None, image_name="a", formats=["png"])
    with pytest.raises(ValueError, match="different sizes"):
        write_outputs(nuclei, [tmp_path / "a.png"], image=image[:32], image_name="a", formats=["png"])
    assert list(tmp_path.iterdir()) == []
    # Without the overlay no image is needed.
    write_all(nuclei, None, tmp_path, formats=["json", "txt"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["img.json", "img.txt"]


# ------------------------------------------------------------------------------------------------- H&E, typed


def test_typed_he_every_format_reads_back(tmp_path: Path) -> None:
    image, nuclei = he_tile()
    assert len(nuclei) > 10
    files = write_all(nuclei, image, tmp_path, mag=40)
    height, width = nuclei.shape

    # hover_net JSON: exactly the tile-mode schema, bbox as [[y0, x0], [y1, x1]].
    data_json = json.loads(files["json"].read_text())
    assert set(data_json) == {"mag", "nuc"} and data_json["mag"] == 40
    assert list(data_json["nuc"]) == [str(i) for i in nuclei.ids.tolist()]
    for i, entry in enumerate(data_json["nuc"].values()):
        assert set(entry) == {"bbox", "centroid", "contour", "type", "type_prob"}
        x0, y0, x1, y1 = nuclei.bboxes[i].tolist()
        assert entry["bbox"] == [[y0, x0], [y1, x1]]
        assert entry["centroid"] == pytest.approx(nuclei.centroids[i].tolist())
        assert entry["type"] == nuclei.types[i] and isinstance(entry["type"], int)
        assert entry["type_prob"] == pytest.approx(nuclei.type_probs[i])
    back = read_hovernet_json(files["json"], image_size=(width, height))
    assert [n.id for n in back] == nuclei.ids.tolist()
    assert [n.bbox for n in back] == [tuple(b) for b in nuclei.bboxes.tolist()]

    # QuPath GeoJSON: every rule, and the project's reader gets ids, exact centroids, types and the µm² area.
    assert qupath_geojson_problems(files["geojson"], image_size=(width, height)) == []
    geo = read_geojson(files["geojson"])
    assert [n.id for n in geo] == nuclei.ids.tolist()
    np.testing.assert_array_equal([n.centroid for n in geo], nuclei.centroids)
    assert [n.type for n in geo] == nuclei.types.tolist()
    np.testing.assert_allclose([n.measurements["area_um2"] for n in geo], nuclei.areas * nuclei.mpp**2)
    features = json.loads(files["geojson"].read_text())["features"]
    assert {f["properties"]["classification"]["name"] for f in features} <= set(PANNUKE_TYPE_NAMES.values())
    for feature, code in zip(features, nuclei.types.tolist(), strict=True):
        assert feature["properties"]["classification"]["color"] == list(type_colour(code))

    # Label TIFF: page 0 int32 instances, page 1 uint8 types, named, lossless, with the scale.
    with tifffile.TiffFile(files["tif"]) as tif:
        assert [p.tags["PageName"].value for p in tif.pages] == ["instance", "type"]
        assert tif.pages[0].tags["XResolution"].value[0] / tif.pages[0].tags["XResolution"].value[1] == (
            pytest.approx(1e4 / nuclei.mpp)
        )
    inst = tifffile.imread(files["tif"], key=0)
    types = tifffile.imread(files["tif"], key=1)
    assert inst.dtype == np.int32 and types.dtype == np.uint8
    np.testing.assert_array_equal(inst, nuclei.inst_map)
    np.testing.assert_array_equal(types, nuclei.type_map)
    np.testing.assert_array_equal(read_label_tiff(files["tif"]), nuclei.inst_map)  # what evaluate reads
    assert list(read_label_pages(files["tif"])) == ["instance", "type"]

    # Centroid txt: x y type, read back by the reader evaluate celldet uses.
    points = read_centroids_txt(files["txt"], image_size=(width, height))
    np.testing.assert_allclose([p.centroid for p in points], nuclei.centroids, atol=1e-4)
    assert [p.type for p in points] == nuclei.types.tolist()

    # Overlay: the image above a legend strip; only pixels around nuclei change; classes drawn in their colour.
    overlay = read_image(files["png"])
    assert overlay.shape[1:] == (width, 3) and overlay.shape[0] > height
    changed = np.any(overlay[:height] != image, axis=-1)
    near = np.zeros((height, width), bool)
    for x0, y0, x1, y1 in nuclei.bboxes.tolist():
        near[max(y0 - 1, 0) : y1 + 1, max(x0 - 1, 0) : x1 + 1] = True
    assert changed.any() and not (changed & ~near).any()
    legend = overlay[height:].reshape(-1, 3)
    for code in np.unique(nuclei.types).tolist():
        assert np.any(np.all(legend == type_colour(code), axis=1)), f"no swatch for type {code}"


def test_endonuke_names_get_endonuke_colours_and_unnamed_codes_a_palette_colour(tmp_path: Path) -> None:
    inst = np.zeros((40, 40), np.int32)
    types = np.zeros((40, 40), np.uint8)
    for k, code in enumerate([0, 1, 2, 7]):  # stroma, epithelium, other and a code EndoNuke does not have
        inst[5 + 8 * k : 10 + 8 * k, 5:12] = k + 1
        types[5 + 8 * k : 10 + 8 * k, 5:12] = code
    nuclei = nuclei_from_maps(inst, types, type_names=ENDONUKE_CLASS_NAMES)
    nuclei.types = np.array([0, 1, 2, 7])  # the helper's vote ignores code 0; set the truth
    files = write_all(nuclei, np.full((40, 40, 3), 230, np.uint8), tmp_path)
    classes = [f["properties"]["classification"] for f in json.loads(files["geojson"].read_text())["features"]]
    assert classes == [
        {"name": "stroma", "color": list(ENDONUKE_TYPE_COLOURS[0])},
        {"name": "epithelium", "color": list(ENDONUKE_TYPE_COLOURS[1])},
        {"name": "other", "color": list(ENDONUKE_TYPE_COLOURS[2])},
        {"name": "7", "color": list(type_colour(7))},
    ]
    assert [n.type for n in read_geojson(files["geojson"], type_names=ENDONUKE_CLASS_NAMES)] == [0, 1, 2, 7]
    assert summary_row("e", nuclei) == {
        "image": "e",
        "nuclei": 4,
        "stroma": 1,
        "epithelium": 1,
        "other": 1,
        "type 7": 1,
        "mean_area_px": 35.0,
    }


# ------------------------------------------------------------------------------------------------- untyped


def test_untyped_nuclei(tmp_path: Path) -> None:
    image, typed = he_tile(seed=8, size=96)
    nuclei = nuclei_from_maps(typed.inst_map)  # no types, no scale
    files = write_all(nuclei, image, tmp_path)
    entries = json.loads(files["json"].read_text())["nuc"].values()
    assert all(e["type"] is None and e["type_prob"] is None for e in entries)
    assert qupath_geojson_problems(files["geojson"], image_size=(96, 96)) == []
    features = json.loads(files["geojson"].read_text())["features"]
    assert all("classification" not in f["properties"] for f in features)  # no class, not a made-up one
    names = {m["name"] for f in features for m in f["properties"]["measurements"]}
    assert names == {"nucleus_id", "centroid_x", "centroid_y", "area"}  # no scale: no µm² area
    pages = read_label_pages(files["tif"])
    assert list(pages) == ["instance"]  # no type page for an untyped model
    assert all(len(line.split()) == 2 for line in files["txt"].read_text().splitlines())
    overlay = read_image(files["png"])
    assert np.any(np.all(overlay[:96] == NUCLEUS_COLOUR, axis=-1))
    assert summary_row("u", nuclei) == {
        "image": "u",
        "nuclei": len(nuclei),
        "mean_area_px": pytest.approx(float(nuclei.areas.mean()), abs=1e-4),
    }


# ------------------------------------------------------------------------------------------------- IHC


def test_ihc_positivity_classes_measurements_and_scores(tmp_path: Path) -> None:
    image, nuclei = ihc_image()
    files = write_all(nuclei, image, tmp_path)
    scores = nuclei.measurements["positivity"]

    assert qupath_geojson_problems(files["geojson"], image_size=(160, 160)) == []
    features = json.loads(files["geojson"].read_text())["features"]
    for feature, score in zip(features, scores.tolist(), strict=True):
        properties = feature["properties"]
        measurements = {m["name"]: m["value"] for m in properties["measurements"]}
        if np.isnan(score):
            assert "classification" not in properties and "positivity" not in measurements  # NaN is left out
        else:
            code = int(score)
            assert properties["classification"] == {
                "name": IHC_CLASS_NAMES[code],
                "color": list(IHC_CLASS_COLOURS[code]),
            }
            assert measurements["positivity"] == code
            assert "dab_od" in measurements and "area_um2" in measurements
    back = read_geojson(files["geojson"])
    assert [n.type_name for n in back] == [None if np.isnan(s) else IHC_CLASS_NAMES[int(s)] for s in scores]

    # The hover_net JSON and txt carry the model's type (none here), not the IHC class.
    assert all(e["type"] is None for e in json.loads(files["json"].read_text())["nuc"].values())

    scored = scores[~np.isnan(scores)]
    expected = {name: int(np.sum(scored == code)) for code, name in IHC_CLASS_NAMES.items()}
    row = summary_row("ihc", nuclei)
    assert {k: row[k] for k in expected} == expected
    percent = [100 * np.mean(scored == code) for code in range(4)]
    assert row["positive_percent"] == pytest.approx(percent[1] + percent[2] + percent[3], abs=1e-4)
    assert row["h_score"] == pytest.approx(percent[1] + 2 * percent[2] + 3 * percent[3], abs=1e-4)

    legend = read_image(files["png"])[160:].reshape(-1, 3)
    for colour in IHC_CLASS_COLOURS.values():
        assert np.any(np.all(legend == colour, axis=1))


# ------------------------------------------------------------------------------------------------- edge cases


@pytest.mark.parametrize("typed", [True, False])
def test_image_without_nuclei(tmp_path: Path, typed: bool) -> None:
    image = np.full((48, 64, 3), 200, np.uint8)
    nuclei = Nuclei.empty(48, 64, typed=typed)
    files = write_all(nuclei, image, tmp_path)
    assert json.loads(files["json"].read_text()) == {"mag": None, "nuc": {}}
    assert json.loads(files["geojson"].read_text()) == {"type": "FeatureCollection", "features": []}
    assert qupath_geojson_problems(files["geojson"]) == []
    assert read_geojson(files["geojson"]) == []
    pages = read_label_pages(files["tif"])
    assert list(pages) == (["instance", "type"] if typed else ["instance"])
    assert all(not page.any() and page.shape == (48, 64) for page in pages.values())
    overlay = read_image(files["png"])
    np.testing.assert_array_equal(overlay[:48], image)  # the image itself, above the legend "0 nuclei"
    assert files["txt"].read_text() == ""
    assert read_centroids_txt(files["txt"]) == []
    row = summary_row("empty", nuclei)
    assert row["nuclei"] == 0 and row["mean_area_px"] == 0
    if typed:
        assert {row[name] for name in PANNUKE_TYPE_NAMES.values()} == {0}


def test_degenerate_contours_become_valid_polygons(tmp_path: Path) -> None:
    inst = np.zeros((20, 20), np.int32)
    inst[3, 3] = 1  # one pixel
    inst[8, 2:9] = 2  # a one-pixel-wide line
    inst[12:17, 12:17] = 3  # a square whose contour has a spur (below)
    nuclei = nuclei_from_maps(inst)
    nuclei.contours[0] = np.array([[3, 3]])
    nuclei.contours[1] = np.array([[2, 8], [8, 8]])
    nuclei.contours[2] = np.array([[12, 12], [16, 12], [16, 16], [19, 16], [16, 16], [12, 16]])
    files = write_all(nuclei, np.zeros((20, 20, 3), np.uint8), tmp_path, formats=["geojson", "png"])
    assert qupath_geojson_problems(files["geojson"], image_size=(20, 20)) == []
    rings = [f["geometry"]["coordinates"][0] for f in json.loads(files["geojson"].read_text())["features"]]
    assert rings[0] == [[2.5, 2.5], [3.5, 2.5], [3.5, 3.5], [2.5, 3.5], [2.5, 2.5]]  # the pixel's outline
    assert rings[1] == [[1.5, 7.5], [8.5, 7.5], [8.5, 8.5], [1.5, 8.5], [1.5, 7.5]]  # the line's pixel box
    assert rings[2] == [[12, 12], [16, 12], [16, 16], [12, 16], [12, 12]]  # spur removed, contour kept
    # Centroids stay the nuclei's own, whatever the polygon.
    np.testing.assert_array_equal([n.centroid for n in read_geojson(files["geojson"])], nuclei.centroids)


def test_outputs_are_deterministic(tmp_path: Path) -> None:
    image, nuclei = ihc_image(96)
    first = write_all(nuclei, image, tmp_path / "a")
    second = write_all(nuclei, image, tmp_path / "b")
    for name in FORMATS:
        assert first[name].read_bytes() == second[name].read_bytes(), name
    # GeoJSON ids depend on the image name, so objects of two images never share a QuPath id.
    other = write_all(nuclei, image, tmp_path / "c", stem="other")
    ids = [f["id"] for f in json.loads(first["geojson"].read_text())["features"]]
    other_ids = [f["id"] for f in json.loads(other["geojson"].read_text())["features"]]
    assert set(ids).isdisjoint(other_ids)


def test_overlay_leaves_the_input_alone_and_accepts_gray() -> None:
    image, nuclei = he_tile(size=64)
    before = image.copy()
    overlay = render_overlay(image, nuclei)
    np.testing.assert_array_equal(image, before)
    gray = render_overlay(image[..., 0], nuclei)
    assert gray.shape == overlay.shape
    assert render_overlay(image, nuclei, width=2).shape == overlay.shape


def test_real_opencv_contours_give_valid_qupath_polygons(tmp_path: Path) -> None:
    postprocess = pytest.importorskip("histostain.segmentation.postprocess")
    tile = generate_tile(11, 256)
    nuclei = postprocess.nuclei_from_labels(tile.inst_map, tile.type_map, mpp=tile.mpp)
    files = write_all(nuclei, tile.he, tmp_path, formats=["geojson"])
    assert qupath_geojson_problems(files["geojson"], image_size=(256, 256)) == []
    assert len(read_geojson(files["geojson"])) == len(nuclei)


# ------------------------------------------------------------------------------------------------- summary


def test_summary_csv_reads_back_with_csv(tmp_path: Path) -> None:
    _, typed = he_tile(size=64)
    _, ihc = ihc_image(96)
    rows = [summary_row("a.png", typed), summary_row("b.png", ihc), summary_row("c.png", Nuclei.empty(8, 8))]
    json.dumps(rows)  # the segment service stores each row as JSON
    path = write_summary_csv(rows, tmp_path / "summary.csv")
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        table = list(reader)
        columns = reader.fieldnames
    assert columns[:2] == ["image", "nuclei"]
    assert [r["image"] for r in table] == ["a.png", "b.png", "c.png"]
    assert int(table[0]["nuclei"]) == len(typed) and table[2]["nuclei"] == "0"
    assert {"Neoplastic", "mean_area_um2", "Negative", "3+", "positive_percent", "h_score", "mean_area_px"} <= set(
        columns
    )
    assert table[0]["positive_percent"] == "" and float(table[1]["h_score"]) == rows[1]["h_score"]
    assert table[2]["mean_area_px"] == "0"
    assert write_summary_csv([], tmp_path / "empty.csv").read_text() == "image,nuclei\n"


def test_summary_h_score_of_a_known_mix() -> None:
    nuclei = nuclei_from_maps(np.kron(np.arange(1, 11, dtype=np.int32).reshape(2, 5), np.ones((3, 3), np.int32)))
    nuclei.measurements["positivity"] = np.array([0, 0, 0, 0, 1, 1, 2, 2, 3, 3])
    row = summary_row("mix", nuclei)
    assert (row["Negative"], row["1+"], row["2+"], row["3+"]) == (4, 2, 2, 2)
    assert row["positive_percent"] == 60.0
    assert row["h_score"] == 120.0  # 1 x 20 + 2 x 20 + 3 x 20


def test_docs_example_overlay_is_small(tmp_path: Path) -> None:
    path = Path(__file__).parents[2] / "docs" / "images" / "segment_overlay_example.png"
    with Image.open(path) as example:
        assert example.mode == "RGB" and max(example.size) <= 800
    assert path.stat().st_size < 600_000
