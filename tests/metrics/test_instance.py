"""Instance metrics: hand-computed cases from the hover_net definitions, edge cases, properties, the service."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy.io import savemat

from histostain.errors import ConfigError, InputError
from histostain.io.images import write_label_tiff
from histostain.io.npy import NpyRows
from histostain.metrics import instance
from histostain.metrics.evaluate_instance import evaluate_instance
from histostain.metrics.instance import (
    InstanceScorer,
    aji,
    aji_plus,
    contingency,
    dice,
    instance_metrics,
    pq,
    remap_label,
    score_instances,
)

EPS = 1e-6  # hover_net's SQ denominator: sum IoU / (TP + 1e-6)


# ------------------------------------------------------------------------------------------ hand-made maps

# A prediction covering two ground-truth nuclei: each pair has I = 4, U = 8, IoU exactly 0.5.
REUSE_TRUE = np.array(
    [
        [1, 1, 2, 2],
        [1, 1, 2, 2],
        [0, 0, 0, 0],
        [0, 0, 0, 0],
    ]
)
REUSE_PRED = np.array(
    [
        [1, 1, 1, 1],
        [1, 1, 1, 1],
        [0, 0, 0, 0],
        [0, 0, 0, 0],
    ]
)

# GT1 3x3 (area 9), GT2 2x2 (area 4), GT3 one pixel; P1 = GT1 minus a corner (I 8, U 9), P2 3x2 over GT2
# (I 4, U 6), P3 a lone false positive.
MIXED_TRUE = np.array(
    [
        [1, 1, 1, 0, 0, 0],
        [1, 1, 1, 0, 0, 0],
        [1, 1, 1, 0, 0, 0],
        [0, 0, 0, 0, 0, 0],
        [0, 0, 0, 0, 2, 2],
        [3, 0, 0, 0, 2, 2],
    ]
)
MIXED_PRED = np.array(
    [
        [0, 1, 1, 0, 0, 3],
        [1, 1, 1, 0, 0, 0],
        [1, 1, 1, 0, 0, 0],
        [0, 0, 0, 0, 2, 2],
        [0, 0, 0, 0, 2, 2],
        [0, 0, 0, 0, 2, 2],
    ]
)

# One row: GT1 = cols 0-3 (area 4), GT2 = cols 4-9 (area 6); P1 = cols 2-6 (area 5).
# IoU(GT1, P1) = 2 / 7, IoU(GT2, P1) = 3 / 8.
ROW_TRUE = np.array([[1, 1, 1, 1, 2, 2, 2, 2, 2, 2]])
ROW_PRED = np.array([[0, 0, 1, 1, 1, 1, 1, 0, 0, 0]])


def test_prediction_reused_by_two_truths_aji_and_aji_plus_differ() -> None:
    # AJI: both GT take P1 (argmax, reuse allowed): I = 4 + 4, U = 8 + 8.
    assert aji(REUSE_TRUE, REUSE_PRED) == pytest.approx(8 / 16)
    # AJI+: unique pairing: one GT takes P1 (I 4, U 8), the other GT's area (4) joins the union.
    assert aji_plus(REUSE_TRUE, REUSE_PRED) == pytest.approx(4 / 12)
    assert dice(REUSE_TRUE, REUSE_PRED) == pytest.approx(2 * 8 / (8 + 8))


def test_iou_exactly_half_is_not_a_match() -> None:
    dq, sq, pq_value, pairing = pq(REUSE_TRUE, REUSE_PRED)
    assert (pairing.tp, pairing.fp, pairing.fn) == (0, 1, 2)
    assert (dq, sq, pq_value) == (0.0, 0.0, 0.0)
    one_pair_true = np.array([[1, 1, 1, 0]])
    one_pair_pred = np.array([[0, 1, 1, 1]])  # I = 2, U = 4
    assert pq(one_pair_true, one_pair_pred).pairing.tp == 0
    below = pq(one_pair_true, one_pair_pred, match_iou=0.4)  # Hungarian branch, then IoU > 0.4
    assert below.pairing.tp == 1
    assert below.dq == 1.0
    assert below.sq == pytest.approx(0.5 / (1 + EPS), rel=1e-12)


def test_mixed_case_all_six_metrics_by_hand() -> None:
    scores = instance_metrics(MIXED_TRUE, MIXED_PRED)
    assert (scores["tp"], scores["fp"], scores["fn"]) == (2, 1, 1)
    assert (scores["n_true"], scores["n_pred"]) == (3, 3)
    assert scores["dice"] == pytest.approx(2 * 12 / (14 + 15))
    assert scores["aji"] == pytest.approx(12 / (9 + 6 + 1 + 1))  # pairs' unions + GT3 + P3
    assert scores["aji_plus"] == pytest.approx(12 / 17)
    dq = 2 / (2 + 0.5 * 1 + 0.5 * 1)
    sq = (8 / 9 + 4 / 6) / (2 + EPS)
    assert scores["dq"] == pytest.approx(dq, rel=1e-12)
    assert scores["sq"] == pytest.approx(sq, rel=1e-12)
    assert scores["pq"] == pytest.approx(dq * sq, rel=1e-12)
    pairing = pq(MIXED_TRUE, MIXED_PRED).pairing
    assert sorted(zip(pairing.paired_true.tolist(), pairing.paired_pred.tolist(), strict=True)) == [(1, 1), (2, 2)]
    assert pairing.unpaired_true.tolist() == [3]
    assert pairing.unpaired_pred.tolist() == [3]
    assert np.allclose(sorted(pairing.paired_iou), [4 / 6, 8 / 9])


def test_hungarian_pairing_below_half_and_aji_reuse() -> None:
    low = pq(ROW_TRUE, ROW_PRED, match_iou=0.2)
    assert low.pairing.paired_true.tolist() == [2]  # the larger IoU (3/8) wins the only prediction
    assert (low.pairing.tp, low.pairing.fp, low.pairing.fn) == (1, 0, 1)
    assert low.dq == pytest.approx(1 / 1.5)
    assert low.sq == pytest.approx((3 / 8) / (1 + EPS), rel=1e-12)
    assert pq(ROW_TRUE, ROW_PRED, match_iou=0.5).pq == 0.0
    assert aji(ROW_TRUE, ROW_PRED) == pytest.approx((2 + 3) / (7 + 8))  # P1 reused by both GTs
    assert aji_plus(ROW_TRUE, ROW_PRED) == pytest.approx(3 / (8 + 4))  # GT2-P1, GT1 unpaired


def test_contingency_table_counts_overlaps() -> None:
    table = contingency(MIXED_TRUE, MIXED_PRED)
    assert table.true_ids.tolist() == [1, 2, 3]
    assert table.true_area.tolist() == [9, 4, 1]
    assert table.pred_area.tolist() == [8, 6, 1]
    assert list(zip(table.rows.tolist(), table.cols.tolist(), table.inter.tolist(), strict=True)) == [
        (0, 0, 8),
        (1, 1, 4),
    ]


# -------------------------------------------------------------------------------------------- edge cases


def test_map_without_background() -> None:
    full_true = np.full((4, 4), 5)
    full_pred = np.full((4, 4), 9)
    scores = instance_metrics(full_true, full_pred)
    assert scores["dice"] == 1.0 and scores["aji"] == 1.0 and scores["aji_plus"] == 1.0
    assert scores["pq"] == pytest.approx(1 / (1 + EPS), rel=1e-12)
    assert remap_label(np.array([[5, 5], [7, 7]])).tolist() == [[1, 1], [2, 2]]


def test_empty_prediction_scores_zero() -> None:
    scores = instance_metrics(MIXED_TRUE, np.zeros_like(MIXED_TRUE))
    assert [scores[k] for k in ("dice", "aji", "aji_plus", "dq", "sq", "pq")] == [0.0] * 6
    assert (scores["tp"], scores["fp"], scores["fn"]) == (0, 0, 3)


def test_empty_truth_scores_zero() -> None:
    scores = instance_metrics(np.zeros_like(MIXED_PRED), MIXED_PRED)
    assert [scores[k] for k in ("dice", "aji", "aji_plus", "dq", "sq", "pq")] == [0.0] * 6
    assert scores["fp"] == 3


def test_both_empty_is_undefined() -> None:
    empty = np.zeros((4, 4), np.int32)
    scores = instance_metrics(empty, empty)
    for key in ("dice", "aji", "aji_plus", "dq", "sq", "pq"):
        assert math.isnan(scores[key]), key
    assert (scores["tp"], scores["fp"], scores["fn"]) == (0, 0, 0)


def test_non_contiguous_and_permuted_ids_give_the_same_scores() -> None:
    reference = instance_metrics(MIXED_TRUE, MIXED_PRED, match_iou=0.3)
    relabel_true = np.array([0, 40, 7, 1000])[MIXED_TRUE]  # 1 -> 40, 2 -> 7, 3 -> 1000
    relabel_pred = np.array([0, 3, 2**33, 12])[MIXED_PRED]
    assert instance_metrics(relabel_true, relabel_pred, match_iou=0.3) == pytest.approx(reference)
    assert instance_metrics(MIXED_TRUE.astype(np.float64), MIXED_PRED.astype(np.uint16)) == pytest.approx(
        instance_metrics(MIXED_TRUE, MIXED_PRED)
    )


def test_remap_label_order_and_by_size() -> None:
    labels = np.array([[9, 9, 9, 0], [4, 0, 30, 30], [0, 0, 30, 30]])
    assert remap_label(labels).tolist() == [[2, 2, 2, 0], [1, 0, 3, 3], [0, 0, 3, 3]]
    assert remap_label(labels, by_size=True).tolist() == [[2, 2, 2, 0], [3, 0, 1, 1], [0, 0, 1, 1]]
    ties = np.array([[7, 3, 0]])  # equal sizes keep their id order
    assert remap_label(ties, by_size=True).tolist() == [[2, 1, 0]]
    assert remap_label(np.zeros((2, 2), np.int64)).dtype == np.int32


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match="shape"):
        dice(np.zeros((2, 2)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="integers"):
        dice(np.full((2, 2), 0.5), np.zeros((2, 2)))
    with pytest.raises(ValueError, match="match_iou"):
        pq(MIXED_TRUE, MIXED_PRED, match_iou=1.5)


# ----------------------------------------------------------------------------------------------- properties

label_maps = arrays(np.int32, st.tuples(st.integers(1, 7), st.integers(1, 7)), elements=st.integers(0, 4))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(true=label_maps, data=st.data())
def test_bounds_and_symmetry(true: np.ndarray, data: st.DataObject) -> None:
    pred = data.draw(arrays(np.int32, true.shape, elements=st.integers(0, 4)))
    forward = instance_metrics(true, pred)
    backward = instance_metrics(pred, true)
    both_empty = not true.any() and not pred.any()
    for key in ("dice", "aji", "aji_plus", "dq", "sq", "pq"):
        value = forward[key]
        if both_empty:
            assert math.isnan(value)
        else:
            assert 0.0 <= value <= 1.0, (key, value)
    for key in ("dice", "dq", "sq", "pq"):  # symmetric by definition (IoU > 0.5 pairing is unique)
        assert forward[key] == pytest.approx(backward[key], nan_ok=True), key
    assert (forward["tp"], forward["fp"], forward["fn"]) == (backward["tp"], backward["fn"], backward["fp"])
    identical = instance_metrics(true, true)
    if true.any():
        n = identical["n_true"]
        assert identical["dice"] == 1.0 and identical["aji"] == 1.0 and identical["aji_plus"] == 1.0
        assert identical["pq"] == pytest.approx(n / (n + EPS), rel=1e-12)


@settings(max_examples=40, deadline=None)
@given(true=label_maps, data=st.data())
def test_permutation_invariance(true: np.ndarray, data: st.DataObject) -> None:
    pred = data.draw(arrays(np.int32, true.shape, elements=st.integers(0, 4)))
    perm_t = np.concatenate([[0], data.draw(st.permutations([3, 11, 12, 500]))])
    perm_p = np.concatenate([[0], data.draw(st.permutations([2, 8, 64, 70000]))])
    a = instance_metrics(true, pred)
    b = instance_metrics(perm_t[true], perm_p[pred])
    for key in ("dice", "dq", "sq", "pq", "tp", "fp", "fn"):  # AJI's argmax ties depend on id order, by design
        assert a[key] == pytest.approx(b[key], nan_ok=True), key


# ---------------------------------------------------------------------------------------- the service


@pytest.fixture()
def folders(tmp_path: Path) -> tuple[Path, Path]:
    true_dir, pred_dir = tmp_path / "true", tmp_path / "pred"
    true_dir.mkdir()
    pred_dir.mkdir()
    write_label_tiff(true_dir / "img_a.tif", MIXED_TRUE.astype(np.int32))
    savemat(pred_dir / "img_a.mat", {"inst_map": MIXED_PRED.astype(np.int32), "inst_type": np.ones((3, 1))})
    write_label_tiff(true_dir / "img_b.tif", REUSE_TRUE.astype(np.uint16))
    write_label_tiff(pred_dir / "img_b.tif", REUSE_PRED.astype(np.uint16))
    write_label_tiff(true_dir / "img_e.tif", np.zeros((4, 4), np.int32))  # both empty: undefined, skipped
    write_label_tiff(pred_dir / "img_e.tif", np.zeros((4, 4), np.int32))
    write_label_tiff(true_dir / "img_c.tif", MIXED_TRUE.astype(np.int32))  # no prediction
    write_label_tiff(pred_dir / "img_z.tif", MIXED_TRUE.astype(np.int32))  # no ground truth
    return true_dir, pred_dir


def test_service_means_over_images_and_pooled_pq(folders: tuple[Path, Path]) -> None:
    result = evaluate_instance(*folders)
    s = result.summary
    pq_a = (2 / 3) * (8 / 9 + 4 / 6) / (2 + EPS)
    assert s["images"] == 3
    assert s["PQ"] == pytest.approx((pq_a + 0.0) / 2, rel=1e-12)
    assert s["Dice"] == pytest.approx((24 / 29 + 1.0) / 2)
    assert s["AJI"] == pytest.approx((12 / 17 + 0.5) / 2)
    assert s["AJI+"] == pytest.approx((12 / 17 + 1 / 3) / 2)
    # pooled: TP 2, FP 1 + 1, FN 1 + 2, IoU sum 8/9 + 4/6
    assert (s["TP"], s["FP"], s["FN"]) == (2, 2, 3)
    assert s["DQ_pooled"] == pytest.approx(2 / (2 + 1 + 1.5))
    assert s["SQ_pooled"] == pytest.approx((8 / 9 + 4 / 6) / (2 + EPS), rel=1e-12)
    assert s["PQ_pooled"] == pytest.approx(s["DQ_pooled"] * s["SQ_pooled"])
    assert result.meta["unmatched_true"] == ["img_c"]
    assert result.meta["unmatched_pred"] == ["img_z"]
    assert result.meta["undefined_images"]["PQ"] == 1
    assert [row["image"] for row in result.per_image] == ["img_a", "img_b", "img_e"]
    assert len(result.warnings) == 3
    json_rows = result.to_json()["per_image"]
    assert json_rows[2]["pq"] is None  # NaN -> null in JSON


def test_service_errors(folders: tuple[Path, Path], tmp_path: Path) -> None:
    true_dir, pred_dir = folders
    with pytest.raises(ConfigError, match="protocol"):
        evaluate_instance(true_dir, pred_dir, protocol="coco")
    with pytest.raises(InputError, match="not found"):
        evaluate_instance(tmp_path / "missing", pred_dir)
    write_label_tiff(pred_dir / "img_b.tif", np.zeros((5, 5), np.int32))
    with pytest.raises(InputError, match="img_b.tif"):
        evaluate_instance(true_dir, pred_dir)
    other = tmp_path / "other"
    other.mkdir()
    write_label_tiff(other / "unrelated.tif", np.zeros((4, 4), np.int32))
    with pytest.raises(InputError, match="same name"):
        evaluate_instance(true_dir, other)
    savemat(other / "bad.mat", {"labels": np.zeros((4, 4))})
    with pytest.raises(InputError, match="inst_map"):
        evaluate_instance(other / "bad.mat", other / "bad.mat")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="no instance maps"):
        evaluate_instance(empty, pred_dir)


def test_service_reads_hover_net_output_folder_and_masks_npy(tmp_path: Path) -> None:
    run = tmp_path / "hovernet_out" / "mat"
    run.mkdir(parents=True)
    savemat(run / "0.mat", {"inst_map": MIXED_PRED.astype(np.int32)})
    masks = np.zeros((1, 6, 6, 6))
    masks[0, ..., 2] = MIXED_TRUE  # all nuclei in the Connective channel
    masks[0, ..., 5] = MIXED_TRUE == 0
    gt = tmp_path / "gt"
    gt.mkdir()
    np.save(gt / "masks.npy", masks)
    result = evaluate_instance(gt, tmp_path / "hovernet_out")
    assert result.summary["PQ"] == pytest.approx(instance_metrics(MIXED_TRUE, MIXED_PRED)["pq"])


def test_large_map_paths_agree_with_the_dense_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    """The sparse table (np.unique) and the per-component Hungarian used for huge maps give the same scores."""
    rng = np.random.default_rng(3)
    cases = [(rng.integers(0, 9, (12, 12)), rng.integers(0, 9, (12, 12))) for _ in range(20)]
    cases.append((ROW_TRUE, ROW_PRED))
    dense = [instance_metrics(t, p, match_iou=0.3) for t, p in cases]
    monkeypatch.setattr(instance, "_DENSE_TABLE_LIMIT", 0)
    monkeypatch.setattr(instance, "_DENSE_HUNGARIAN_LIMIT", 0)
    monkeypatch.setattr(instance, "_LUT_LIMIT", 0)
    for (t, p), expected in zip(cases, dense, strict=True):
        assert instance_metrics(t, p, match_iou=0.3) == pytest.approx(expected)


def test_npy_rows_reads_across_chunks(tmp_path: Path) -> None:
    data = np.arange(7 * 3 * 2, dtype=np.float64).reshape(7, 3, 2)
    np.save(tmp_path / "rows.npy", data)
    rows = NpyRows(tmp_path / "rows.npy", "rows.npy", chunk=3)
    assert len(rows) == 7 and rows.shape == (7, 3, 2)
    for index in (0, 4, 2, 6, 5):
        assert np.array_equal(rows[index], data[index])
    rows.close()
    with pytest.raises(InputError, match="not found"):
        NpyRows(tmp_path / "missing.npy", "masks.npy")
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(InputError, match="objects.npy"):
        NpyRows(tmp_path / "objects.npy", "masks.npy")


# ----------------------------------------------------------------------------------------- array level


def _random_maps(seed: int, count: int = 8) -> list[tuple[np.ndarray, np.ndarray]]:
    """Pairs of 24 x 24 maps with shifted, dropped and spurious nuclei (and one pair empty on both sides)."""
    rng = np.random.default_rng(seed)
    pairs = []
    for index in range(count):
        true = np.zeros((24, 24), np.int32)
        pred = np.zeros((24, 24), np.int32)
        for nucleus in range(0 if index == 0 else int(rng.integers(1, 6))):
            y, x = rng.integers(0, 19, 2)
            true[y : y + int(rng.integers(2, 6)), x : x + int(rng.integers(2, 6))] = nucleus + 1
            if rng.random() < 0.8:
                dy, dx = rng.integers(-1, 2, 2)
                pred[max(0, y + dy) : y + dy + 4, max(0, x + dx) : x + dx + 4] = 7 * nucleus + 3
        pairs.append((true, pred))
    return pairs


@pytest.mark.parametrize("match_iou", [0.5, 0.3])
def test_files_and_arrays_give_identical_results(tmp_path: Path, match_iou: float) -> None:
    """evaluate_instance reads files and feeds the same InstanceScorer as score_instances: the same numbers."""
    pairs = _random_maps(5)
    names = [f"img_{i}" for i in range(len(pairs))]
    (tmp_path / "pred").mkdir()
    for name, (true, pred) in zip(names, pairs, strict=True):
        write_label_tiff(tmp_path / "true" / f"{name}.tif", true)
        savemat(tmp_path / "pred" / f"{name}.mat", {"inst_map": pred})
    from_files = evaluate_instance(tmp_path / "true", tmp_path / "pred", match_iou=match_iou)
    from_arrays = score_instances(
        ((name, true, pred) for name, (true, pred) in zip(names, pairs, strict=True)), match_iou=match_iou
    )
    assert from_files.summary["TP"] > 0 and from_files.meta["undefined_images"]["PQ"] == 1
    assert from_files.to_json()["summary"] == from_arrays.to_json()["summary"]
    assert from_files.to_json()["per_image"] == from_arrays.to_json()["per_image"]
    assert from_files.warnings == from_arrays.warnings  # nothing unmatched: only the scorer's own warning
    for key in ("protocol", "match_iou", "images", "aggregation", "undefined_images"):
        assert from_files.meta[key] == from_arrays.meta[key], key


def test_scorer_aggregates_as_it_goes_without_changing_earlier_results() -> None:
    scorer = InstanceScorer()
    empty = scorer.result()
    assert empty.summary["images"] == 0 and math.isnan(empty.summary["PQ"]) and math.isnan(empty.summary["PQ_pooled"])
    row = scorer.add("mixed", MIXED_TRUE, MIXED_PRED)
    assert row == {
        "image": "mixed",
        **{k: v for k, v in instance_metrics(MIXED_TRUE, MIXED_PRED).items() if k != "iou_sum"},
    }
    first = scorer.result()
    scorer.add("reuse", REUSE_TRUE, REUSE_PRED)
    second = scorer.result()
    assert first.summary["images"] == 1 and second.summary["images"] == 2
    assert second.summary["PQ"] == pytest.approx((first.summary["PQ"] + 0.0) / 2)  # REUSE has PQ 0
    assert first.per_image == [row]  # a result is a snapshot
    with pytest.raises(ConfigError, match="match IoU"):
        InstanceScorer(match_iou=1.0)
