"""The layout writers: files read back with plain numpy / PIL / tifffile give the ground truth."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image
from scipy import ndimage as ndi

from histostain.errors import ConfigError, InputError
from histostain.synth import generate_tile, tile_seeds, write_dataset
from histostain.synth.dataset import read_manifest


def digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def png(path: Path) -> tuple[str, np.ndarray]:
    with Image.open(path) as image:
        return image.mode, np.asarray(image)


# ------------------------------------------------------------------------------------------------ BCI


def test_bci_layout(tmp_path):
    summary = write_dataset("bci", tmp_path / "bci", n=10, size=64, seed=1)
    root = tmp_path / "bci" / "BCI_dataset"
    names = {}
    for stain in ("HE", "IHC"):
        for split in ("train", "test"):
            names[stain, split] = sorted(p.name for p in (root / stain / split).glob("*.png"))
    assert names["HE", "train"] == names["IHC", "train"] and names["HE", "test"] == names["IHC", "test"]
    assert len(names["HE", "train"]) + len(names["HE", "test"]) == 10 and names["HE", "test"]
    pattern = re.compile(r"^(\d{5})_(train|test)_([0-3]\+?)\.png$")
    levels = set()
    for (_, split), files in names.items():
        numbers = []
        for name in files:
            match = pattern.match(name)
            assert match and match.group(2) == split, name
            assert match.group(3) != "0+"
            levels.add(match.group(3))
            numbers.append(int(match.group(1)))
        assert sorted(numbers) == list(range(len(numbers)))
    assert levels == {"0", "1+", "2+", "3+"}
    mode, he = png(root / "HE" / "train" / names["HE", "train"][0])
    _, ihc = png(root / "IHC" / "train" / names["HE", "train"][0])
    assert mode == "RGB" and he.shape == (64, 64, 3) and not np.array_equal(he, ihc)
    assert summary.files_written == 2 * 10 + 2  # pairs, README, synth.json


# ------------------------------------------------------------------------------------------------ PanNuke


def test_pannuke_layout_round_trips(tmp_path):
    n, size = 5, 64
    summary = write_dataset("pannuke", tmp_path / "pn", n=n, size=size, seed=4, folds=2)
    assert summary.quirk_records == []
    seeds = tile_seeds(4, n)
    index = 0
    for fold, count in ((1, 3), (2, 2)):
        base = tmp_path / "pn" / f"Fold {fold}"
        images = np.load(base / f"images/fold{fold}/images.npy", mmap_mode="r")
        masks = np.load(base / f"masks/fold{fold}/masks.npy", mmap_mode="r")
        types = np.load(base / f"images/fold{fold}/types.npy", mmap_mode="r")  # plain unicode, no pickle
        assert images.dtype == np.float64 and images.shape == (count, size, size, 3)
        assert masks.dtype == np.float64 and masks.shape == (count, size, size, 6)
        assert types.dtype.kind == "U" and types.shape == (count,)
        for k in range(count):
            tile = generate_tile(seeds[index], size)
            index += 1
            assert np.array_equal(images[k], tile.he.astype(np.float64))
            assert types[k] == tile.tissue
            classes = masks[k, ..., :5]
            assert np.array_equal(masks[k, ..., 5], (classes.sum(axis=-1) == 0).astype(float))
            assert ((classes > 0).sum(axis=-1) <= 1).all()
            rebuilt = classes.max(axis=-1).astype(np.int32)
            assert np.array_equal(rebuilt, tile.inst_map)
            type_map = np.where(rebuilt > 0, classes.argmax(axis=-1) + 1, 0)
            assert np.array_equal(type_map, tile.type_map)


def test_pannuke_quirks_are_where_documented(tmp_path):
    summary = write_dataset("pannuke", tmp_path / "pn", n=7, size=128, seed=2, folds=1, quirks=True)
    records = {r["quirk"]: r for r in summary.quirk_records}
    assert set(records) == {
        "background_all_zero",
        "pixel_in_two_channels",
        "id_split",
        "id_reused_across_channels",
        "ids_above_1000",
    }
    assert not any("skipped" in r for r in records.values())
    assert read_manifest(tmp_path / "pn")["quirk_records"] == summary.quirk_records
    masks = np.load(tmp_path / "pn" / "Fold 1/masks/fold1/masks.npy")

    void = masks[records["background_all_zero"]["patch"]]
    assert not void.any()  # no nuclei and an all-zero background channel

    r = records["pixel_in_two_channels"]
    x, y = r["pixel"]
    values = masks[r["patch"], y, x, r["channels"]]
    assert np.all(values > 0) and r["channels"][0] != r["channels"][1]

    r = records["id_split"]
    _, pieces = ndi.label(masks[r["patch"], ..., r["channel"]] == r["id"])
    assert pieces == 2

    r = records["id_reused_across_channels"]
    for channel in r["channels"]:
        assert (masks[r["patch"], ..., channel] == r["id"]).any()

    r = records["ids_above_1000"]
    ids = np.unique(masks[r["patch"], ..., :5])
    ids = ids[ids > 0]
    assert ids.min() > 1000 and ids.tolist() == r["ids"]
    assert ids.max() - ids.min() + 1 > ids.size  # not contiguous

    # Patches without quirks stay clean.
    clean = masks[6]
    assert np.array_equal(clean[..., 5], (clean[..., :5].sum(-1) == 0).astype(float))


def test_pannuke_option_errors(tmp_path):
    with pytest.raises(ConfigError, match="folds"):
        write_dataset("pannuke", tmp_path / "a", n=2, size=64, folds=3)
    with pytest.raises(ConfigError, match="quirks"):
        write_dataset("pannuke", tmp_path / "b", n=3, size=64, folds=3, quirks=True)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


# ------------------------------------------------------------------------------------------------ EndoNuke


def read_points(path: Path) -> np.ndarray:
    rows = [line.split() for line in path.read_text().splitlines() if line.strip()]
    return np.array(rows, dtype=np.int64).reshape(-1, 3)


def test_endonuke_layout_and_quirks(tmp_path):
    summary = write_dataset("endonuke", tmp_path / "en", n=12, seed=6, quirks=True)
    data = tmp_path / "en" / "data"
    images = sorted((data / "dataset/images").glob("*.png"), key=lambda p: int(p.stem))
    assert [int(p.stem) for p in images] == list(range(1000, 1012))
    sizes = set()
    for path in images:
        mode, rgba = png(path)
        assert mode == "RGBA" and (rgba[..., 3] == 255).all()
        sizes.add(rgba.shape[:2])
    assert sizes == {(200, 200), (400, 400)}

    # Lists and the master yml resolve relative to their own folders.
    yml = (data / "master_ymls/bulk.yaml").read_text().splitlines()
    assert yml[0] == "images_lists:" and "labels_lists:" in yml
    split = yml.index("labels_lists:")
    image_lists = [line[2:] for line in yml[1:split]]
    label_lists = [line[2:] for line in yml[split + 1 :]]
    assert len(image_lists) == len(label_lists) > 1
    pairs = []
    for image_list, label_list in zip(image_lists, label_lists, strict=True):
        image_list_path = (data / "master_ymls" / image_list).resolve()
        label_list_path = (data / "master_ymls" / label_list).resolve()
        for image_rel, label_rel in zip(
            image_list_path.read_text().split(), label_list_path.read_text().split(), strict=True
        ):
            image_file, label_file = (
                (image_list_path.parent / image_rel).resolve(),
                (label_list_path.parent / label_rel).resolve(),
            )
            assert image_file.is_file() and label_file.is_file() and image_file.stem == label_file.stem
            assert label_file.parent.parent.name == "bulk"
            pairs.append((image_file, label_file))
    assert len(pairs) == 12

    seeds = tile_seeds(6, 12)
    edge_seen = trailing_seen = empty_seen = 0
    for image_file, label_file in pairs:
        width = png(image_file)[1].shape[1]
        text = label_file.read_text()
        points = read_points(label_file)
        if not text:
            empty_seen += 1
            continue
        trailing_seen += text.endswith(" \n")
        assert set(points[:, 2]) <= {0, 1, 2}
        assert points[:, :2].min() >= 0 and points[:, :2].max() <= width
        edge_seen += (points[:, 0] == width).any()
        index = int(image_file.stem) - 1000
        tile = generate_tile(seeds[index], width, mpp=100.0 / width, inflammation=0.15, kind="stromal")
        if index % 2 == 1:  # odd tiles are stromal (even ones glandular); regenerate and compare
            assert len(points) == len(tile.nuclei)
            assert np.abs(points[:, :2] - tile.centroids).max() <= 1.0
    assert empty_seen == 1 and edge_seen == 1 and trailing_seen >= 3
    kinds = {r["quirk"] for r in summary.quirk_records}
    assert kinds == {"empty_label_file", "trailing_spaces", "point_on_right_edge"}


def test_endonuke_without_quirks_has_clean_files(tmp_path):
    write_dataset("endonuke", tmp_path / "en", n=3, size=128, seed=6)
    for label in (tmp_path / "en/data/dataset/labels/bulk").rglob("*.txt"):
        text = label.read_text()
        assert text and " \n" not in text


# ------------------------------------------------------------------------------------------------ tiles


def test_tiles_layout_round_trips(tmp_path):
    write_dataset("tiles", tmp_path / "t", n=3, size=96, seed=8)
    seeds = tile_seeds(8, 3)
    for i in range(3):
        name = f"tile_{i:05d}"
        tile = generate_tile(seeds[i], 96)
        assert np.array_equal(png(tmp_path / "t/ihc" / f"{name}.png")[1], tile.ihc)
        assert np.array_equal(png(tmp_path / "t/he" / f"{name}.png")[1], tile.he)
        inst = tifffile.imread(tmp_path / "t/ground_truth" / f"{name}_inst.tif")
        types = tifffile.imread(tmp_path / "t/ground_truth" / f"{name}_type.tif")
        assert inst.dtype == np.int32 and np.array_equal(inst, tile.inst_map)
        assert types.dtype == np.uint8 and np.array_equal(types, tile.type_map)
        lines = (tmp_path / "t/ground_truth" / f"{name}.txt").read_text().splitlines()
        points = np.array([line.split() for line in lines], dtype=float).reshape(-1, 3)
        assert len(points) == len(tile.nuclei)
        assert np.allclose(points[:, :2], tile.centroids, atol=1e-3)
        assert points[:, 2].tolist() == tile.types.tolist()
    assert (tmp_path / "t/tiles.csv").read_text().count("\n") == 4


# ------------------------------------------------------------------------------------------------ run behaviour


@pytest.mark.parametrize("layout", ["bci", "pannuke", "endonuke", "tiles"])
def test_same_seed_same_bytes(tmp_path, layout):
    options = {"folds": 1} if layout == "pannuke" else {}
    size = None if layout == "endonuke" else 64
    write_dataset(layout, tmp_path / "a", n=3, size=size, seed=5, quirks=layout != "tiles", **options)
    write_dataset(layout, tmp_path / "b", n=3, size=size, seed=5, quirks=layout != "tiles", **options)
    write_dataset(layout, tmp_path / "c", n=3, size=size, seed=6, quirks=layout != "tiles", **options)
    a, b, c = digest(tmp_path / "a"), digest(tmp_path / "b"), digest(tmp_path / "c")
    # every data file is byte-identical; synth.json differs only in its provenance (out path, creation time)
    record_a, record_b = read_manifest(tmp_path / "a"), read_manifest(tmp_path / "b")
    assert record_a.pop("provenance")["options"]["out"] != record_b.pop("provenance")["options"]["out"]
    assert record_a == record_b
    del a["synth.json"], b["synth.json"], c["synth.json"]
    assert a == b
    assert set(a) == set(c) and a != c


def test_refuses_non_empty_output_unless_overwrite(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    with pytest.raises(ConfigError, match="not empty"):
        write_dataset("tiles", out, n=1, size=64)
    assert (out / "keep.txt").read_text() == "precious"
    write_dataset("tiles", out, n=1, size=64, overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "ihc/tile_00000.png").is_file()
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError):
        write_dataset("tiles", tmp_path / "file", n=1, size=64)
    empty = tmp_path / "empty"
    empty.mkdir()
    write_dataset("tiles", empty, n=1, size=64)  # an empty folder is fine without --overwrite


@pytest.mark.parametrize("overwrite", [False, True])
def test_interrupted_run_leaves_nothing_that_looks_complete(tmp_path, monkeypatch, overwrite):
    import histostain.synth.writers.tiles as tiles_writer

    out = tmp_path / "out"
    if overwrite:
        out.mkdir()
        (out / "old.txt").write_text("old")
    calls = {"n": 0}
    real = tiles_writer.write_image

    def failing(path, image):
        calls["n"] += 1
        if calls["n"] > 3:
            raise OSError("disk full")
        return real(path, image)

    monkeypatch.setattr(tiles_writer, "write_image", failing)
    with pytest.raises(OSError, match="disk full"):
        write_dataset("tiles", out, n=4, size=64, overwrite=overwrite)
    if overwrite:
        assert [p.name for p in out.iterdir()] == ["old.txt"]  # the old dataset is untouched
    else:
        assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == (["out"] if overwrite else [])  # no staging folder left
