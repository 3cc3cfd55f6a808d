"""LabelPairs: encoded PanNuke label maps (A) and their H&E patches (B), aligned under one crop and transform."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from histostain.datasets import augment as aug
from histostain.datasets.label_pairs import LabelPairs
from histostain.datasets.prepared import Manifest, SourceInfo, write_manifest
from histostain.errors import ConfigError, DatasetLayoutError
from histostain.synth.label_maps import encode_label_map

SIZE = 20
SOURCE = SourceInfo(path="/data/source", kind="folder", file_count=1, total_bytes=1, fingerprint="0" * 64)


def fabricated_split(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Maps with touching nuclei, and H&E made from the label map (inverted) on a random background texture,
    so every pixel of B both tells where it came from and agrees with the label map at that place."""
    rng = np.random.default_rng(seed)
    inst = np.zeros((n, SIZE, SIZE), dtype=np.int32)
    types = np.zeros((n, SIZE, SIZE), dtype=np.uint8)
    images = rng.integers(0, 100, (n, SIZE, SIZE, 3), dtype=np.uint8)  # texture: never 255 - a label colour
    for i in range(n):
        for nucleus in range(1, 6):
            y, x = rng.integers(0, SIZE - 5, 2)
            inst[i, y : y + 3 + nucleus % 3, x : x + 4] = nucleus
        for nucleus in range(1, 6):
            types[i][inst[i] == nucleus] = 1 + nucleus % 5
        label = encode_label_map(inst[i], types[i])
        nuclei = inst[i] > 0
        images[i][nuclei] = 255 - label[nuclei]
    return images, inst, types


@pytest.fixture
def pannuke(tmp_path: Path) -> Path:
    folder = tmp_path / "pannuke"
    samples, splits = [], {}
    for split, n, seed in (("train", 3, 1), ("test", 2, 2)):
        images, inst, types = fabricated_split(n, seed)
        (folder / split).mkdir(parents=True)
        np.save(folder / split / "images.npy", images)
        np.save(folder / split / "inst_maps.npy", inst)
        np.save(folder / split / "type_maps.npy", types)
        splits[split] = n
        samples += [{"id": f"{split}_{i}", "split": split, "tissue": "Breast"} for i in range(n)]
    write_manifest(folder, Manifest(dataset="pannuke", source=SOURCE, options={}, splits=splits, samples=samples))
    return folder


def to_uint8(tensor: torch.Tensor) -> np.ndarray:
    assert tensor.dtype == torch.float32 and tensor.min() >= -1 and tensor.max() <= 1
    return np.rint((tensor.numpy().transpose(1, 2, 0) + 1) * 127.5).astype(np.uint8)


def placements(source: np.ndarray, patch: np.ndarray) -> set[tuple[int, int, int]]:
    """Every (dihedral k, y0, x0) with ``dihedral(crop(source, y0, x0), k) == patch``."""
    size = patch.shape[0]
    found = set()
    for y0 in range(source.shape[0] - size + 1):
        for x0 in range(source.shape[1] - size + 1):
            for k in range(8):
                if np.array_equal(aug.dihedral(aug.crop(source, y0, x0, size), k), patch):
                    found.add((k, y0, x0))
    return found


def test_without_augmentation_a_is_the_encoded_maps_and_b_the_image(pannuke: Path) -> None:
    images, inst, types = fabricated_split(3, 1)
    data = LabelPairs(pannuke, "train", augment=False)
    assert len(data) == 3
    for i in range(3):
        sample = data[i]
        assert set(sample) == {"A", "B", "id_A", "id_B"} and sample["id_A"] == sample["id_B"] == f"train_{i}"
        assert sample["A"].shape == sample["B"].shape == (3, SIZE, SIZE)
        assert np.array_equal(to_uint8(sample["A"]), encode_label_map(inst[i], types[i]))
        assert np.array_equal(to_uint8(sample["B"]), images[i])


def test_a_and_b_share_the_crop_and_the_dihedral_transform(pannuke: Path) -> None:
    images, inst, types = fabricated_split(3, 1)
    seen = set()
    for seed in range(4):
        data = LabelPairs(pannuke, "train", crop=12, seed=seed)
        for i in range(len(data)):
            label, image = (to_uint8(data[i][key]) for key in ("A", "B"))
            where = placements(images[i], image)
            assert len(where) == 1  # the texture makes B's origin unique
            assert where <= placements(encode_label_map(inst[i], types[i]), label)
            nuclei = (label != 0).any(axis=2)
            assert np.array_equal(image[nuclei], 255 - label[nuclei])
            seen |= where
    assert len({k for k, _, _ in seen}) > 2 and len({(y, x) for _, y, x in seen}) > 2  # draws really vary


def test_centre_crop_when_not_augmenting(pannuke: Path) -> None:
    images, inst, types = fabricated_split(3, 1)
    sample = LabelPairs(pannuke, "train", crop=12, augment=False)[1]
    assert np.array_equal(to_uint8(sample["B"]), images[1][4:16, 4:16])
    assert np.array_equal(to_uint8(sample["A"]), encode_label_map(inst[1], types[1])[4:16, 4:16])


def test_draws_depend_on_seed_epoch_and_index_only(pannuke: Path) -> None:
    def batch(seed: int, epoch: int) -> list[np.ndarray]:
        data = LabelPairs(pannuke, "train", crop=12, seed=seed)
        data.set_epoch(epoch)
        return [data[i]["B"].numpy() for i in reversed(range(len(data)))]

    first = batch(3, 0)
    assert all(np.array_equal(a, b) for a, b in zip(first, batch(3, 0), strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(first, batch(3, 1), strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(first, batch(4, 0), strict=True))
    data = LabelPairs(pannuke, "train")
    with pytest.raises(ValueError, match="epoch"):
        data.set_epoch(-1)


def test_pickles_without_array_data_and_reads_after(pannuke: Path) -> None:
    data = LabelPairs(pannuke, "test", seed=2)
    expected = data[1]["A"]
    blob = pickle.dumps(data)
    assert len(blob) < 20_000
    assert torch.equal(pickle.loads(blob)[1]["A"], expected)


def test_layout_and_option_errors(pannuke: Path, tmp_path: Path) -> None:
    with pytest.raises(DatasetLayoutError, match="no split 'val'"):
        LabelPairs(pannuke, "val")
    with pytest.raises(ConfigError, match="larger than the patches"):
        LabelPairs(pannuke, "train", crop=SIZE + 1)
    with pytest.raises(ConfigError, match="positive"):
        LabelPairs(pannuke, "train", crop=0)
    with pytest.raises(IndexError):
        LabelPairs(pannuke, "test")[2]
    np.save(pannuke / "test" / "type_maps.npy", np.zeros((2, SIZE, SIZE), dtype=np.int64))
    with pytest.raises(DatasetLayoutError, match="type_maps.npy"):
        LabelPairs(pannuke, "test")
