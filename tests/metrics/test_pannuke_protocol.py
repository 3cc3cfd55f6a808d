"""The official PanNuke protocol (mPQ, bPQ): hand-computed values on a tiny two-tissue set, binarize, inputs."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from histostain.datasets.pannuke import prepare_pannuke
from histostain.errors import ConfigError, InputError
from histostain.metrics.evaluate_instance import evaluate_instance
from histostain.metrics.pannuke import binarize, image_pq
from histostain.synth import write_dataset
from histostain.vocabulary import PANNUKE_CLASSES

E1 = 1 / (1 + 1e-6)  # SQ of one perfect pair: IoU 1 / (TP + 1e-6)


def _nucleus(masks: np.ndarray, channel: int, nucleus_id: int, row: int, col: int) -> None:
    """A 2x2 nucleus at (row, col) in one class channel of an (H, W, 6) mask."""
    masks[row : row + 2, col : col + 2, channel] = nucleus_id


def _empty() -> np.ndarray:
    masks = np.zeros((8, 8, 6))
    masks[..., 5] = 1
    return masks


def _background(masks: np.ndarray) -> np.ndarray:
    masks[..., 5] = (masks[..., :5] == 0).all(axis=-1)
    return masks


def _tiny_set() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Four 8x8 images: two Breast, two Colon (the last one empty in the ground truth)."""
    true = np.stack([_empty() for _ in range(4)])
    pred = np.stack([_empty() for _ in range(4)])
    # image 0 (Breast): Neoplastic a found; a false Inflammatory nucleus (class absent from GT: not penalised)
    _nucleus(true[0], 0, 7, 0, 0)
    _nucleus(pred[0], 0, 3, 0, 0)
    _nucleus(pred[0], 1, 1, 4, 4)
    # image 1 (Breast): Neoplastic a found, b missed; Connective c missed
    _nucleus(true[1], 0, 1, 0, 0)
    _nucleus(true[1], 0, 2, 4, 0)
    _nucleus(true[1], 2, 9, 4, 4)
    _nucleus(pred[1], 0, 5, 0, 0)
    # image 2 (Colon): Dead d found
    _nucleus(true[2], 3, 1, 2, 2)
    _nucleus(pred[2], 3, 1, 2, 2)
    # image 3 (Colon): nothing in GT, one false positive: NaN everywhere, skipped
    _nucleus(pred[3], 4, 1, 0, 0)
    for masks in (*true, *pred):
        _background(masks)
    tissues = np.array(["Breast", "Breast", "Colon", "Colon"])
    return true, pred, tissues


def _write(folder: Path, masks: np.ndarray, tissues: np.ndarray | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "masks.npy", masks)
    if tissues is not None:
        np.save(folder / "types.npy", tissues)
    return folder


def test_per_image_values_by_hand() -> None:
    true, pred, _ = _tiny_set()
    binary, classes = image_pq(true[0], pred[0])
    assert binary == pytest.approx((1 / 1.5) * E1)  # binary: TP 1, FP 1 (the Inflammatory false positive)
    assert classes[0] == pytest.approx(E1)
    assert all(math.isnan(v) for v in classes[1:])  # Inflammatory absent from GT: NaN despite the FP
    binary, classes = image_pq(true[1], pred[1])
    assert binary == pytest.approx(0.5 * E1)  # TP 1, FN 2: 1 / (1 + 1)
    assert classes[0] == pytest.approx((2 / 3) * E1)  # TP 1, FN 1
    assert classes[2] == 0.0
    binary, classes = image_pq(true[3], pred[3])
    assert math.isnan(binary) and all(math.isnan(v) for v in classes)


def test_protocol_on_two_tissues_by_hand(tmp_path: Path) -> None:
    true, pred, tissues = _tiny_set()
    result = evaluate_instance(
        _write(tmp_path / "true", true, tissues), _write(tmp_path / "pred", pred), protocol="pannuke"
    )
    # per image mPQ: E1, (2/3 E1 + 0) / 2, E1, NaN; bPQ: 2/3 E1, 1/2 E1, E1, NaN
    breast_m, breast_b = (E1 + E1 / 3) / 2, (2 / 3 * E1 + 0.5 * E1) / 2
    colon_m, colon_b = E1, E1
    assert result.summary["mPQ"] == pytest.approx((breast_m + colon_m) / 2, rel=1e-12)
    assert result.summary["bPQ"] == pytest.approx((breast_b + colon_b) / 2, rel=1e-12)
    tissues_table = {row["tissue"]: row for row in result.tables["per_tissue"]}
    assert list(tissues_table) == ["Breast", "Colon"]
    assert tissues_table["Breast"]["mPQ"] == pytest.approx(breast_m)
    assert tissues_table["Colon"]["bPQ"] == pytest.approx(colon_b)
    assert tissues_table["Colon"]["images"] == 2
    classes = {row["class"]: row["PQ"] for row in result.tables["per_class"]}
    assert list(classes) == list(PANNUKE_CLASSES)
    assert classes["Neoplastic"] == pytest.approx((E1 + 2 / 3 * E1) / 2)
    assert math.isnan(classes["Inflammatory"])  # the reference's csv would show the Connective value here
    assert classes["Connective"] == 0.0
    assert classes["Dead"] == pytest.approx(E1)
    assert math.isnan(classes["Epithelial"])
    assert [row["tissue"] for row in result.per_image] == ["Breast", "Breast", "Colon", "Colon"]
    assert math.isnan(result.per_image[3]["bPQ"])
    assert result.meta["images_without_nuclei"] == 1


def test_binarize_overwrite_order_and_numbering() -> None:
    masks = np.zeros((3, 4, 5), np.int64)
    masks[0, 0:2, 0] = 7  # channel 0: ids 7 and 2 -> 2 comes first
    masks[1, 0:2, 0] = 2
    masks[0, 1:3, 2] = 4  # channel 2 overwrites pixel (0, 1) of channel 0's id 7
    masks[2, 3, 1] = 1000
    merged = binarize(masks)
    expected = np.array(
        [
            [2, 4, 4, 0],
            [1, 1, 0, 0],
            [0, 0, 0, 3],
        ]
    )
    assert merged.tolist() == expected.tolist()


def test_binarize_fully_overwritten_instance_leaves_no_gap() -> None:
    masks = np.zeros((4, 4, 5), np.int64)
    masks[0:2, 0:2, 0] = 1  # wholly covered by the Epithelial nucleus below: the reference's id gap
    masks[0:2, 0:2, 4] = 1
    masks[3, 3, 1] = 5
    merged = binarize(masks)
    assert sorted(np.unique(merged).tolist()) == [0, 1, 2]
    binary, _ = image_pq(np.concatenate([masks, np.zeros((4, 4, 1))], axis=-1), masks)  # the reference crashes
    assert binary == pytest.approx(2 / (2 + 1e-6))


def test_input_errors(tmp_path: Path) -> None:
    true, pred, tissues = _tiny_set()
    good = _write(tmp_path / "true", true, tissues)
    no_types = _write(tmp_path / "no_types", true)
    short = _write(tmp_path / "short", pred[:3])
    with pytest.raises(InputError, match="types.npy"):
        evaluate_instance(no_types, good, protocol="pannuke")
    with pytest.raises(InputError, match="does not match"):
        evaluate_instance(good, short, protocol="pannuke")
    objects = _write(tmp_path / "objects", true)
    np.save(objects / "types.npy", np.array(["Breast", 1, 2, 3], dtype=object), allow_pickle=True)
    with pytest.raises(InputError, match="types.npy"):
        evaluate_instance(objects, good, protocol="pannuke")
    fractional = _write(tmp_path / "fractional", pred + 0.5)
    with pytest.raises(InputError, match="image 0"):
        evaluate_instance(good, fractional, protocol="pannuke")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pannuke")
    write_dataset("pannuke", root / "raw", 6, size=64, seed=0)  # every test and train patch has nuclei
    prepare_pannuke(root / "raw", root / "prepared")
    return root / "prepared"


def test_prepared_dataset_as_truth_and_perfect_prediction(prepared: Path, tmp_path: Path) -> None:
    pred = tmp_path / "pred"
    pred.mkdir()
    shutil.copy(prepared / "test" / "eval" / "masks.npy", pred / "masks.npy")
    result = evaluate_instance(prepared, pred, protocol="pannuke")
    assert result.meta["images"] == 2  # the test split is the default
    assert result.summary["mPQ"] == pytest.approx(1.0, abs=1e-6)
    assert result.summary["bPQ"] == pytest.approx(1.0, abs=1e-6)
    assert [row["id"] for row in result.per_image] == ["fold3_0", "fold3_1"]
    # hover_net protocol on the prepared instance maps (array vs array: paired row by row)
    hovernet = evaluate_instance(prepared, prepared, split="train")
    assert hovernet.summary["images"] == 2
    assert hovernet.summary["PQ"] == pytest.approx(1.0, abs=1e-6)
    assert hovernet.summary["Dice"] == 1.0 and hovernet.summary["AJI"] == 1.0
    assert [row["image"] for row in hovernet.per_image] == ["fold1_0", "fold1_1"]


def test_unknown_split_is_a_config_error(prepared: Path) -> None:
    with pytest.raises(ConfigError, match="--split holdout: .* has no such split"):
        evaluate_instance(prepared, prepared, split="holdout")
