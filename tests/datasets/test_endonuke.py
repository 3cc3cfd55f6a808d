"""``prepare endonuke`` on synthetic copies of the published layout (with its quirks).

Expectations are computed independently: source keypoints are read back with plain Python, rescaled with the
documented formula written out here, and compared with what the prepared files hold (read with numpy/PIL).
"""

from __future__ import annotations

import json
import shutil
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from histostain.datasets import endonuke
from histostain.datasets.endonuke import crop_windows, prepare_endonuke, resample_points
from histostain.errors import ConfigError, DatasetLayoutError, HistostainError, InputError
from histostain.synth import write_dataset

N_TILES = 8
DATA = Path("data/dataset")


# ------------------------------------------------------------------------------------------------ helpers


def source_points(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Plain reading of an EndoNuke txt: whitespace-split ``x y c`` lines; blank lines ignored."""
    rows = [line.split() for line in path.read_text().splitlines() if line.strip()]
    xy = np.array([[float(r[0]), float(r[1])] for r in rows], dtype=np.float64).reshape(-1, 2)
    classes = np.array([int(r[2]) for r in rows], dtype=np.int64)
    return xy, classes


def prepared_points(path: Path) -> tuple[np.ndarray, np.ndarray]:
    data = np.loadtxt(path, ndmin=2) if path.stat().st_size else np.zeros((0, 3))
    return data[:, :2], data[:, 2].astype(np.int64)


def expected_points(xy: np.ndarray, width: int, out: int) -> np.ndarray:
    """The documented rule, written out by hand: clamp x == W to W - 1, then (x + 0.5) * s - 0.5."""
    s = out / width
    result = []
    for x, y in xy.tolist():
        x, y = min(x, width - 1), min(y, width - 1)
        result.append([min(max((x + 0.5) * s - 0.5, 0.0), out - 1), min(max((y + 0.5) * s - 0.5, 0.0), out - 1)])
    return np.array(result, dtype=np.float64).reshape(-1, 2)


def label_files(source: Path) -> dict[str, Path]:
    return {p.stem: p for p in (source / DATA / "labels/bulk").glob("*/*.txt")}


def manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("endonuke") / "download"
    write_dataset("endonuke", root, N_TILES, seed=3, quirks=True)
    return root


@pytest.fixture(scope="module")
def prepared(source: Path) -> Path:
    out = source.parent / "prepared_none"
    prepare_endonuke(source, out)
    return out


@pytest.fixture(scope="module")
def prepared_seed(source: Path) -> Path:
    out = source.parent / "prepared_seed"
    prepare_endonuke(source / "data", out, crops="seed")  # the data/ folder itself is accepted too
    return out


@pytest.fixture
def broken(source: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "broken"
    shutil.copytree(source, copy)
    return copy


# ------------------------------------------------------------------------------------------------ happy paths


def test_fixture_has_the_published_quirks(source: Path) -> None:
    quirks = {q["quirk"] for q in json.loads((source / "synth.json").read_text())["quirk_records"]}
    assert {"empty_label_file", "trailing_spaces", "point_on_right_edge"} <= quirks
    sizes = {Image.open(p).size for p in (source / DATA / "images").glob("*.png")}
    assert sizes == {(200, 200), (400, 400)}
    assert {Image.open(p).mode for p in (source / DATA / "images").glob("*.png")} == {"RGBA"}


def test_whole_tiles_are_resampled_to_025_mpp_with_exact_keypoints(source: Path, prepared: Path) -> None:
    m = manifest(prepared)
    assert m["dataset"] == "endonuke" and m["options"]["mpp"] == 0.25 and m["options"]["crops"] == "none"
    assert sum(m["splits"].values()) == len(m["samples"]) == N_TILES
    labels = label_files(source)
    classes_seen: set[int] = set()
    for sample in m["samples"]:
        stem = sample["id"]
        assert stem == sample["source_image"]
        folder = prepared / sample["split"]
        image = Image.open(folder / "images" / f"{stem}.png")
        assert (image.mode, image.size) == ("RGB", (400, 400))
        src = np.asarray(Image.open(source / DATA / "images" / f"{stem}.png"))[..., :3]
        width = src.shape[1]
        assert sample["source_size"] == [width, width] and sample["scale"] == 400 / width
        assert sample["crop"] == [0, 0, 400, 400] and sample["dropped_points"] == 0
        assert sample["annotator"] == labels[stem].parent.name
        out = np.asarray(image).astype(np.float64)
        if width == 400:
            assert np.array_equal(out, src)  # already at 0.25 um/px: copied unchanged
        else:  # 2x upsampling, pixel-centre aligned: 2x2 block means give the source back closely
            blocks = out.reshape(200, 2, 200, 2, 3).mean(axis=(1, 3))
            assert np.abs(blocks - src).mean() < 3.0
        xy, classes = source_points(labels[stem])
        got_xy, got_classes = prepared_points(folder / "labels" / f"{stem}.txt")
        assert sample["n_points"] == len(xy) == len(got_xy)
        np.testing.assert_allclose(got_xy, expected_points(xy, width, 400), atol=1e-4)
        assert np.array_equal(got_classes, classes)  # class codes are copied, never remapped
        classes_seen |= set(classes.tolist())
    assert classes_seen <= {0, 1, 2} and 0 in classes_seen
    synth = json.loads((source / "synth.json").read_text())["quirk_records"]
    assert m["counters"]["empty_label_files"] == sum(q["quirk"] == "empty_label_file" for q in synth) == 1
    assert m["counters"]["edge_points_clamped"] == sum(q["quirk"] == "point_on_right_edge" for q in synth) == 1
    assert m["counters"]["images_without_labels"] == 0 and m["counters"]["dropped_points"] == 0


def test_edge_point_is_clamped_then_scaled(source: Path, prepared: Path) -> None:
    record = next(q for q in json.loads((source / "synth.json").read_text())["quirk_records"] if "line" in q)
    stem = Path(record["file"]).stem
    sample = next(s for s in manifest(prepared)["samples"] if s["id"] == stem)
    got_xy, _ = prepared_points(prepared / sample["split"] / "labels" / f"{stem}.txt")
    assert record["x"] == 200  # x == W in the 200 px source
    assert got_xy[record["line"] - 1, 0] == pytest.approx((199 + 0.5) * 2 - 0.5)  # 398.5, inside the tile


def test_hand_made_tile_keypoint_lands_on_the_resampled_pixel(tmp_path: Path) -> None:
    """One bright pixel at (x=50, y=120) in a 200 px tile: after 2x resampling the blob centre is (100.5, 240.5)."""
    root = tmp_path / "data" / "dataset"
    (root / "labels" / "bulk" / "stud3").mkdir(parents=True)
    (root / "images").mkdir()
    rgba = np.zeros((200, 200, 4), dtype=np.uint8)
    rgba[..., 3] = 255
    rgba[120, 50, :3] = 255
    Image.fromarray(rgba).save(root / "images" / "7.png")
    (root / "labels" / "bulk" / "stud3" / "7.txt").write_text("50 120 1\n0 0 0 \n200 200 2\n\n")
    prepare_endonuke(tmp_path, tmp_path / "out", fractions="1,0,0")
    image = np.asarray(Image.open(tmp_path / "out" / "train" / "images" / "7.png")).astype(np.float64)[..., 0]
    rows, cols = np.mgrid[0:400, 0:400]
    assert (cols * image).sum() / image.sum() == pytest.approx(100.5, abs=1e-6)
    assert (rows * image).sum() / image.sum() == pytest.approx(240.5, abs=1e-6)
    assert (tmp_path / "out" / "train" / "labels" / "7.txt").read_text() == "100.5 240.5 1\n0.5 0.5 0\n398.5 398.5 2\n"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["manifest.json", "train"]  # empty splits omitted


def test_hand_made_seed_crop_boundaries(tmp_path: Path) -> None:
    """A 400 px tile (scale 1): a point belongs to a crop when x0 <= x < x0 + 256 (same for y)."""
    root = tmp_path / "data" / "dataset"
    (root / "labels" / "bulk" / "ptg1").mkdir(parents=True)
    (root / "images").mkdir()
    Image.fromarray(np.full((400, 400, 4), 255, dtype=np.uint8)).save(root / "images" / "12.png")
    lines = ["255 0 0", "256 0 1", "143 255 2", "144 256 0", "72 399 1", "71 399 1", "400 400 2"]
    (root / "labels" / "bulk" / "ptg1" / "12.txt").write_text("\n".join(lines) + "\n")
    summary = prepare_endonuke(tmp_path, tmp_path / "out", crops="seed", fractions="0,0,1")
    folder = tmp_path / "out" / "test" / "labels"
    # tl [0,256)^2: (255,0) (143,255); tr x in [144,400), y in [0,256): (255,0) (256,0);
    # bc x in [72,328), y in [144,400): (143,255) (144,256) (72,399), and (400,400) -> clamped (399,399) is outside
    assert (folder / "12_tl.txt").read_text() == "255 0 0\n143 255 2\n"
    assert (folder / "12_tr.txt").read_text() == "111 0 0\n112 0 1\n"
    assert (folder / "12_bc.txt").read_text() == "71 111 2\n72 112 0\n0 255 1\n"
    assert summary.counters["dropped_points"] == (7 - 2) + (7 - 2) + (7 - 3)
    # never in any crop: (71,399) and (399,399) (the clamped edge point in the bottom-right corner)
    assert summary.counters["points_outside_all_crops"] == 2
    assert summary.counters["edge_points_clamped"] == 1


def test_resample_points_hand_cases() -> None:
    pts = np.array([[0, 0], [3, 5], [400, 400]], dtype=np.float64)
    # downsampling 400 -> 200: (x + 0.5) / 2 - 0.5; x = 0 gives -0.25 and x = W (clamped to 399) gives 199.25:
    # both are clipped to the outermost pixel centres 0 and 199
    np.testing.assert_allclose(resample_points(pts, 400, 400, 200, 200), [[0, 0], [1.25, 2.25], [199, 199]])
    np.testing.assert_allclose(resample_points(pts[:2], 400, 400, 400, 400), pts[:2])  # identity
    np.testing.assert_allclose(
        resample_points([[10, 20]], 200, 200, 256, 256), [[10.5 * 1.28 - 0.5, 20.5 * 1.28 - 0.5]]
    )


def test_crop_windows_hand_cases() -> None:
    assert [(c.suffix, c.x0, c.y0) for c in crop_windows(400, 400, "seed", 256, 64)] == [
        ("tl", 0, 0),
        ("tr", 144, 0),
        ("bc", 72, 144),
    ]
    grid = crop_windows(400, 400, "grid", 128, 32)  # stride 96: 0, 96, 192, then flush 272
    assert [(c.x0, c.y0) for c in grid[:5]] == [(0, 0), (96, 0), (192, 0), (272, 0), (0, 96)]
    assert len(grid) == 16 and grid[-1].suffix == "y272_x272"
    assert [(c.x0, c.y0) for c in crop_windows(256, 256, "grid", 256, 64)] == [(0, 0)]
    assert [(c.x0, c.width) for c in crop_windows(400, 400, "none", 256, 64)] == [(0, 400)]


def test_seed_crops_positions_points_and_dropped_counts(source: Path, prepared: Path, prepared_seed: Path) -> None:
    m = manifest(prepared_seed)
    assert len(m["samples"]) == 3 * N_TILES
    positions = {"tl": (0, 0), "tr": (400 - 256, 0), "bc": ((400 - 256) // 2, 400 - 256)}
    whole = {s["id"]: s for s in manifest(prepared)["samples"]}
    labels = label_files(source)
    dropped_total = outside_all = 0
    for stem, path in labels.items():
        width = Image.open(source / DATA / "images" / f"{stem}.png").size[0]
        xy, classes = source_points(path)
        pts = expected_points(xy, width, 400)
        covered = np.zeros(len(pts), dtype=bool)
        full = np.asarray(Image.open(prepared / whole[stem]["split"] / "images" / f"{stem}.png"))
        for name, (x0, y0) in positions.items():
            sample = next(s for s in m["samples"] if s["id"] == f"{stem}_{name}")
            assert sample["crop"] == [x0, y0, 256, 256] and sample["source_image"] == stem
            folder = prepared_seed / sample["split"]
            crop = np.asarray(Image.open(folder / "images" / f"{stem}_{name}.png"))
            assert np.array_equal(crop, full[y0 : y0 + 256, x0 : x0 + 256])
            inside = np.array([x0 <= x < x0 + 256 and y0 <= y < y0 + 256 for x, y in pts.tolist()], dtype=bool)
            covered |= inside
            got_xy, got_classes = prepared_points(folder / "labels" / f"{stem}_{name}.txt")
            np.testing.assert_allclose(got_xy, pts[inside] - [x0, y0], atol=1e-4)
            assert np.array_equal(got_classes, classes[inside])
            assert sample["n_points"] == inside.sum() and sample["dropped_points"] == len(pts) - inside.sum()
            dropped_total += len(pts) - int(inside.sum())
        outside_all += int((~covered).sum())
    assert m["counters"]["dropped_points"] == dropped_total > 0
    assert m["counters"]["points_outside_all_crops"] == outside_all > 0


def test_no_tile_in_two_splits_and_folders_match_records(prepared_seed: Path) -> None:
    m = manifest(prepared_seed)
    split_of: dict[str, set[str]] = {}
    for sample in m["samples"]:
        split_of.setdefault(sample["source_image"], set()).add(sample["split"])
    assert all(len(splits) == 1 for splits in split_of.values())
    assert len({next(iter(s)) for s in split_of.values()}) == 3  # 8 tiles at 0.6/0.2/0.2 fill all three splits
    for split, count in m["splits"].items():
        ids = sorted(s["id"] for s in m["samples"] if s["split"] == split)
        assert sorted(p.stem for p in (prepared_seed / split / "images").iterdir()) == ids
        assert sorted(p.stem for p in (prepared_seed / split / "labels").iterdir()) == ids
        assert len(ids) == count


def test_grid_crops_cover_every_point(source: Path, tmp_path: Path) -> None:
    out = tmp_path / "grid"
    prepare_endonuke(source, out, mpp=0.5, crops="grid", crop_size=128, grid_overlap=32)  # 200 px tiles
    m = manifest(out)
    starts = [0, 72]  # stride 96 over 200 px: 0, then flush with the edge at 200 - 128
    expected_ids = {f"{stem}_y{y}_x{x}" for stem in label_files(source) for y in starts for x in starts}
    assert {s["id"] for s in m["samples"]} == expected_ids
    assert m["counters"]["points_outside_all_crops"] == 0
    for sample in m["samples"][:8]:
        x0, y0, w, h = sample["crop"]
        assert (w, h) == (128, 128)
        got_xy, _ = prepared_points(out / sample["split"] / "labels" / f"{sample['id']}.txt")
        assert ((got_xy >= 0) & (got_xy < 128)).all()
        assert Image.open(out / sample["split"] / "images" / f"{sample['id']}.png").size == (128, 128)


def test_zip_source_gives_the_same_dataset(source: Path, prepared: Path, tmp_path: Path) -> None:
    archive = tmp_path / "data.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        for path in sorted((source / "data").rglob("*")):
            if path.is_file():
                handle.write(path, path.relative_to(source).as_posix())
    out = tmp_path / "from_zip"
    summary = prepare_endonuke(archive, out)
    assert not summary.skipped and manifest(out)["source"]["kind"] == "zip"
    assert manifest(out)["samples"] == manifest(prepared)["samples"]
    for file in prepared.rglob("*"):
        if file.is_file() and file.name != "manifest.json":
            assert (out / file.relative_to(prepared)).read_bytes() == file.read_bytes()
    assert leftovers(tmp_path) == []  # the scratch extraction is gone


def test_rerun_is_a_no_op_and_other_options_are_refused(source: Path, prepared: Path) -> None:
    files = [p for p in prepared.rglob("*") if p.is_file()]
    stamps = {p: p.stat().st_mtime_ns for p in files}
    summary = prepare_endonuke(source, prepared)
    assert summary.skipped and summary.splits == manifest(prepared)["splits"]
    assert {p: p.stat().st_mtime_ns for p in files} == stamps
    with pytest.raises(ConfigError) as info:
        prepare_endonuke(source, prepared, crops="seed", mpp=0.5)
    assert "crops none -> seed" in info.value.message and "mpp 0.25 -> 0.5" in info.value.message
    assert {p: p.stat().st_mtime_ns for p in files} == stamps


def test_overwrite_replaces_the_preparation(source: Path, tmp_path: Path) -> None:
    out = tmp_path / "prepared"
    prepare_endonuke(source, out, mpp=1.0)
    assert {Image.open(p).size for p in out.glob("*/images/*.png")} == {(100, 100)}
    summary = prepare_endonuke(source, out, mpp=2.0, overwrite=True)
    assert not summary.skipped and manifest(out)["options"]["mpp"] == 2.0
    assert {Image.open(p).size for p in out.glob("*/images/*.png")} == {(50, 50)}
    assert len(list(out.glob("*/images/*.png"))) == N_TILES and leftovers(tmp_path) == []


# ------------------------------------------------------------------------------------------------ errors


def _first_label(root: Path, annotator: str = "ptg2") -> Path:
    return sorted((root / DATA / "labels/bulk" / annotator).glob("*.txt"))[0]


def _append(line: str, annotator: str = "ptg3") -> Callable[[Path], str]:
    """Append a line to the first label file of ``annotator`` (ptg3: tile 1002, 200 px; ptg2: 1001, 400 px with
    trailing spaces)."""

    def mutate(root: Path) -> str:
        label = _first_label(root, annotator)
        n_lines = len(label.read_text().splitlines())
        label.write_text(label.read_text() + line)
        return f"{label.relative_to(root).as_posix()}:{n_lines + 1}"

    return mutate


def _remove_image(root: Path) -> str:
    label = _first_label(root)
    (root / DATA / "images" / f"{label.stem}.png").unlink()
    return label.relative_to(root).as_posix()


def _bad_label_name(root: Path) -> str:
    path = root / DATA / "labels/bulk/ptg1/notes.txt"
    path.write_text("1 1 0\n")
    return path.relative_to(root).as_posix()


def _bad_image_name(root: Path) -> str:
    path = root / DATA / "images/copy of 1001.png"
    shutil.copy(root / DATA / "images/1001.png", path)
    return path.relative_to(root).as_posix()


def _non_square(root: Path) -> str:
    label = _first_label(root)
    path = root / DATA / "images" / f"{label.stem}.png"
    Image.fromarray(np.zeros((150, 200, 4), dtype=np.uint8)).save(path)
    return path.relative_to(root).as_posix()


def _corrupt_image(root: Path) -> str:
    label = _first_label(root)
    path = root / DATA / "images" / f"{label.stem}.png"
    path.write_bytes(b"not a png at all")
    return path.relative_to(root).as_posix()


def _two_annotators(root: Path) -> str:
    label = _first_label(root, "ptg1")
    shutil.copy(label, root / DATA / "labels/bulk/stud4" / label.name)
    return label.relative_to(root).as_posix()


def _no_layout(root: Path) -> str:
    shutil.rmtree(root / "data")
    return str(root)


@pytest.mark.parametrize(
    ("mutate", "error", "expected"),
    [
        (_remove_image, DatasetLayoutError, "image data/dataset/images/"),
        (_append("10 10 3\n", "ptg2"), DatasetLayoutError, "class 3"),
        (_append("5 5 -1\n"), DatasetLayoutError, "class -1"),
        (_append("10 10\n"), DatasetLayoutError, "no class code"),
        (_append("201 5 0\n"), DatasetLayoutError, "outside the 200x200 tile"),
        (_append("401 5 0\n", "ptg2"), DatasetLayoutError, "outside the 400x400 tile"),
        (_append("5 200.5 0\n"), DatasetLayoutError, "outside the 200x200 tile"),
        (_append("-1 5 0\n"), DatasetLayoutError, "outside"),
        (_append("10 abc 1\n"), DatasetLayoutError, "expected 'x y [class]'"),
        (_bad_label_name, DatasetLayoutError, "<integer id>.txt"),
        (_bad_image_name, DatasetLayoutError, "<integer id>.png"),
        (_non_square, DatasetLayoutError, "200x150 pixels"),
        (_corrupt_image, InputError, "cannot read image"),
        (_two_annotators, DatasetLayoutError, "also labelled in"),
        (_no_layout, DatasetLayoutError, "no EndoNuke layout"),
    ],
)
def test_validation_errors_name_the_file_and_write_nothing(
    broken: Path, mutate: Callable[[Path], str], error: type[HistostainError], expected: str
) -> None:
    where = mutate(broken)
    out = broken.parent / "out"
    with pytest.raises(error) as info:
        prepare_endonuke(broken, out)
    assert type(info.value) is error
    assert where in info.value.message and expected in info.value.message
    assert "\n" not in info.value.one_line()
    assert str(broken) not in info.value.message or where == str(broken)  # paths shown as the user knows them
    assert not out.exists() and leftovers(broken.parent) == []


def test_two_annotators_can_be_resolved_with_annotator(broken: Path) -> None:
    _two_annotators(broken)
    out = broken.parent / "out"
    prepare_endonuke(broken, out, annotators=["ptg1"], mpp=2.0)
    m = manifest(out)
    assert {s["annotator"] for s in m["samples"]} == {"ptg1"}
    ptg1 = {p.stem for p in (broken / DATA / "labels/bulk/ptg1").glob("*.txt")}
    assert {s["source_image"] for s in m["samples"]} == ptg1
    assert m["counters"]["images_of_unselected_annotators"] == N_TILES - len(ptg1)
    assert m["options"]["annotators"] == ["ptg1"]


def test_zip_errors_name_the_member_inside_the_archive(broken: Path) -> None:
    where = _append("10 10 7\n")(broken)
    archive = broken.parent / "data.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        for path in sorted((broken / "data").rglob("*")):
            handle.write(path, path.relative_to(broken).as_posix())
    with pytest.raises(DatasetLayoutError) as info:
        prepare_endonuke(archive, broken.parent / "out")
    assert f"data.zip:{where}" in info.value.message
    assert not (broken.parent / "out").exists() and leftovers(broken.parent) == []


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"crops": "random"}, "--crops"),
        ({"crops": "seed", "crop_size": 512}, "smaller than --crop-size 512"),
        ({"crops": "grid", "crop_size": 128, "grid_overlap": 128}, "--grid-overlap"),
        ({"crop_size": 0}, "--crop-size"),
        ({"mpp": 0.0}, "--mpp"),
        ({"mpp": 50.0}, "--mpp"),
        ({"annotators": ["ptg9"]}, "unknown --annotator ptg9"),
        ({"fractions": "0.5,0.5"}, "--fractions"),
        ({"seed": -1}, "--seed"),
    ],
)
def test_bad_options_are_config_errors(source: Path, tmp_path: Path, options: dict, expected: str) -> None:
    out = tmp_path / "out"
    with pytest.raises(ConfigError) as info:
        prepare_endonuke(source, out, **options)
    assert expected in info.value.message
    assert not out.exists() and leftovers(tmp_path) == []


def test_crop_size_error_names_a_tile_and_hints(source: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        prepare_endonuke(source, tmp_path / "out", crops="seed", mpp=0.5)  # 200 px < 256
    assert "data/dataset/images/" in info.value.message and "--crops none" in (info.value.hint or "")


# ------------------------------------------------------------------------------------------ oddities, interruption


def test_recoverable_oddities_are_counted(broken: Path, caplog: pytest.LogCaptureFixture) -> None:
    images = broken / DATA / "images"
    shutil.copy(images / "1001.png", images / "5000.png")  # an image without labels (like the agreement tiles)
    (broken / DATA / "labels/bulk/ptg9").mkdir()
    (broken / DATA / "labels/bulk/ptg9/1001.txt").write_text("1 1 0\n")  # an unknown annotator's folder
    (broken / DATA / "labels/bulk/ptg1/.1000.txt").write_text("junk")  # hidden files (e.g. macOS ._*) are ignored
    out = broken.parent / "out"
    with caplog.at_level("WARNING", logger="histostain.datasets.endonuke"):
        summary = prepare_endonuke(broken, out, mpp=2.0)
    assert "ptg9" in caplog.text
    assert summary.counters["images_without_labels"] == 1
    assert summary.counters["unknown_annotator_files"] == 1
    assert summary.counters["empty_label_files"] == 1
    assert "5000" not in {s["source_image"] for s in manifest(out)["samples"]}
    assert sum(summary.splits.values()) == N_TILES


def test_interrupted_run_leaves_nothing_and_rerun_succeeds(
    source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    real = endonuke._write_sample
    calls = {"n": 0}

    def flaky(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(endonuke, "_write_sample", flaky)
    with pytest.raises(KeyboardInterrupt):
        prepare_endonuke(source, out, mpp=2.0)
    assert calls["n"] == 4 and not out.exists() and leftovers(tmp_path) == []
    (tmp_path / ".out.killed.partial").mkdir()  # what a hard kill would leave behind
    monkeypatch.setattr(endonuke, "_write_sample", real)
    summary = prepare_endonuke(source, out, mpp=2.0)
    assert not summary.skipped and len(manifest(out)["samples"]) == N_TILES
    assert leftovers(tmp_path) == []
