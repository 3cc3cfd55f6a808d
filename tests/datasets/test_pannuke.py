"""`prepare_pannuke` on miniature PanNuke folds written by the synth helper in the published layout."""

from __future__ import annotations

import json
import os
import shutil
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi

from histostain.datasets import pannuke
from histostain.datasets.pannuke import convert_masks, prepare_pannuke
from histostain.errors import ConfigError, DatasetLayoutError
from histostain.synth import generate_tile, tile_seeds, write_dataset

N, SIZE, SEED = 15, 96, 0  # 5 patches per fold: every quirk of fold 1 lands in its own patch
PER_FOLD = N // 3


# ------------------------------------------------------------------------------------------------- helpers


def fold_files(root: Path, k: int) -> dict[str, Path]:
    return {
        "images": root / f"Fold {k}" / "images" / f"fold{k}" / "images.npy",
        "types": root / f"Fold {k}" / "images" / f"fold{k}" / "types.npy",
        "masks": root / f"Fold {k}" / "masks" / f"fold{k}" / "masks.npy",
    }


def raw(root: Path, k: int) -> dict[str, np.ndarray]:
    return {name: np.load(path) for name, path in fold_files(root, k).items()}


def split_arrays(out: Path, split: str) -> dict[str, np.ndarray]:
    folder = out / split
    return {
        "images": np.load(folder / "images.npy"),
        "inst": np.load(folder / "inst_maps.npy"),
        "type": np.load(folder / "type_maps.npy"),
        "eval_masks": np.load(folder / "eval" / "masks.npy"),
        "eval_types": np.load(folder / "eval" / "types.npy"),
    }


def records(out: Path, split: str | None = None) -> list[dict]:
    samples = json.loads((out / "manifest.json").read_text())["samples"]
    return [s for s in samples if split is None or s["split"] == split]


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """True when two label maps group the pixels identically (background 0 must match too)."""
    if not np.array_equal(a == 0, b == 0):
        return False
    pairs = np.unique(np.stack([a.ravel(), b.ravel()]), axis=1)
    return pairs.shape[1] == np.unique(a).size == np.unique(b).size


def no_output(out: Path) -> bool:
    """Neither the output folder nor a partial/old sibling of it exists."""
    return not out.exists() and not list(out.parent.glob(f".{out.name}.*"))


def entry(raw_masks: np.ndarray, index: int) -> tuple[int, dict[str, int]]:
    """Independent count of the quirks in one raw patch: overlap pixels, split ids, colliding ids."""
    patch = raw_masks[index, ..., :5].astype(np.int64)
    overlap = int(((patch > 0).sum(-1) > 1).sum())
    split = 0
    seen: dict[int, int] = {}
    for c in range(5):
        for value in np.unique(patch[..., c]):
            if value == 0:
                continue
            seen[int(value)] = seen.get(int(value), 0) + 1
            _, pieces = ndi.label(patch[..., c] == value)  # default structure: 4-connected
            split += int(pieces > 1)
    return overlap, {"split": split, "colliding": sum(1 for v in seen.values() if v > 1)}


# ------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pannuke") / "pannuke"
    write_dataset("pannuke", root, N, size=SIZE, seed=SEED, quirks=True)
    quirks = json.loads((root / "synth.json").read_text())["quirk_records"]
    assert not [q for q in quirks if "skipped" in q], quirks  # the fixture must exercise every quirk
    return root


@pytest.fixture(scope="module")
def prepared(source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("prepared") / "official"
    prepare_pannuke(source, out)
    return out


@pytest.fixture(scope="module")
def quirks(source: Path) -> dict[str, dict]:
    return {q["quirk"]: q for q in json.loads((source / "synth.json").read_text())["quirk_records"]}


@pytest.fixture
def broken(source: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "broken"
    shutil.copytree(source, copy)
    return copy


# ---------------------------------------------------------------------------------------------- conversion


def test_convert_masks_hand_computed() -> None:
    classes = np.zeros((5, 6, 5), np.int64)
    classes[0, 0:2, 0] = 1500  # neoplastic id 1500, two pixels
    classes[0, 1, 3] = 7  # ... its second pixel is also dead id 7: overlap, the last channel (dead) wins
    classes[0, 2, 3] = 7
    classes[2, 0, 1] = 9  # inflammatory id 9: two pieces touching only diagonally -> two instances
    classes[3, 1, 1] = 9
    classes[4, 4, 2] = 9  # connective reuses id 9 -> its own instance
    classes[4, 5, 2] = 9
    result = convert_masks(classes)
    inst, types = result.inst_map, result.type_map
    assert inst.dtype == np.int32 and types.dtype == np.uint8
    expected_inst = np.zeros((5, 6), np.int32)
    expected_inst[0, 0] = 1  # raster order of the first pixel of each instance
    expected_inst[0, 1:3] = 2
    expected_inst[2, 0] = 3
    expected_inst[3, 1] = 4
    expected_inst[4, 4:6] = 5
    np.testing.assert_array_equal(inst, expected_inst)
    expected_types = np.zeros((5, 6), np.uint8)
    expected_types[0, 0] = 1
    expected_types[0, 1:3] = 4
    expected_types[2, 0] = expected_types[3, 1] = 2
    expected_types[4, 4:6] = 3
    np.testing.assert_array_equal(types, expected_types)
    assert (result.n_nuclei, result.overlap_pixels, result.instances_lost) == (5, 1, 0)
    assert (result.split_ids, result.extra_instances, result.colliding_ids) == (1, 1, 1)


def test_convert_masks_overlap_can_remove_or_split_an_instance() -> None:
    classes = np.zeros((3, 3, 5), np.int64)
    classes[1, 1, 0] = 4  # a one-pixel neoplastic nucleus entirely covered by an epithelial one
    classes[:, 1, 4] = 2  # epithelial id 2, a vertical bar through the centre
    classes[1, :, 2] = 3  # connective id 3, a horizontal bar: it loses the centre to epithelial -> two pieces
    result = convert_masks(classes)
    assert result.instances_lost == 1  # neoplastic 4 vanished
    assert result.overlap_pixels == 1
    assert result.split_ids == 1 and result.n_nuclei == 3
    assert result.type_map[1, 1] == 5 and set(result.type_map[1, [0, 2]]) == {3}
    assert result.inst_map[1, 0] != result.inst_map[1, 2]


def test_convert_masks_empty_patch() -> None:
    result = convert_masks(np.zeros((4, 4, 5), np.float64))
    assert result.n_nuclei == 0 and not result.inst_map.any() and not result.type_map.any()


# ---------------------------------------------------------------------------------------------- happy path


def test_official_split_layout_and_rows(source: Path, prepared: Path) -> None:
    manifest = json.loads((prepared / "manifest.json").read_text())
    assert manifest["dataset"] == "pannuke"
    assert manifest["splits"] == {"train": PER_FOLD, "val": PER_FOLD, "test": PER_FOLD}
    assert manifest["options"]["split"] == "official"
    for split, fold in (("train", 1), ("val", 2), ("test", 3)):
        samples = records(prepared, split)
        assert [s["id"] for s in samples] == [f"fold{fold}_{i}" for i in range(PER_FOLD)]
        assert {s["fold"] for s in samples} == {fold} and all(s["source_image"] == s["id"] for s in samples)
        arrays = split_arrays(prepared, split)
        source_arrays = raw(source, fold)
        assert arrays["images"].dtype == np.uint8 and arrays["images"].shape == (PER_FOLD, SIZE, SIZE, 3)
        assert arrays["inst"].dtype == np.int32 and arrays["inst"].shape == (PER_FOLD, SIZE, SIZE)
        assert arrays["type"].dtype == np.uint8
        assert arrays["eval_masks"].dtype == np.int32 and arrays["eval_masks"].shape == (PER_FOLD, SIZE, SIZE, 6)
        np.testing.assert_array_equal(arrays["images"], source_arrays["images"].astype(np.uint8))
        # The evaluation ground truth is the raw channels, quirks included.
        np.testing.assert_array_equal(arrays["eval_masks"], source_arrays["masks"].astype(np.int32))
        np.testing.assert_array_equal(arrays["eval_types"], source_arrays["types"])
        assert [s["tissue"] for s in samples] == source_arrays["types"].tolist()
        for row, sample in enumerate(samples):
            inst = arrays["inst"][row]
            ids = np.unique(inst[inst > 0])
            np.testing.assert_array_equal(ids, np.arange(1, ids.size + 1))  # 1..n, contiguous
            assert sample["n_nuclei"] == ids.size and sample["empty"] == (ids.size == 0)
            assert np.array_equal(inst > 0, arrays["type"][row] > 0)


def test_clean_patches_equal_synth_ground_truth(source: Path, prepared: Path) -> None:
    seeds = tile_seeds(SEED, N)
    checked = 0
    for split, fold in (("val", 2), ("test", 3)):  # folds 2 and 3 carry no quirks
        arrays = split_arrays(prepared, split)
        for row in range(PER_FOLD):
            index = (fold - 1) * PER_FOLD + row
            tile = generate_tile(seeds[index], SIZE, empty=index % 25 == 13)
            assert np.array_equal(tile.he, arrays["images"][row])  # it is the tile that was written
            assert same_partition(tile.inst_map, arrays["inst"][row])
            np.testing.assert_array_equal(arrays["type"][row], tile.type_map)
            checked += int(tile.inst_map.any())
    assert checked >= 8


def test_each_quirk_is_handled(source: Path, prepared: Path, quirks: dict[str, dict]) -> None:
    train = split_arrays(prepared, "train")
    masks = raw(source, 1)["masks"].astype(np.int64)
    samples = records(prepared, "train")

    void = quirks["background_all_zero"]["patch"]
    assert samples[void]["empty"] and not train["inst"][void].any() and not train["type"][void].any()

    q = quirks["pixel_in_two_channels"]
    (x, y), (ch_a, ch_b), (id_a, id_b) = q["pixel"], q["channels"], q["ids"]
    assert ch_a < ch_b
    inst, types = train["inst"][q["patch"]], train["type"][q["patch"]]
    assert types[y, x] == ch_b + 1  # the last channel wins
    others_b = (masks[q["patch"], ..., ch_b] == id_b) & ~((np.arange(SIZE)[:, None] == y) & (np.arange(SIZE) == x))
    assert set(np.unique(inst[others_b])) == {inst[y, x]}
    assert inst[y, x] not in set(np.unique(inst[masks[q["patch"], ..., ch_a] == id_a]).tolist()) - {inst[y, x]}

    q = quirks["id_split"]
    pieces = inst_ids = np.unique(train["inst"][q["patch"]][masks[q["patch"], ..., q["channel"]] == q["id"]])
    assert len(pieces) == 2 and 0 not in inst_ids

    q = quirks["id_reused_across_channels"]
    c1, c2 = q["channels"]
    inst = train["inst"][q["patch"]]
    first = set(np.unique(inst[masks[q["patch"], ..., c1] == q["id"]]).tolist())
    second = set(np.unique(inst[masks[q["patch"], ..., c2] == q["id"]]).tolist())
    assert first and second and not first & second and 0 not in first | second

    q = quirks["ids_above_1000"]
    raw_ids = masks[q["patch"], ..., :5]
    assert raw_ids[raw_ids > 0].min() > 1000
    ids = np.unique(train["inst"][q["patch"]])
    np.testing.assert_array_equal(ids, np.arange(ids.size))  # 0 plus 1..n
    assert samples[q["patch"]]["n_nuclei"] == len(q["ids"])


def test_counters_match_an_independent_count(source: Path, prepared: Path) -> None:
    counters = json.loads((prepared / "manifest.json").read_text())["counters"]
    expected = {"overlap_pixels": 0, "split_ids": 0, "colliding_ids": 0, "empty": 0, "void": 0}
    for fold in (1, 2, 3):
        masks = raw(source, fold)["masks"]
        for i in range(masks.shape[0]):
            overlap, found = entry(masks, i)
            expected["overlap_pixels"] += overlap
            expected["split_ids"] += found["split"]
            expected["colliding_ids"] += found["colliding"]
            expected["empty"] += int(not masks[i, ..., :5].any())
            expected["void"] += int(not masks[i, ..., 5].any())
    assert expected["overlap_pixels"] == expected["split_ids"] == expected["colliding_ids"] == 1
    assert counters["overlap_pixels"] == counters["overlap_patches"] == 1
    assert counters["split_ids"] == counters["extra_instances_from_splits"] == 1
    assert counters["colliding_ids"] == 1
    assert counters["empty_patches"] == expected["empty"] >= 1
    assert counters["background_all_zero_patches"] == expected["void"] == 1
    assert counters["instances_lost_to_overlap"] == counters["clipped_image_values"] == 0


def test_random_split_by_patch(source: Path, tmp_path: Path) -> None:
    out = tmp_path / "random"
    summary = prepare_pannuke(source, out, split="random", fractions="0.6,0.2,0.2", seed=3, chunk=4)
    assert summary.splits == {"train": 9, "val": 3, "test": 3} and not summary.skipped
    samples = records(out)
    ids = [s["id"] for s in samples]
    assert sorted(ids) == sorted(f"fold{k}_{i}" for k in (1, 2, 3) for i in range(PER_FOLD))
    assert len(set(ids)) == N  # no patch in two splits
    folds = {k: raw(source, k) for k in (1, 2, 3)}
    for split in ("train", "val", "test"):
        arrays = split_arrays(out, split)
        for row, sample in enumerate(records(out, split)):
            expected = folds[sample["fold"]]
            np.testing.assert_array_equal(arrays["images"][row], expected["images"][sample["index"]].astype(np.uint8))
            np.testing.assert_array_equal(arrays["eval_masks"][row], expected["masks"][sample["index"]])
            assert arrays["eval_types"][row] == expected["types"][sample["index"]]
    again = tmp_path / "again"
    prepare_pannuke(source, again, split="random", seed=3, chunk=7)  # chunk size does not change the result
    assert [(s["id"], s["split"]) for s in records(again)] == [(s["id"], s["split"]) for s in samples]
    np.testing.assert_array_equal(np.load(again / "val" / "inst_maps.npy"), np.load(out / "val" / "inst_maps.npy"))
    other = tmp_path / "other"
    prepare_pannuke(source, other, split="random", seed=4)
    assert [s["split"] for s in records(other)] != [s["split"] for s in samples]


def test_rotated_official_split(source: Path, tmp_path: Path) -> None:
    out = tmp_path / "rot"
    prepare_pannuke(source, out, test_fold=1, val_fold=3)
    assert {s["split"]: s["fold"] for s in records(out)} == {"train": 2, "val": 3, "test": 1}


def test_zip_sources(source: Path, prepared: Path, tmp_path: Path) -> None:
    def zip_folder(archive: Path, folders: list[str]) -> Path:
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as handle:
            for name in folders:
                for path in sorted((source / name).rglob("*")):
                    handle.write(path, path.relative_to(source).as_posix())
        return archive

    everything = zip_folder(tmp_path / "pannuke.zip", ["Fold 1", "Fold 2", "Fold 3"])
    out = tmp_path / "from_zip"
    summary = prepare_pannuke(everything, out)
    assert summary.splits == {"train": PER_FOLD, "val": PER_FOLD, "test": PER_FOLD}
    for split in ("train", "test"):
        for name in ("inst_maps.npy", "images.npy", "eval/masks.npy"):
            np.testing.assert_array_equal(np.load(out / split / name), np.load(prepared / split / name))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["source"]["kind"] == "zip"
    assert not list(tmp_path.glob(".histostain-extract-*"))  # the extraction is cleaned up

    zips = tmp_path / "downloads"
    zips.mkdir()
    for k in (1, 2, 3):
        zip_folder(zips / f"fold_{k}.zip", [f"Fold {k}"])
    out_zips = tmp_path / "from_zips"
    prepare_pannuke(zips, out_zips, test_fold=1, val_fold=2)
    np.testing.assert_array_equal(
        np.load(out_zips / "test" / "inst_maps.npy"), np.load(prepared / "train/inst_maps.npy")
    )

    single = tmp_path / "single"
    prepare_pannuke(zips / "fold_2.zip", single, split="random", fractions="1,0,0")
    assert [s["id"] for s in records(single)] == [f"fold2_{i}" for i in range(PER_FOLD)]
    assert not (single / "val").exists()  # an empty split is omitted


def test_single_fold_folder(source: Path, tmp_path: Path) -> None:
    out = tmp_path / "one"
    summary = prepare_pannuke(source / "Fold 3", out, split="random", fractions="0.4,0.2,0.4", seed=1)
    assert sum(summary.splits.values()) == PER_FOLD and {s["fold"] for s in records(out)} == {3}
    refused = tmp_path / "refused"
    with pytest.raises(DatasetLayoutError, match=r"needs Fold 1, 2 and 3; found Fold 3"):
        prepare_pannuke(source / "Fold 3", refused)
    assert no_output(refused)


# -------------------------------------------------------------------------------- idempotency, overwrite


def test_rerun_is_a_no_op_and_other_options_are_refused(source: Path, tmp_path: Path) -> None:
    out = tmp_path / "idem"
    prepare_pannuke(source, out)
    files = sorted(p for p in out.rglob("*") if p.is_file())
    stamps = {p: p.stat().st_mtime_ns for p in files}
    past = 1_000_000_000_000_000_000
    for p in files:
        os.utime(p, ns=(past, past))
    again = prepare_pannuke(source, out, seed=99, fractions="0.5,0.25,0.25")  # ignored by the official split
    assert again.skipped and again.splits == {"train": PER_FOLD, "val": PER_FOLD, "test": PER_FOLD}
    assert all(p.stat().st_mtime_ns == past for p in files) and stamps

    with pytest.raises(ConfigError, match=r"test_fold 3 -> 1") as info:
        prepare_pannuke(source, out, test_fold=1, val_fold=2)
    assert "--overwrite" in (info.value.hint or "")
    with pytest.raises(ConfigError, match=r"split official -> random"):
        prepare_pannuke(source, out, split="random")
    assert all(p.stat().st_mtime_ns == past for p in files)

    replaced = prepare_pannuke(source, out, test_fold=1, val_fold=2, overwrite=True)
    assert not replaced.skipped
    assert {s["split"]: s["fold"] for s in records(out)} == {"train": 3, "val": 2, "test": 1}


# --------------------------------------------------------------------------------------------- validation


def _save(path: Path, array: np.ndarray) -> None:
    np.save(path, array)


def drop_masks(root: Path) -> str:
    fold_files(root, 2)["masks"].unlink()
    return "Fold 2/masks/fold2/masks.npy: missing"


def five_channel_masks(root: Path) -> str:
    path = fold_files(root, 1)["masks"]
    _save(path, np.load(path)[..., :5])
    return r"Fold 1/masks/fold1/masks.npy: shape \(5, 96, 96, 5\); expected \(N, H, W, 6\)"


def bool_masks(root: Path) -> str:
    path = fold_files(root, 3)["masks"]
    _save(path, np.load(path) > 0)
    return "Fold 3/masks/fold3/masks.npy: dtype bool"


def short_types(root: Path) -> str:
    path = fold_files(root, 2)["types"]
    _save(path, np.load(path)[:-1])
    return r"Fold 2/images/fold2/types.npy: shape \(4,\); expected \(5,\)"


def unknown_tissue(root: Path) -> str:
    path = fold_files(root, 1)["types"]
    types = np.load(path).astype("<U13")
    types[2] = "Brest"
    _save(path, types)
    return "Fold 1/images/fold1/types.npy: unknown tissue 'Brest' at patch 2"


def pickled_types(root: Path) -> str:
    path = fold_files(root, 1)["types"]
    np.save(path, np.load(path).astype(object), allow_pickle=True)
    return "Fold 1/images/fold1/types.npy: not a plain unicode array"


def patch_count_mismatch(root: Path) -> str:
    path = fold_files(root, 3)["images"]
    _save(path, np.load(path)[:-1])
    return "Fold 3/masks/fold3/masks.npy: shape .* does not match Fold 3/images/fold3/images.npy"


def truncated_masks(root: Path) -> str:
    path = fold_files(root, 1)["masks"]
    with path.open("r+b") as handle:
        handle.truncate(path.stat().st_size - 1000)
    return "Fold 1/masks/fold1/masks.npy: is truncated"


def nan_image(root: Path) -> str:
    path = fold_files(root, 2)["images"]
    images = np.load(path)
    images[3, 5, 5, 1] = np.nan
    _save(path, images)
    return "Fold 2/images/fold2/images.npy: patch 3 holds NaN"


def fractional_id(root: Path) -> str:
    path = fold_files(root, 3)["masks"]
    masks = np.load(path)
    masks[4, 0, 0, 2] = 2.5
    _save(path, masks)
    return "Fold 3/masks/fold3/masks.npy: patch 4 holds non-integer values"


def negative_id(root: Path) -> str:
    path = fold_files(root, 1)["masks"]
    masks = np.load(path)
    masks[1, 0, 0, 0] = -3
    _save(path, masks)
    return "Fold 1/masks/fold1/masks.npy: patch 1 holds values outside"


def wrong_inner_fold(root: Path) -> str:
    for part in ("images", "masks"):
        (root / "Fold 2" / part / "fold2").rename(root / "Fold 2" / part / "fold5")
    return "Fold 2/images: holds fold5/, expected fold2/"


def no_folds(root: Path) -> str:
    for k in (1, 2, 3):
        for part in ("images", "masks"):
            (root / f"Fold {k}" / part).rename(root / f"Fold {k}" / f"{part}_old")
        (root / f"Fold {k}").rename(root / f"part {k}")
    return "no PanNuke fold found"


@pytest.mark.parametrize(
    "breaker",
    [
        drop_masks,
        five_channel_masks,
        bool_masks,
        short_types,
        unknown_tissue,
        pickled_types,
        patch_count_mismatch,
        truncated_masks,
        nan_image,
        fractional_id,
        negative_id,
        wrong_inner_fold,
        no_folds,
    ],
)
def test_layout_errors_name_the_file_and_write_nothing(
    broken: Path, tmp_path: Path, breaker: Callable[[Path], str]
) -> None:
    expected = breaker(broken)
    out = tmp_path / "out"
    with pytest.raises(DatasetLayoutError, match=expected) as info:
        prepare_pannuke(broken, out, chunk=2)
    assert "\n" not in info.value.one_line()
    assert no_output(out)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"test_fold": 2, "val_fold": 2}, "must differ"),
        ({"test_fold": 4}, "--test-fold must be 1, 2 or 3"),
        ({"split": "folds"}, "--split must be"),
        ({"split": "random", "fractions": "0.5,0.5"}, "--fractions"),
        ({"split": "random", "seed": -1}, "--seed"),
        ({"chunk": 0}, "--chunk"),
    ],
)
def test_bad_options(source: Path, tmp_path: Path, options: dict, message: str) -> None:
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match=message):
        prepare_pannuke(source, out, **options)
    assert no_output(out)


# ------------------------------------------------------------------------------- recoverable, other dtypes


def test_integer_dtypes_and_clipped_values(broken: Path, prepared: Path, tmp_path: Path) -> None:
    for k in (1, 2, 3):
        files = fold_files(broken, k)
        _save(files["masks"], np.load(files["masks"]).astype(np.uint16))
        _save(files["images"], np.load(files["images"]).astype(np.uint8))
    out = tmp_path / "ints"
    prepare_pannuke(broken, out)
    for split in ("train", "val", "test"):
        for name in ("images.npy", "inst_maps.npy", "type_maps.npy", "eval/masks.npy"):
            np.testing.assert_array_equal(np.load(out / split / name), np.load(prepared / split / name))

    path = fold_files(broken, 2)["images"]
    images = np.load(path).astype(np.float32)
    images[0, 0, 0] = [300.0, -2.0, 254.6]  # two values out of range, one rounded
    _save(path, images)
    clipped = tmp_path / "clipped"
    summary = prepare_pannuke(broken, clipped)
    assert summary.counters["clipped_image_values"] == 2
    np.testing.assert_array_equal(np.load(clipped / "val" / "images.npy")[0, 0, 0], [255, 0, 255])


def test_memory_does_not_grow_with_folds(source: Path, tmp_path: Path) -> None:
    """The chunk buffers of a fold are released before the next fold (peak of 3 folds ~ peak of 1)."""
    import tracemalloc

    peaks = []
    for name, src, split in (("one", source / "Fold 1", "random"), ("three", source, "official")):
        tracemalloc.start()
        prepare_pannuke(src, tmp_path / name, split=split, chunk=PER_FOLD)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    chunk_bytes = PER_FOLD * SIZE * SIZE * 9 * 8  # the float64 image and mask buffers of one fold
    assert peaks[1] < peaks[0] + chunk_bytes, peaks


# ------------------------------------------------------------------------------------------- interruption


def test_interrupted_run_leaves_nothing_and_recovers(
    source: Path, prepared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = {"n": 0}
    real = pannuke.convert_masks

    def failing(classes: np.ndarray) -> pannuke.PatchConversion:
        calls["n"] += 1
        if calls["n"] == 8:  # in fold 2, after fold 1 was written
            raise KeyboardInterrupt
        return real(classes)

    monkeypatch.setattr(pannuke, "convert_masks", failing)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        prepare_pannuke(source, out, chunk=3)
    assert calls["n"] == 8 and no_output(out)

    # A killed process leaves its partial folder behind; the next run removes it and completes.
    (tmp_path / ".out.abc.partial" / "train").mkdir(parents=True)
    monkeypatch.setattr(pannuke, "convert_masks", real)
    summary = prepare_pannuke(source, out, chunk=3)
    assert not summary.skipped and summary.splits == {"train": PER_FOLD, "val": PER_FOLD, "test": PER_FOLD}
    assert no_output(tmp_path / "absent") and not list(tmp_path.glob(".out.*"))
    np.testing.assert_array_equal(np.load(out / "val" / "inst_maps.npy"), np.load(prepared / "val" / "inst_maps.npy"))
