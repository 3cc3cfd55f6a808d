"""Torch Datasets over prepared folders built by hand exactly as docs/formats.md describes them."""

from __future__ import annotations

import itertools
import json
import pickle
import re
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from histostain.datasets.augment import dihedral, dihedral_points, random_dihedral
from histostain.datasets.prepared import Manifest, SourceInfo, write_manifest
from histostain.datasets.torch_data import KeypointSamples, NucleiSamples, TranslationPairs, collate_keypoints
from histostain.errors import ConfigError, DatasetLayoutError
from histostain.io.annotations import Nucleus, write_centroids_txt
from histostain.io.images import write_image

SOURCE = SourceInfo(path="/data/source", kind="folder", file_count=1, total_bytes=1, fingerprint="0" * 64)


def manifest(folder: Path, dataset: str, samples: list[dict]) -> None:
    splits: dict[str, int] = {}
    for record in samples:
        splits[record["split"]] = splits.get(record["split"], 0) + 1
    write_manifest(folder, Manifest(dataset=dataset, source=SOURCE, options={}, splits=splits, samples=samples))


# ------------------------------------------------------------------------------------------------------ bci

BCI_SPLITS = {
    "train": ["00001_train_1+_r0c0", "00001_train_1+_r0c1", "00002_train_0_r0c0"],
    "val": ["00003_train_3+_r0c0"],
}


def he_patch(sample_id: str, size: int = 16) -> np.ndarray:
    rng = np.random.default_rng(zlib.crc32(sample_id.encode()))
    return rng.integers(0, 256, (size, size, 3), dtype=np.uint8)


@pytest.fixture
def bci(tmp_path: Path) -> Path:
    """Prepared BCI with IHC = 255 - HE, so every sample's pairing can be checked pixel by pixel."""
    folder = tmp_path / "bci"
    samples = []
    for split, ids in BCI_SPLITS.items():
        for sample_id in ids:
            he = he_patch(sample_id)
            write_image(folder / split / "HE" / f"{sample_id}.png", he)
            write_image(folder / split / "IHC" / f"{sample_id}.png", 255 - he)
            stem = sample_id.rsplit("_", 1)[0]
            samples.append({"id": sample_id, "split": split, "source_image": stem, "her2": stem.split("_")[-1]})
    manifest(folder, "bci", samples)
    return folder


def to_uint8(tensor: torch.Tensor, signed: bool) -> np.ndarray:
    values = (tensor.numpy() + 1.0) * 127.5 if signed else tensor.numpy() * 255.0
    return np.rint(values).astype(np.uint8).transpose(1, 2, 0)


def find_window(source: np.ndarray, patch: np.ndarray) -> set[tuple[int, int, int]]:
    """Every (y0, x0, k) such that patch == dihedral(crop of source at y0, x0, k)."""
    size = patch.shape[0]
    found = set()
    for y0, x0, k in itertools.product(range(source.shape[0] - size + 1), range(source.shape[1] - size + 1), range(8)):
        if np.array_equal(dihedral(source[y0 : y0 + size, x0 : x0 + size], k), patch):
            found.add((y0, x0, k))
    return found


def test_paired_without_augmentation_gives_the_files(bci: Path) -> None:
    data = TranslationPairs(bci, "train", augment=False)
    assert len(data) == 3
    sample = data[1]
    sample_id = BCI_SPLITS["train"][1]
    assert sample["id_A"] == sample["id_B"] == sample_id
    assert sample["A"].dtype == torch.float32 and sample["A"].shape == (3, 16, 16)
    assert np.array_equal(to_uint8(sample["A"], True), 255 - he_patch(sample_id))  # A = IHC
    assert np.array_equal(to_uint8(sample["B"], True), he_patch(sample_id))  # B = HE
    assert float(sample["A"].min()) >= -1.0 and float(sample["A"].max()) <= 1.0
    swapped = TranslationPairs(bci, "train", augment=False, direction="he2ihc")[1]
    assert torch.equal(swapped["A"], sample["B"]) and torch.equal(swapped["B"], sample["A"])


def test_paired_samples_share_crop_and_transform(bci: Path) -> None:
    data = TranslationPairs(bci, "train", crop=8, seed=3)
    windows = set()
    for epoch in range(4):
        data.set_epoch(epoch)
        for index in range(len(data)):
            sample = data[index]
            a, b = to_uint8(sample["A"], True), to_uint8(sample["B"], True)
            assert a.shape == (8, 8, 3)
            assert np.array_equal(a, 255 - b)  # the IHC partner got exactly the same crop and flip/rotation
            found = find_window(he_patch(sample["id_B"]), b)
            assert found, "B is not a crop + dihedral transform of its HE file"
            windows |= found
    assert len({k for _, _, k in windows}) > 1 and len({(y, x) for y, x, _ in windows}) > 1


def test_centre_crop_when_not_augmenting(bci: Path) -> None:
    sample = TranslationPairs(bci, "val", crop=10, augment=False)[0]
    sample_id = BCI_SPLITS["val"][0]
    assert np.array_equal(to_uint8(sample["B"], True), he_patch(sample_id)[3:13, 3:13])


def test_unpaired_partner_is_seeded_by_seed_index_and_epoch(bci: Path) -> None:
    def partners(seed: int, epoch: int) -> list[str]:
        data = TranslationPairs(bci, "train", paired=False, augment=False, seed=seed)
        data.set_epoch(epoch)
        return [data[i]["id_B"] for i in range(len(data))]

    assert partners(0, 0) == partners(0, 0)
    draws = [tuple(partners(seed, epoch)) for seed in range(3) for epoch in range(3)]
    assert len(set(draws)) > 1
    assert all(set(d) <= set(BCI_SPLITS["train"]) for d in draws)
    data = TranslationPairs(bci, "train", paired=False, augment=False)
    for index in range(len(data)):
        sample = data[index]
        assert sample["id_A"] == BCI_SPLITS["train"][index]
        assert np.array_equal(to_uint8(sample["B"], True), he_patch(sample["id_B"]))


def test_augmentation_is_deterministic_and_changes_with_epoch(bci: Path) -> None:
    first = TranslationPairs(bci, "train", crop=8, colour_jitter=0.1, seed=5)
    second = TranslationPairs(bci, "train", crop=8, colour_jitter=0.1, seed=5)
    for index in range(3):
        assert torch.equal(first[index]["A"], second[index]["A"])
    before = [first[i]["A"] for i in range(3)]
    first.set_epoch(1)
    assert any(not torch.equal(before[i], first[i]["A"]) for i in range(3))


def test_colour_jitter_touches_only_the_input(bci: Path) -> None:
    plain = TranslationPairs(bci, "train", seed=1)[0]
    jittered = TranslationPairs(bci, "train", seed=1, colour_jitter=0.1)[0]
    assert torch.equal(plain["B"], jittered["B"])
    assert not torch.equal(plain["A"], jittered["A"])
    assert float(jittered["A"].min()) >= -1.0 and float(jittered["A"].max()) <= 1.0


def test_translation_errors(bci: Path, tmp_path: Path) -> None:
    with pytest.raises(DatasetLayoutError, match=r"no split 'test' \(available: train, val\)"):
        TranslationPairs(bci, "test")
    with pytest.raises(ConfigError, match="direction"):
        TranslationPairs(bci, "train", direction="he2he")
    with pytest.raises(ConfigError, match="crop 32 is larger than"):
        TranslationPairs(bci, "train", crop=32)[0]
    with pytest.raises(DatasetLayoutError, match="not a prepared dataset"):
        TranslationPairs(tmp_path / "nowhere", "train")
    missing = bci / "val" / "IHC" / f"{BCI_SPLITS['val'][0]}.png"
    missing.unlink()
    with pytest.raises(DatasetLayoutError, match=re.escape(f"{missing}: missing; expected the IHC patch")):
        TranslationPairs(bci, "val")


def test_loader_gives_the_same_batches_with_workers(bci: Path) -> None:
    data = TranslationPairs(bci, "train", crop=8, paired=False, seed=2)
    batches = {}
    for workers in (0, 2):
        loader = DataLoader(data, batch_size=2, num_workers=workers)
        batches[workers] = list(loader)
        assert [len(b["id_A"]) for b in batches[workers]] == [2, 1]
        assert batches[workers][0]["A"].shape == (2, 3, 8, 8)
    for a, b in zip(batches[0], batches[2], strict=True):
        assert torch.equal(a["A"], b["A"]) and torch.equal(a["B"], b["B"]) and a["id_B"] == b["id_B"]


# -------------------------------------------------------------------------------------------------- pannuke


def pannuke_split(n: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    inst = np.zeros((n, size, size), dtype=np.int32)
    types = np.zeros((n, size, size), dtype=np.uint8)
    for i in range(n - 1):  # the last patch stays empty
        for nucleus in range(1, 4):
            y, x = rng.integers(0, size - 4, 2)
            inst[i, y : y + 3 + nucleus % 2, x : x + 2] = nucleus
        for nucleus in range(1, 4):
            types[i][inst[i] == nucleus] = nucleus + 1
    return images, inst, types


@pytest.fixture
def pannuke(tmp_path: Path) -> Path:
    folder = tmp_path / "pannuke"
    samples = []
    for split, n, fold in (("train", 4, 1), ("test", 2, 3)):
        images, inst, types = pannuke_split(n, 12, fold)
        (folder / split).mkdir(parents=True)
        np.save(folder / split / "images.npy", images)
        np.save(folder / split / "inst_maps.npy", inst)
        np.save(folder / split / "type_maps.npy", types)
        for i in range(n):
            samples.append(
                {"id": f"fold{fold}_{i}", "split": split, "source_image": f"fold{fold}_{i}", "fold": fold,
                 "index": i, "tissue": ["Breast", "Colon"][i % 2], "n_nuclei": 0 if i == n - 1 else 3,
                 "empty": i == n - 1}
            )  # fmt: skip
    manifest(folder, "pannuke", samples)
    return folder


def test_nuclei_samples_without_augmentation_are_the_rows(pannuke: Path) -> None:
    images, inst, types = pannuke_split(4, 12, 1)
    data = NucleiSamples(pannuke, "train", augment=False)
    assert len(data) == 4 and data.shape == (12, 12)
    for i in range(4):
        sample = data[i]
        assert sample["image"].dtype == torch.float32 and sample["image"].shape == (3, 12, 12)
        assert float(sample["image"].min()) >= 0.0 and float(sample["image"].max()) <= 1.0
        assert np.array_equal(to_uint8(sample["image"], False), images[i])
        assert sample["inst_map"].dtype == torch.int32 and np.array_equal(sample["inst_map"].numpy(), inst[i])
        assert sample["type_map"].dtype == torch.int64 and np.array_equal(sample["type_map"].numpy(), types[i])
        assert sample["id"] == f"fold1_{i}" and sample["tissue"] == ["Breast", "Colon"][i % 2]


def test_nuclei_augmentation_moves_image_and_maps_together(pannuke: Path) -> None:
    images, inst, types = pannuke_split(4, 12, 1)
    data = NucleiSamples(pannuke, "train", seed=4)
    seen = set()
    for epoch in range(12):
        data.set_epoch(epoch)
        for i in range(4):
            sample = data[i]
            image = to_uint8(sample["image"], False)
            ks = [k for k in range(8) if np.array_equal(dihedral(images[i], k), image)]
            assert len(ks) == 1
            k = ks[0]
            seen.add(k)
            assert np.array_equal(sample["inst_map"].numpy(), dihedral(inst[i], k))
            assert np.array_equal(sample["type_map"].numpy(), dihedral(types[i], k))
    assert seen == set(range(8))


def test_nuclei_arrays_are_the_same_sample_in_uint8(pannuke: Path) -> None:
    images, inst, types = pannuke_split(4, 12, 1)
    data = NucleiSamples(pannuke, "train", seed=4)
    for epoch in range(3):
        data.set_epoch(epoch)
        for i in range(4):
            arrays, sample = data.arrays(i), data[i]
            k = random_dihedral(np.random.default_rng([4, epoch, i]))  # the dataset's draw for (seed, epoch, index)
            assert arrays.image.dtype == np.uint8 and np.array_equal(arrays.image, dihedral(images[i], k))
            assert np.array_equal(arrays.inst_map, dihedral(inst[i], k)) and arrays.inst_map.dtype == np.int32
            assert np.array_equal(arrays.type_map, dihedral(types[i], k))
            assert np.array_equal(to_uint8(sample["image"], False), arrays.image)  # the tensor sample agrees
            assert (arrays.id, arrays.tissue) == (sample["id"], sample["tissue"])


def test_nuclei_scale_and_class_names_come_from_the_manifest_when_recorded(pannuke: Path) -> None:
    data = NucleiSamples(pannuke, "train")
    assert data.mpp is None  # not recorded: the trainer falls back to the published scale
    assert data.class_names == {
        0: "Background",
        1: "Neoplastic",
        2: "Inflammatory",
        3: "Connective",
        4: "Dead",
        5: "Epithelial",
    }
    recorded = json.loads((pannuke / "manifest.json").read_text())
    recorded["options"] = {"mpp": 0.5, "class_names": {"0": "none", "1": "tumour"}}
    (pannuke / "manifest.json").write_text(json.dumps(recorded))
    data = NucleiSamples(pannuke, "train")
    assert (data.mpp, data.class_names) == (0.5, {0: "none", 1: "tumour"})


def test_nuclei_colour_jitter_leaves_maps_alone(pannuke: Path) -> None:
    plain = NucleiSamples(pannuke, "train", seed=9)[0]
    jittered = NucleiSamples(pannuke, "train", seed=9, colour_jitter=0.1, jitter_space="hsv")[0]
    assert torch.equal(plain["inst_map"], jittered["inst_map"]) and torch.equal(plain["type_map"], jittered["type_map"])
    assert not torch.equal(plain["image"], jittered["image"])


def test_nuclei_pickles_without_array_data(pannuke: Path) -> None:
    data = NucleiSamples(pannuke, "train")
    size_before = len(pickle.dumps(data))
    data[0]  # opens the memory maps
    assert data._arrays is not None
    assert len(pickle.dumps(data)) == size_before
    clone = pickle.loads(pickle.dumps(data))
    assert clone._arrays is None
    assert torch.equal(clone[2]["image"], data[2]["image"])


def test_nuclei_loader_with_workers(pannuke: Path) -> None:
    data = NucleiSamples(pannuke, "train", seed=1)
    results = {}
    for workers in (0, 2):
        results[workers] = list(DataLoader(data, batch_size=3, num_workers=workers))
        assert [b["inst_map"].shape for b in results[workers]] == [(3, 12, 12), (1, 12, 12)]
        assert results[workers][0]["tissue"] == ["Breast", "Colon", "Breast"]
    for a, b in zip(results[0], results[2], strict=True):
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["inst_map"], b["inst_map"])


def test_nuclei_layout_errors(pannuke: Path) -> None:
    with pytest.raises(DatasetLayoutError, match=r"no split 'val' \(available: train, test\)"):
        NucleiSamples(pannuke, "val")
    with pytest.raises(DatasetLayoutError, match="holds prepared 'pannuke' data, expected 'bci'"):
        TranslationPairs(pannuke, "train")
    _, inst, _ = pannuke_split(2, 12, 3)
    np.save(pannuke / "test" / "inst_maps.npy", inst.astype(np.int64))
    with pytest.raises(DatasetLayoutError, match=r"test/inst_maps.npy: int64 \(2, 12, 12\), expected int32"):
        NucleiSamples(pannuke, "test")
    np.save(pannuke / "train" / "type_maps.npy", np.zeros((3, 12, 12), dtype=np.uint8))
    with pytest.raises(DatasetLayoutError, match=r"train/type_maps.npy: uint8 \(3, 12, 12\), expected uint8 \(4,"):
        NucleiSamples(pannuke, "train")
    (pannuke / "train" / "images.npy").write_bytes(b"not an array")
    with pytest.raises(DatasetLayoutError, match="images.npy: not a readable .npy array"):
        NucleiSamples(pannuke, "train")


# ------------------------------------------------------------------------------------------------- endonuke

KEYPOINT_SHAPES = {"101_0": (20, 28), "102_1": (28, 20), "103": (24, 24)}


def keypoint_sample(sample_id: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An image whose keypoints (integer coordinates) are one-pixel markers (R = index + 1, G = 255)."""
    height, width = KEYPOINT_SHAPES[sample_id]
    rng = np.random.default_rng(int(sample_id[:3]))
    flat = rng.choice(height * width, size=7, replace=False)
    points = np.stack([flat % width, flat // width], axis=1).astype(float)
    classes = np.array([0, 1, 2, 0, 1, 0, 2])
    image = np.zeros((height, width, 3), dtype=np.uint8)
    image[..., 2] = rng.integers(0, 256, (height, width), dtype=np.uint8)  # texture in blue only
    for i, (x, y) in enumerate(points.astype(int)):
        image[y, x, :2] = (i + 1, 255)
    return image, points, classes


@pytest.fixture
def endonuke(tmp_path: Path) -> Path:
    folder = tmp_path / "endonuke"
    samples = []
    for sample_id in KEYPOINT_SHAPES:
        image, points, classes = keypoint_sample(sample_id)
        split = "test" if sample_id == "103" else "train"
        write_image(folder / split / "images" / f"{sample_id}.png", image)
        pairs = enumerate(zip(points, classes, strict=True))
        nuclei = [Nucleus(id=i + 1, centroid=(p[0], p[1]), type=int(c)) for i, (p, c) in pairs]
        write_centroids_txt(folder / split / "labels" / f"{sample_id}.txt", nuclei)
        height, width = image.shape[:2]
        samples.append(
            {"id": sample_id, "split": split, "source_image": sample_id[:3], "annotator": "ptg1",
             "source_size": [width, height], "scale": 1.0, "crop": [0, 0, width, height], "n_points": 7,
             "dropped_points": 0}
        )  # fmt: skip
    manifest(folder, "endonuke", samples)
    return folder


def test_keypoints_without_augmentation(endonuke: Path) -> None:
    data = KeypointSamples(endonuke, "train", augment=False)
    assert len(data) == 2
    sample = data[0]
    image, points, classes = keypoint_sample("101_0")
    assert sample["id"] == "101_0"
    assert sample["image"].shape == (3, 20, 28) and sample["image"].dtype == torch.float32
    assert np.array_equal(to_uint8(sample["image"], False), image)
    assert sample["points"].dtype == torch.float32 and np.array_equal(sample["points"].numpy(), points)
    assert sample["classes"].dtype == torch.int64 and sample["classes"].tolist() == classes.tolist()


def test_keypoints_follow_the_image_under_every_transform(endonuke: Path) -> None:
    data = KeypointSamples(endonuke, "train", seed=11)
    seen = set()
    for epoch in range(24):
        data.set_epoch(epoch)
        for index, sample_id in enumerate(["101_0", "102_1"]):
            source, _, classes = keypoint_sample(sample_id)
            sample = data[index]
            image = to_uint8(sample["image"], False)
            seen.add(next(k for k in range(8) if np.array_equal(dihedral(source, k), image)))
            assert sample["classes"].tolist() == classes.tolist()
            for i, (x, y) in enumerate(sample["points"].numpy()):
                assert x == int(x) and y == int(y)
                assert tuple(image[int(y), int(x), :2]) == (i + 1, 255)
    assert seen == set(range(8))


def test_fractional_keypoints_are_not_rounded(endonuke: Path) -> None:
    label = endonuke / "test" / "labels" / "103.txt"
    label.write_text("0.25 3.5 1\n24 10 0\n")  # x == W is allowed at the edge
    data = KeypointSamples(endonuke, "test", seed=0)
    sample = data[0]
    image = to_uint8(sample["image"], False)
    source, _, _ = keypoint_sample("103")
    k = next(k for k in range(8) if np.array_equal(dihedral(source, k), image))
    expected = dihedral_points(np.array([[0.25, 3.5], [24.0, 10.0]]), k, 24, 24)
    assert np.allclose(sample["points"].numpy(), expected)


def test_class_map_merges_or_drops(endonuke: Path) -> None:
    _, _, classes = keypoint_sample("101_0")
    merged = KeypointSamples(endonuke, "train", augment=False, class_map={0: 0, 1: 1, 2: 0})[0]
    assert merged["classes"].tolist() == [0 if c == 2 else c for c in classes]
    dropped = KeypointSamples(endonuke, "train", augment=False, class_map={0: 0, 1: 1})[0]
    assert dropped["classes"].tolist() == [c for c in classes if c != 2]
    assert dropped["points"].shape == (int((classes != 2).sum()), 2)


def test_empty_label_file_and_collate(endonuke: Path) -> None:
    (endonuke / "train" / "labels" / "102_1.txt").write_text("")
    data = KeypointSamples(endonuke, "train", augment=False)
    assert data[1]["points"].shape == (0, 2) and data[1]["classes"].shape == (0,)
    batch = collate_keypoints([data[0], data[1]])
    assert isinstance(batch["image"], list)  # 20 x 28 and 28 x 20 cannot be stacked
    assert [p.shape[0] for p in batch["points"]] == [7, 0] and batch["id"] == ["101_0", "102_1"]
    same = collate_keypoints([data[0], data[0]])
    assert same["image"].shape == (2, 3, 20, 28)


def test_keypoint_loader_with_workers(endonuke: Path) -> None:
    data = KeypointSamples(endonuke, "train", seed=3)
    results = {}
    for workers in (0, 2):
        loader = DataLoader(data, batch_size=1, num_workers=workers, collate_fn=collate_keypoints)
        results[workers] = list(loader)
        assert [b["id"] for b in results[workers]] == [["101_0"], ["102_1"]]
    for a, b in zip(results[0], results[2], strict=True):
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["points"][0], b["points"][0])


def test_keypoint_layout_errors(endonuke: Path) -> None:
    with pytest.raises(DatasetLayoutError, match=r"no split 'val' \(available: train, test\)"):
        KeypointSamples(endonuke, "val")
    (endonuke / "test" / "labels" / "103.txt").write_text("1 2 stroma\n")
    with pytest.raises(DatasetLayoutError, match=r"103.txt:1: expected 'x y \[class\]'"):
        KeypointSamples(endonuke, "test")[0]
    (endonuke / "test" / "labels" / "103.txt").write_text("1 2\n")
    with pytest.raises(DatasetLayoutError, match="103.txt: a point has no class"):
        KeypointSamples(endonuke, "test")[0]
    (endonuke / "train" / "labels" / "101_0.txt").unlink()
    with pytest.raises(DatasetLayoutError, match="101_0.txt: missing; expected the keypoints"):
        KeypointSamples(endonuke, "train")
