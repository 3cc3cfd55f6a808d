"""`prepare_bci`: the published BCI layout (synthetic miniature) -> prepared patches with leak-free splits.

Expectations are computed independently of the module: source pixels are read back with Pillow and cropped
with plain numpy, HER2 levels come from splitting the file names by hand, resized patches are compared to
scikit-image called here, and a hand-made dataset of uniform quadrants checks the row/column mapping without
any resizing library.
"""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from histostain.datasets import bci
from histostain.datasets.bci import parse_name, prepare_bci
from histostain.datasets.prepared import load_prepared
from histostain.errors import ConfigError, DatasetLayoutError, HistostainError, InputError
from histostain.synth import write_dataset

N_PAIRS = 10  # synth puts every fifth tile in test: 8 train + 2 test images, all four HER2 levels
SIDE = 128
PATCH = 64
PER_IMAGE = (SIDE // PATCH) ** 2


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def save(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def leftovers(parent: Path, name: str) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(f".{name}.") or p.name == name)


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder written by `histostain synth --layout bci` (holds BCI_dataset/ and synth.json)."""
    root = tmp_path_factory.mktemp("synth") / "bci"
    write_dataset("bci", root, N_PAIRS, SIDE, seed=3)
    return root


@pytest.fixture
def source(synth_root: Path, tmp_path: Path) -> Path:
    """A private copy of BCI_dataset that a test may break."""
    return Path(shutil.copytree(synth_root / "BCI_dataset", tmp_path / "data" / "BCI_dataset"))


def source_images(dataset: Path) -> dict[str, tuple[str, Path, Path]]:
    """stem -> (official split, HE path, IHC path), found by plain globbing."""
    found = {}
    for split in ("train", "test"):
        for he in sorted((dataset / "HE" / split).glob("*.png")):
            found[he.stem] = (split, he, dataset / "IHC" / split / he.name)
    return found


# ------------------------------------------------------------------------------------------------ happy path


def test_full_patches_equal_the_source_crops_and_splits_never_share_an_image(source: Path, tmp_path: Path) -> None:
    out = tmp_path / "prepared"
    summary = prepare_bci(source, out, patch=PATCH, size=0, val_fraction=0.25, seed=0)
    images = source_images(source)
    assert len(images) == N_PAIRS
    manifest = load_prepared(out, "bci")
    assert not summary.skipped and summary.dataset == "bci"
    assert sum(summary.splits.values()) == len(manifest.samples) == N_PAIRS * PER_IMAGE

    # every source image lands in exactly one split; official test stays test; train is split 6/2 by image
    split_of: dict[str, set[str]] = {}
    for record in manifest.samples:
        split_of.setdefault(record["source_image"], set()).add(record["split"])
    assert all(len(splits) == 1 for splits in split_of.values())
    assert set(split_of) == set(images)
    for stem, (official, _, _) in images.items():
        (split,) = split_of[stem]
        assert (split == "test") == (official == "test")
    n_train_images = sum(1 for official, _, _ in images.values() if official == "train")
    n_val = sum(1 for splits in split_of.values() if splits == {"val"})
    assert n_val == round(0.25 * n_train_images) == 2
    assert summary.splits == {
        "train": (n_train_images - n_val) * PER_IMAGE,
        "val": n_val * PER_IMAGE,
        "test": (N_PAIRS - n_train_images) * PER_IMAGE,
    }

    # records, files and pixels
    assert sorted({r["her2"] for r in manifest.samples}) == ["0", "1+", "2+", "3+"]
    for record in manifest.samples:
        stem = record["source_image"]
        official, he_path, ihc_path = images[stem]
        assert record["her2"] == stem.rsplit("_", 1)[1]  # "0" has no plus
        assert record["id"] == f"{stem}_r{record['row']}c{record['col']}"
        assert (record["patch"], record["size"]) == (PATCH, PATCH)
        y, x = record["row"] * PATCH, record["col"] * PATCH
        for modality, src in (("HE", he_path), ("IHC", ihc_path)):
            written = pixels(out / record["split"] / modality / f"{record['id']}.png")
            assert written.dtype == np.uint8 and written.shape == (PATCH, PATCH, 3)
            np.testing.assert_array_equal(written, pixels(src)[y : y + PATCH, x : x + PATCH])
    on_disk = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    expected = sorted(f"{r['split']}/{m}/{r['id']}.png" for r in manifest.samples for m in ("HE", "IHC"))
    assert on_disk == expected
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "test", "train", "val"]
    assert manifest.options == {"patch": PATCH, "size": 0, "val_fraction": 0.25, "seed": 0}
    assert manifest.counters == {"ignored_other_files": 1}  # the release README.md
    assert manifest.source.kind == "folder" and manifest.source.file_count == 2 * N_PAIRS + 1


def test_resized_patches_match_an_independent_skimage_resize(synth_root: Path, tmp_path: Path) -> None:
    from skimage.transform import resize

    out = tmp_path / "prepared"
    summary = prepare_bci(synth_root, out, patch=PATCH, size=32)  # the parent of BCI_dataset
    images = source_images(synth_root / "BCI_dataset")
    manifest = load_prepared(out)
    assert sum(summary.splits.values()) == N_PAIRS * PER_IMAGE
    for record in manifest.samples[:: max(1, len(manifest.samples) // 12)]:
        _, he_path, ihc_path = images[record["source_image"]]
        y, x = record["row"] * PATCH, record["col"] * PATCH
        for modality, src in (("HE", he_path), ("IHC", ihc_path)):
            crop = pixels(src)[y : y + PATCH, x : x + PATCH]
            expected = np.clip(np.rint(resize(crop, (32, 32, 3), anti_aliasing=True, preserve_range=True)), 0, 255)
            written = pixels(out / record["split"] / modality / f"{record['id']}.png")
            assert written.shape == (32, 32, 3) and record["size"] == 32
            np.testing.assert_array_equal(written, expected.astype(np.uint8))


def make_quadrant_dataset(root: Path, colours: dict[str, list[tuple[int, int, int]]], side: int = 64) -> Path:
    """A hand-made BCI release whose images are four uniform quadrants (colours in row-major order)."""
    for stem, quads in colours.items():
        split = stem.split("_")[1]
        image = np.zeros((side, side, 3), np.uint8)
        half = side // 2
        for k, colour in enumerate(quads):
            image[(k // 2) * half : (k // 2 + 1) * half, (k % 2) * half : (k % 2 + 1) * half] = colour
        save(root / "BCI_dataset" / "HE" / split / f"{stem}.png", image)
        save(root / "BCI_dataset" / "IHC" / split / f"{stem}.png", 255 - image)
    return root


def test_row_col_and_resize_on_hand_made_uniform_quadrants(tmp_path: Path) -> None:
    colours = {
        "00000_train_0": [(10, 20, 30), (40, 50, 60), (70, 80, 90), (100, 110, 120)],
        "00000_test_3+": [(200, 0, 0), (0, 200, 0), (0, 0, 200), (1, 2, 3)],
    }
    source = make_quadrant_dataset(tmp_path / "src", colours)
    out = tmp_path / "prepared"
    summary = prepare_bci(source, out, patch=32, size=8, val_fraction=0.0)
    assert summary.splits == {"train": 4, "test": 4}  # no val split with --val-fraction 0
    assert not (out / "val").exists()
    for stem, quads in colours.items():
        split = "test" if "_test_" in stem else "train"
        for k, colour in enumerate(quads):
            he = pixels(out / split / "HE" / f"{stem}_r{k // 2}c{k % 2}.png")
            ihc = pixels(out / split / "IHC" / f"{stem}_r{k // 2}c{k % 2}.png")
            assert he.shape == (8, 8, 3)
            assert (he == np.array(colour, np.uint8)).all()
            assert (ihc == 255 - np.array(colour, np.uint8)).all()
    records = {r["id"]: r for r in load_prepared(out).samples}
    assert records["00000_test_3+_r1c0"] == {
        "id": "00000_test_3+_r1c0",
        "split": "test",
        "source_image": "00000_test_3+",
        "her2": "3+",
        "row": 1,
        "col": 0,
        "patch": 32,
        "size": 8,
    }


def test_split_is_deterministic_and_follows_the_seed(synth_root: Path, tmp_path: Path) -> None:
    def val_images(seed: int, out: Path) -> set[str]:
        prepare_bci(synth_root, out, patch=SIDE, size=0, seed=seed, val_fraction=0.5)
        return {r["source_image"] for r in load_prepared(out).samples if r["split"] == "val"}

    first = val_images(0, tmp_path / "a")
    assert val_images(0, tmp_path / "b") == first and len(first) == 4
    assert any(val_images(seed, tmp_path / f"s{seed}") != first for seed in (1, 2, 3))


def test_zip_source_gives_the_same_result_and_leaves_no_extraction_behind(synth_root: Path, tmp_path: Path) -> None:
    archive = tmp_path / "BCI_dataset.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        for path in sorted((synth_root / "BCI_dataset").rglob("*")):
            if path.is_file():
                handle.write(path, path.relative_to(synth_root).as_posix())
    work = tmp_path / "work"
    from_zip = prepare_bci(archive, work / "zip", patch=PATCH, size=16)
    from_dir = prepare_bci(synth_root / "BCI_dataset", work / "dir", patch=PATCH, size=16)
    assert from_zip.splits == from_dir.splits
    zip_manifest, dir_manifest = load_prepared(work / "zip"), load_prepared(work / "dir")
    assert zip_manifest.source.kind == "zip" and zip_manifest.samples == dir_manifest.samples
    for png in (work / "dir").rglob("*.png"):
        twin = work / "zip" / png.relative_to(work / "dir")
        np.testing.assert_array_equal(pixels(twin), pixels(png))
    assert sorted(p.name for p in work.iterdir()) == ["dir", "zip"]  # the scratch extraction is gone
    assert prepare_bci(archive, work / "zip", patch=PATCH, size=16).skipped


# ------------------------------------------------------------------------------------- idempotency, overwrite


def test_rerun_is_a_no_op_other_options_are_refused_and_overwrite_replaces(source: Path, tmp_path: Path) -> None:
    out = tmp_path / "prepared"
    first = prepare_bci(source, out, patch=PATCH, size=0)
    manifest_stamp = (out / "manifest.json").stat().st_mtime_ns
    some_patch = next((out / "train" / "HE").glob("*.png"))
    patch_stamp = some_patch.stat().st_mtime_ns

    again = prepare_bci(source, out, patch=PATCH, size=0)
    assert again.skipped and again.splits == first.splits and again.counters == first.counters
    assert (out / "manifest.json").stat().st_mtime_ns == manifest_stamp
    assert some_patch.stat().st_mtime_ns == patch_stamp

    with pytest.raises(ConfigError) as info:
        prepare_bci(source, out, patch=PATCH, size=32, seed=1)
    assert "size 0 -> 32" in info.value.message and "seed 0 -> 1" in info.value.message
    assert (out / "manifest.json").stat().st_mtime_ns == manifest_stamp

    replaced = prepare_bci(source, out, patch=PATCH, size=32, seed=1, overwrite=True)
    assert not replaced.skipped
    assert load_prepared(out).options["size"] == 32
    assert {pixels(p).shape for p in out.rglob("*.png")} == {(32, 32, 3)}
    assert leftovers(tmp_path, "prepared") == ["prepared"]


# ------------------------------------------------------------------------------------------------ validation


def rename_pair(source: Path, split: str, old: str, new: str, new_split: str | None = None) -> None:
    for modality in ("HE", "IHC"):
        target = source / modality / (new_split or split) / new
        (source / modality / split / old).rename(target)


def first_name(source: Path, split: str = "train") -> str:
    return sorted(p.name for p in (source / "HE" / split).glob("*.png"))[0]


def break_missing_ihc(source: Path) -> str:
    name = first_name(source)
    (source / "IHC" / "train" / name).unlink()
    return f"BCI_dataset/IHC/train/{name}: missing"


def break_missing_he(source: Path) -> str:
    name = first_name(source, "test")
    (source / "HE" / "test" / name).unlink()
    return f"BCI_dataset/HE/test/{name}: missing"


def break_bad_name(source: Path) -> str:
    shutil.copy(source / "HE" / "train" / first_name(source), source / "HE" / "train" / "slide7.png")
    return "BCI_dataset/HE/train/slide7.png: name does not follow"


def break_level_without_plus(source: Path) -> str:
    rename_pair(source, "train", first_name(source), "00077_train_2.png")
    return "BCI_dataset/HE/train/00077_train_2.png: name does not follow"


def break_level_zero_plus(source: Path) -> str:
    rename_pair(source, "train", first_name(source), "00077_train_0+.png")
    return "BCI_dataset/HE/train/00077_train_0+.png: name does not follow"


def break_split_word(source: Path) -> str:
    rename_pair(source, "test", first_name(source, "test"), "00042_test_1+.png", new_split="train")
    return "BCI_dataset/HE/train/00042_test_1+.png: name says 'test'"


def break_duplicate_number(source: Path) -> str:
    name = first_name(source)
    number = name.split("_")[0]
    level = "3+" if not name.endswith("_3+.png") else "1+"
    for modality in ("HE", "IHC"):
        shutil.copy(source / modality / "train" / name, source / modality / "train" / f"{number}_train_{level}.png")
    return f"pair number {number} is also used by"


def break_size_mismatch(source: Path) -> str:
    name = first_name(source)
    save(source / "IHC" / "train" / name, np.zeros((SIDE // 2, SIDE // 2, 3), np.uint8))
    return f"BCI_dataset/IHC/train/{name}: 64 x 64 pixels but its HE partner is 128 x 128"


def break_not_divisible(source: Path) -> str:
    name = first_name(source, "test")
    for modality in ("HE", "IHC"):
        save(source / modality / "test" / name, np.zeros((100, 100, 3), np.uint8))
    return f"BCI_dataset/HE/test/{name}: 100 x 100 pixels is not divisible by --patch 64"


def break_missing_folder(source: Path) -> str:
    shutil.rmtree(source / "IHC" / "test")
    return "BCI_dataset/IHC/test: missing"


def break_no_dataset(source: Path) -> str:
    shutil.rmtree(source / "IHC")
    return "no BCI_dataset/HE and BCI_dataset/IHC folders found"


def break_not_an_image(source: Path) -> str:
    name = first_name(source)
    (source / "IHC" / "train" / name).write_bytes(b"this is not a png")
    return f"cannot read image BCI_dataset/IHC/train/{name}"


def break_truncated_image(source: Path) -> str:
    """Header intact, pixel data cut: only decoding (inside the build) finds it."""
    name = sorted(p.name for p in (source / "HE" / "test").glob("*.png"))[-1]
    path = source / "HE" / "test" / name
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return f"cannot read image BCI_dataset/HE/test/{name}"


BREAKERS = {
    "missing IHC partner": (break_missing_ihc, DatasetLayoutError),
    "missing HE partner": (break_missing_he, DatasetLayoutError),
    "unparsable name": (break_bad_name, DatasetLayoutError),
    "level 2 without plus": (break_level_without_plus, DatasetLayoutError),
    "level 0+": (break_level_zero_plus, DatasetLayoutError),
    "split word disagrees with folder": (break_split_word, DatasetLayoutError),
    "duplicate pair number": (break_duplicate_number, DatasetLayoutError),
    "HE/IHC size mismatch": (break_size_mismatch, DatasetLayoutError),
    "size not divisible by patch": (break_not_divisible, DatasetLayoutError),
    "missing IHC/test folder": (break_missing_folder, DatasetLayoutError),
    "no HE/IHC at all": (break_no_dataset, DatasetLayoutError),
    "not an image": (break_not_an_image, InputError),
    "truncated image": (break_truncated_image, InputError),
}


@pytest.mark.parametrize("case", list(BREAKERS))
def test_layout_errors_name_the_file_and_write_nothing(case: str, source: Path, tmp_path: Path) -> None:
    breaker, error = BREAKERS[case]
    expected = breaker(source)
    out = tmp_path / "prepared"
    with pytest.raises(error) as info:
        prepare_bci(source, out, patch=PATCH, size=16)
    assert expected in info.value.message, info.value.message
    assert "\n" not in info.value.one_line()
    assert leftovers(tmp_path, "prepared") == []  # neither the folder nor a partial build


def test_errors_inside_a_zip_name_the_archive_member(source: Path, tmp_path: Path) -> None:
    name = first_name(source)
    (source / "IHC" / "train" / name).unlink()
    archive = tmp_path / "BCI.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        for path in sorted(source.rglob("*")):
            handle.write(path, path.relative_to(source.parent).as_posix())
    out = tmp_path / "work" / "prepared"
    with pytest.raises(DatasetLayoutError) as info:
        prepare_bci(archive, out, patch=PATCH)
    assert info.value.message.startswith(f"BCI.zip:BCI_dataset/IHC/train/{name}: missing")
    assert list((tmp_path / "work").iterdir()) == []  # no output, no extraction left


def test_train_only_release_is_accepted(source: Path, tmp_path: Path) -> None:
    shutil.rmtree(source / "HE" / "test")
    shutil.rmtree(source / "IHC" / "test")
    summary = prepare_bci(source, tmp_path / "prepared", patch=SIDE, size=0, val_fraction=0.25)
    assert summary.splits == {"train": 6, "val": 2}


def test_missing_partner_hint_points_at_a_different_level(source: Path, tmp_path: Path) -> None:
    name = first_name(source)
    number = name.split("_")[0]
    other = f"{number}_train_{'3+' if not name.endswith('_3+.png') else '1+'}.png"
    (source / "IHC" / "train" / name).rename(source / "IHC" / "train" / other)
    with pytest.raises(DatasetLayoutError) as info:
        prepare_bci(source, tmp_path / "prepared", patch=PATCH)
    assert f"IHC/train/{name}: missing" in info.value.message
    assert other in (info.value.hint or "") and "HER2 level differs" in (info.value.hint or "")


@pytest.mark.parametrize(
    ("options", "flag"),
    [
        ({"patch": 0}, "--patch"),
        ({"size": -1}, "--size"),
        ({"val_fraction": 1.0}, "--val-fraction"),
        ({"val_fraction": -0.1}, "--val-fraction"),
        ({"seed": -1}, "--seed"),
    ],
)
def test_bad_options_are_config_errors(options: dict, flag: str, source: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=flag):
        prepare_bci(source, tmp_path / "prepared", **options)
    assert not (tmp_path / "prepared").exists()


def test_out_inside_the_source_is_refused(source: Path) -> None:
    with pytest.raises(ConfigError, match="inside the source"):
        prepare_bci(source, source / "prepared", patch=PATCH)
    assert not (source / "prepared").exists()


def test_missing_source_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(HistostainError, match="not found"):
        prepare_bci(tmp_path / "nowhere", tmp_path / "prepared")


# ---------------------------------------------------------------------------------------- recoverable oddities


def test_side_files_and_non_rgb_images_are_counted_not_fatal(source: Path, tmp_path: Path) -> None:
    name = first_name(source)
    (source / "HE" / "train" / f"{name}:Zone.Identifier").write_text("[ZoneTransfer]\nZoneId=3\n")
    (source / "IHC" / "test" / f"{first_name(source, 'test')}:Zone.Identifier").write_text("[ZoneTransfer]\n")
    (source / "HE" / "notes.txt").write_text("x")
    (source / "HE" / "train" / "README.txt").write_text("x")
    rgb = pixels(source / "HE" / "train" / name)
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])
    save(source / "HE" / "train" / name, rgba)  # RGBA: alpha dropped by the io layer
    out = tmp_path / "prepared"
    summary = prepare_bci(source, out, patch=PATCH, size=0)
    assert summary.counters == {
        "converted_non_rgb_images": 1,
        "ignored_other_files": 3,  # README.md of the release, notes.txt, README.txt
        "ignored_zone_identifier_files": 2,
    }
    assert load_prepared(out).counters == summary.counters
    assert sum(summary.splits.values()) == N_PAIRS * PER_IMAGE
    split = next(r["split"] for r in load_prepared(out).samples if r["source_image"] == Path(name).stem)
    np.testing.assert_array_equal(pixels(out / split / "HE" / f"{Path(name).stem}_r0c1.png"), rgb[:PATCH, PATCH:])


# ------------------------------------------------------------------------------------------------ interruption


def test_interrupted_run_leaves_nothing_and_a_rerun_succeeds(
    source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_write = bci.write_image
    calls = {"n": 0}

    def flaky_write(path, image):  # dies half-way through the patches
        calls["n"] += 1
        if calls["n"] == N_PAIRS * PER_IMAGE:
            raise KeyboardInterrupt
        return real_write(path, image)

    monkeypatch.setattr(bci, "write_image", flaky_write)
    out = tmp_path / "prepared"
    with pytest.raises(KeyboardInterrupt):
        prepare_bci(source, out, patch=PATCH, size=16)
    assert leftovers(tmp_path, "prepared") == []
    monkeypatch.setattr(bci, "write_image", real_write)

    (tmp_path / ".prepared.killed.partial").mkdir()  # what a hard kill would leave
    summary = prepare_bci(source, out, patch=PATCH, size=16)
    assert not summary.skipped and sum(summary.splits.values()) == N_PAIRS * PER_IMAGE
    assert len(list(out.rglob("*.png"))) == 2 * N_PAIRS * PER_IMAGE
    assert leftovers(tmp_path, "prepared") == ["prepared"]
    assert json.loads((out / "manifest.json").read_text())["dataset"] == "bci"


# ------------------------------------------------------------------------------------------------ name parsing


@pytest.mark.parametrize(
    ("name", "parsed"),
    [
        ("00000_train_0.png", ("00000", "train", "0")),
        ("00001_train_1+.png", ("00001", "train", "1+")),
        ("00002_test_2+.png", ("00002", "test", "2+")),
        ("04872_test_3+.PNG", ("04872", "test", "3+")),
        ("00003_train_1.png", None),
        ("00003_train_0+.png", None),
        ("00003_train_4+.png", None),
        ("00003_val_1+.png", None),
        ("x00003_train_1+.png", None),
        ("00003_train_1+.jpg", None),
        ("00003_train_1+.png:Zone.Identifier", None),
    ],
)
def test_parse_name(name: str, parsed: tuple[str, str, str] | None) -> None:
    assert parse_name(name) == parsed
