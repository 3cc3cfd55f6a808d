"""Cell-detection matching and scores, checked against values worked out by hand from the definitions
(HoVer-Net ``pair_coordinates``, the seed's ``CellDetectionMetric``, CoNIC per-class F1)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from histostain.errors import ConfigError, InputError
from histostain.io.annotations import Nucleus, write_annotations, write_centroids_txt, write_csv
from histostain.metrics.detection import DetectionCounts, ImagePoints, match_points, score_detection
from histostain.metrics.evaluate_celldet import evaluate_celldet

# --------------------------------------------------------------------------------------------- helpers


def _img(xy, labels=None, scores=None) -> ImagePoints:
    return ImagePoints(np.asarray(xy, dtype=float).reshape(-1, 2), labels, scores)


def _score(images, radius=12.0, **options):
    """score_detection over (true, pred) pairs: the array-level entry point."""
    return score_detection([t for t, _ in images], [p for _, p in images], radius=radius, **options)


def _counts(result) -> tuple[int, int, int]:
    return result.summary["tp"], result.summary["fp"], result.summary["fn"]


def _write_txt(path: Path, points, classes=None) -> Path:
    nuclei = [Nucleus(id=i + 1, centroid=p, type=None if classes is None else classes[i]) for i, p in enumerate(points)]
    path.parent.mkdir(parents=True, exist_ok=True)
    write_centroids_txt(path, nuclei)
    return path


def _write(path: Path, points, classes=None, scores=None) -> Path:
    nuclei = [
        Nucleus(
            id=i + 1,
            centroid=p,
            type=None if classes is None else classes[i],
            score=None if scores is None else scores[i],
        )
        for i, p in enumerate(points)
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    write_annotations(path, nuclei)
    return path


# --------------------------------------------------------------------------------------------- matching


def test_radius_boundary_exactly_12_is_kept_and_12_01_is_dropped() -> None:
    true = [(0, 0), (100, 0), (200, 0)]
    pred = [(5, 0), (112, 0), (212.01, 0)]  # distances 5, exactly 12, 12.01
    pairs, unpaired_true, unpaired_pred = match_points(true, pred, 12.0)
    assert pairs.tolist() == [[0, 0], [1, 1]]
    assert unpaired_true.tolist() == [2] and unpaired_pred.tolist() == [2]
    counts = DetectionCounts(tp=2, fp=1, fn=1)
    assert counts.precision == pytest.approx(2 / 3)
    assert counts.recall == pytest.approx(2 / 3)
    assert counts.f1 == pytest.approx(2 / 3)


def test_hungarian_then_threshold_differs_from_threshold_then_match() -> None:
    # T0=(0,0), T1=(13,0); P0=(12,0), P1=(13,12).
    # Radius-first matching would take T0-P0 (12) and T1-P1 (12): 2 pairs, total 24.
    # The full assignment minimises the total: T0-P1 (sqrt(13^2+12^2) = 17.69) + T1-P0 (1) = 18.69 < 24,
    # and then T0-P1 is dropped (> 12): only 1 pair survives. This is the reference's behaviour.
    true = [(0, 0), (13, 0)]
    pred = [(12, 0), (13, 12)]
    assert math.hypot(13, 12) + 1 < 12 + 12
    pairs, unpaired_true, unpaired_pred = match_points(true, pred, 12.0)
    assert pairs.tolist() == [[1, 0]]
    assert unpaired_true.tolist() == [0] and unpaired_pred.tolist() == [1]


def test_empty_sides_give_no_pairs() -> None:
    pairs, ut, up = match_points(np.zeros((0, 2)), [(1, 1), (2, 2)], 12)
    assert pairs.shape == (0, 2) and ut.tolist() == [] and up.tolist() == [0, 1]
    pairs, ut, up = match_points([(1, 1)], np.zeros((0, 2)), 12)
    assert pairs.shape == (0, 2) and ut.tolist() == [0] and up.tolist() == []


def test_zero_over_zero_is_nan_not_a_crash() -> None:
    nothing = DetectionCounts(0, 0, 0)
    assert math.isnan(nothing.precision) and math.isnan(nothing.recall) and math.isnan(nothing.f1)
    no_pred = DetectionCounts(0, 0, 3)
    assert math.isnan(no_pred.precision) and no_pred.recall == 0 and no_pred.f1 == 0
    no_true = DetectionCounts(0, 2, 0)
    assert no_true.precision == 0 and math.isnan(no_true.recall) and no_true.f1 == 0


def test_counts_are_pooled_over_images_not_averaged() -> None:
    # image A: 1 GT, 1 pred matched (F1 1); image B: 2 GT, 1 pred far away (F1 0).
    images = [
        (_img([(10, 10)]), _img([(11, 10)])),
        (_img([(10, 10), (50, 50)]), _img([(200, 200)])),
    ]
    result = _score(images)
    assert [(r["tp"], r["fp"], r["fn"]) for r in result.per_image] == [(1, 0, 0), (0, 1, 2)]
    assert _counts(result) == (1, 1, 2)
    assert result.summary["f1"] == pytest.approx(2 / 5)  # 2*1 / (2*1 + 1 + 2); the per-image mean would be 0.5
    assert result.summary["precision"] == pytest.approx(1 / 2)
    assert result.summary["recall"] == pytest.approx(1 / 3)


# --------------------------------------------------------------------------------------------- empty images


def _empty_case() -> list[tuple[ImagePoints, ImagePoints]]:
    return [
        (_img([]), _img([(50, 50)])),  # no GT: the pred is an FP
        (_img([(60, 60)]), _img([])),  # no pred: the GT is an FN
        (_img([(10, 10)]), _img([(11, 10)])),  # one TP
    ]


def test_empty_images_without_dummy_points() -> None:
    result = _score(_empty_case())
    assert _counts(result) == (1, 1, 1)
    assert result.summary["f1"] == pytest.approx(0.5)
    assert result.meta["empty_images"] == {"true": 1, "pred": 1, "dummy_points": 0}


def test_empty_images_with_seed_dummy_points() -> None:
    # Seed: a dummy (0, 0) on each empty side. Image 1: dummy GT vs pred (50, 50), 70.7 px apart: +1 FN, +1 FP.
    # Image 2: dummy pred vs GT (60, 60): +1 FP, +1 FN. Image 3: 1 TP. Total TP 1, FP 2, FN 2.
    result = _score(_empty_case(), compat="seed")
    assert _counts(result) == (1, 2, 2)
    assert result.summary["precision"] == pytest.approx(1 / 3) and result.summary["recall"] == pytest.approx(1 / 3)
    assert result.meta["empty_images"]["dummy_points"] == 2
    assert any("2 dummy point(s)" in w for w in result.warnings)


def test_seed_dummy_quirks_both_empty_and_near_origin() -> None:
    both_empty = [(_img([]), _img([]))]
    assert math.isnan(_score(both_empty).summary["f1"])
    assert _counts(_score(both_empty, compat="seed")) == (1, 0, 0)  # the two dummies match each other: a free TP
    near_origin = [(_img([]), _img([(5, 0)]))]
    assert _counts(_score(near_origin)) == (0, 1, 0)
    assert _counts(_score(near_origin, compat="seed")) == (1, 0, 0)  # the FP turns into a TP against the dummy GT


# --------------------------------------------------------------------------------------------- per class


def _class_case():
    # GT at x = 0, 100, 200, 300, 400 with classes 1, 1, 1, 2, 2; preds at x = 1, 101, 201, 301 with classes
    # 1, 1, 2, 2 and one at x = 500 with class 1. Pairs (t, p): (1,1) (1,1) (1,2) (2,2); unpaired true: class 2
    # (x = 400); unpaired pred: class 1 (x = 500; 100 px from GT 400, so dropped after the assignment).
    true = [(0, 0), (100, 0), (200, 0), (300, 0), (400, 0)], [1, 1, 1, 2, 2]
    pred = [(1, 0), (101, 0), (201, 0), (301, 0), (500, 0)], [1, 1, 2, 2, 1]
    return true, pred


def test_per_class_conic_weighting_by_hand() -> None:
    (txy, tl), (pxy, pl) = _class_case()
    rows = {r["class"]: r for r in _score([(_img(txy, tl), _img(pxy, pl))]).tables["per_class"]}
    # class 1: pairs involving 1: (1,1) (1,1) (1,2): tp 2, fp_dt 0, fn_dt 1; fp_d 1, fn_d 0.
    # F1 = 2*2 / (2*2 + 2*0 + 2*1 + 1 + 0) = 4/7; P = 2 / (2 + 2*0 + 1) = 2/3; R = 2 / (2 + 2*1 + 0) = 1/2.
    c1 = rows[1]
    assert (c1["tp"], c1["fp_dt"], c1["fn_dt"], c1["fp_d"], c1["fn_d"]) == (2, 0, 1, 1, 0)
    assert c1["f1"] == pytest.approx(4 / 7)
    assert c1["precision"] == pytest.approx(2 / 3) and c1["recall"] == pytest.approx(1 / 2)
    # class 2: pairs involving 2: (1,2) (2,2): tp 1, fp_dt 1, fn_dt 0; fp_d 0, fn_d 1.
    # F1 = 2 / (2 + 2*1 + 0 + 0 + 1) = 2/5; P = 1 / (1 + 2) = 1/3; R = 1 / (1 + 0 + 1) = 1/2.
    c2 = rows[2]
    assert (c2["tp"], c2["fp_dt"], c2["fn_dt"], c2["fp_d"], c2["fn_d"]) == (1, 1, 0, 0, 1)
    assert c2["f1"] == pytest.approx(2 / 5)
    assert c2["precision"] == pytest.approx(1 / 3) and c2["recall"] == pytest.approx(1 / 2)


def test_service_per_class_table_and_type_accuracy(tmp_path: Path) -> None:
    (txy, tl), (pxy, pl) = _class_case()
    _write_txt(tmp_path / "gt" / "a.txt", txy, tl)
    _write(tmp_path / "pred" / "a.json", pxy, pl)
    result = evaluate_celldet(tmp_path / "gt", tmp_path / "pred")
    assert (result.summary["tp"], result.summary["fp"], result.summary["fn"]) == (4, 1, 1)
    rows = {r["class"]: r for r in result.tables["per_class"]}
    assert set(rows) == {1, 2}
    assert rows[1]["f1"] == pytest.approx(4 / 7) and rows[2]["f1"] == pytest.approx(2 / 5)
    assert rows[1]["n_true"] == 3 and rows[2]["n_pred"] == 2
    assert result.summary["type_accuracy"] == pytest.approx(3 / 4)  # 3 of 4 pairs agree on the class
    assert result.meta["class_weights"] == [2, 2, 1, 1]


def test_class_map_endonuke_onto_pannuke(tmp_path: Path) -> None:
    # GT EndoNuke codes 0 stroma, 1 epithelium; predictions in PanNuke codes 3 Connective, 5 Epithelial.
    _write_txt(tmp_path / "gt" / "t.txt", [(10, 10), (50, 50), (90, 90)], [0, 1, 0])
    _write(tmp_path / "pred" / "t.json", [(11, 10), (50, 51), (90, 90)], [3, 5, 3])
    unmapped = evaluate_celldet(tmp_path / "gt", tmp_path / "pred")
    assert all(r["f1"] == 0 for r in unmapped.tables["per_class"])  # codes never agree without a map
    mapped = evaluate_celldet(tmp_path / "gt", tmp_path / "pred", class_map={0: 3, 1: 5})
    rows = {r["class"]: r for r in mapped.tables["per_class"]}
    assert set(rows) == {3, 5} and rows[3]["f1"] == 1.0 and rows[5]["f1"] == 1.0
    assert mapped.meta["class_map"] == {0: 3, 1: 5}
    # mapping the prediction side instead gives the same result
    back = evaluate_celldet(tmp_path / "gt", tmp_path / "pred", pred_class_map={3: 0, 5: 1})
    assert {r["class"]: r["f1"] for r in back.tables["per_class"]} == {0: 1.0, 1: 1.0}


def test_class_map_with_an_unmapped_code_warns(tmp_path: Path) -> None:
    _write_txt(tmp_path / "gt" / "t.txt", [(10, 10), (50, 50)], [0, 2])
    _write(tmp_path / "pred" / "t.json", [(10, 10), (50, 50)], [3, 2])
    result = evaluate_celldet(tmp_path / "gt", tmp_path / "pred", class_map={0: 3})
    assert any("[2]" in w and "kept unchanged" in w for w in result.warnings)
    assert {r["class"]: r["f1"] for r in result.tables["per_class"]} == {2: 1.0, 3: 1.0}


def test_no_per_class_table_when_predictions_are_untyped(tmp_path: Path) -> None:
    _write_txt(tmp_path / "gt" / "t.txt", [(10, 10)], [1])
    _write(tmp_path / "pred" / "t.json", [(10, 10)])  # hover_net without a type branch: type null
    result = evaluate_celldet(tmp_path / "gt", tmp_path / "pred")
    assert "per_class" not in result.tables and result.summary["f1"] == 1.0


def test_seed_compat_scores_classes_1_to_k_only(tmp_path: Path) -> None:
    _write_txt(tmp_path / "gt" / "t.txt", [(10, 10), (50, 50)], [0, 2])
    _write(tmp_path / "pred" / "t.json", [(10, 10), (50, 50)], [0, 2])
    ours = evaluate_celldet(tmp_path / "gt", tmp_path / "pred")
    seed = evaluate_celldet(tmp_path / "gt", tmp_path / "pred", compat="seed")
    assert [r["class"] for r in ours.tables["per_class"]] == [0, 2]
    assert [r["class"] for r in seed.tables["per_class"]] == [1, 2]
    assert math.isnan(seed.tables["per_class"][0]["f1"])  # class 1 absent on both sides: 0/0


# --------------------------------------------------------------------------------------------- thresholds


def test_score_thresholds(tmp_path: Path) -> None:
    _write_txt(tmp_path / "gt" / "s.txt", [(10, 10), (50, 50), (90, 90)])
    # scores 0.9 (matches), 0.3 (matches), 0.8 (far: FP)
    _write(tmp_path / "pred" / "s.csv", [(10, 10), (50, 50), (200, 200)], scores=[0.9, 0.3, 0.8])
    result = evaluate_celldet(tmp_path / "gt", tmp_path / "pred", thresholds=[0.0, 0.5, 0.95])
    assert (result.summary["tp"], result.summary["fp"], result.summary["fn"]) == (2, 1, 1)  # all predictions
    rows = {r["threshold"]: r for r in result.tables["per_threshold"]}
    assert (rows[0.0]["tp"], rows[0.0]["fp"], rows[0.0]["fn"]) == (2, 1, 1)
    assert (rows[0.5]["tp"], rows[0.5]["fp"], rows[0.5]["fn"]) == (1, 1, 2)  # 0.3 dropped
    assert rows[0.5]["f1"] == pytest.approx(2 / 5)
    assert (rows[0.95]["tp"], rows[0.95]["fp"], rows[0.95]["fn"]) == (0, 0, 3)
    assert math.isnan(rows[0.95]["precision"]) and rows[0.95]["recall"] == 0


def test_threshold_at_exact_score_keeps_the_prediction() -> None:
    images = [(_img([(0, 0)]), _img([(0, 0)], scores=[0.5]))]
    kept, dropped = _score(images, thresholds=[0.5, 0.50001]).tables["per_threshold"]
    assert kept["tp"] == 1 and dropped["tp"] == 0


# --------------------------------------------------------------------------------------------- radius options


def test_radius_um_with_mpp(tmp_path: Path) -> None:
    _write_txt(tmp_path / "gt" / "r.txt", [(0, 0)])
    _write_txt(tmp_path / "pred" / "r.txt", [(0, 11.9)])
    result = evaluate_celldet(tmp_path / "gt", tmp_path / "pred", radius_um=3.0, mpp=0.25)
    assert result.meta["radius_px"] == pytest.approx(12.0) and result.meta["radius_um"] == 3.0
    assert result.summary["tp"] == 1
    tight = evaluate_celldet(tmp_path / "gt", tmp_path / "pred", radius_um=2.0, mpp=0.25)  # 8 px
    assert tight.summary["tp"] == 0
    with pytest.raises(ConfigError, match="go together"):
        evaluate_celldet(tmp_path / "gt", tmp_path / "pred", radius_um=3.0)
    with pytest.raises(ConfigError, match="go together"):
        evaluate_celldet(tmp_path / "gt", tmp_path / "pred", mpp=0.25)
    with pytest.raises(ConfigError):
        evaluate_celldet(tmp_path / "gt", tmp_path / "pred", radius=-1)
    with pytest.raises(ConfigError, match="compat"):
        evaluate_celldet(tmp_path / "gt", tmp_path / "pred", compat="celldetr")


# --------------------------------------------------------------------------------------------- inputs


def test_pairing_by_stem_across_formats_and_unmatched_stems(tmp_path: Path) -> None:
    gt, pred = tmp_path / "gt", tmp_path / "hover"
    _write_txt(gt / "a.txt", [(10, 10), (30, 30)])
    _write_txt(gt / "b.txt", [(10, 10)])
    _write_txt(gt / "c.txt", [(5, 5)])
    _write_txt(gt / "only_gt.txt", [(1, 1)])
    _write(pred / "json" / "a.json", [(10, 11), (30, 30)])  # hover_net JSON in the json/ subfolder
    _write(pred / "json" / "b.geojson", [(10, 10)])
    write_csv(pred / "json" / "c.csv", [Nucleus(id=1, centroid=(6, 5))])
    _write(pred / "json" / "only_pred.json", [(1, 1)])
    (pred / "overlay").mkdir()
    result = evaluate_celldet(gt, pred)
    assert [r["stem"] for r in result.per_image] == ["a", "b", "c"]
    assert (result.summary["tp"], result.summary["fp"], result.summary["fn"]) == (4, 0, 0)
    assert result.meta["unmatched_true"] == ["only_gt"] and result.meta["unmatched_pred"] == ["only_pred"]
    assert result.meta["pred_kind"] == "hovernet-json-subfolder"
    assert any("only_gt" in w for w in result.warnings) and any("only_pred" in w for w in result.warnings)
    row = result.per_image[0]
    assert {k: row[k] for k in ("n_true", "n_pred", "tp", "fp", "fn")} == {
        "n_true": 2,
        "n_pred": 2,
        "tp": 2,
        "fp": 0,
        "fn": 0,
    }
    json.dumps(result.to_json())  # serialisable (NaN -> null)


def test_a_segment_output_folder_reads_one_format_warns_once_and_skips_its_records(tmp_path: Path) -> None:
    gt, pred = tmp_path / "gt", tmp_path / "seg"
    for stem in ("a", "b", "c"):
        _write_txt(gt / f"{stem}.txt", [(10, 10), (30, 30)])
        _write(pred / f"{stem}.json", [(10, 10), (30, 30)])  # what segment writes: the same nuclei three times
        _write(pred / f"{stem}.geojson", [(10, 10)])
        _write_txt(pred / f"{stem}.txt", [(50, 50)])
    (pred / "segment.json").write_text("{}")  # the run record and the summary are not annotations
    (pred / "summary.csv").write_text("image,nuclei\na,2\n")
    result = evaluate_celldet(gt, pred)
    assert (result.summary["tp"], result.summary["fp"], result.summary["fn"]) == (6, 0, 0)  # the .json won
    assert [w for w in result.warnings if "formats" in w] == [
        f"{pred}: 3 image(s) have their annotations in 3 formats (e.g. a.json, a.geojson, a.txt); "
        "reading the .json file of each"
    ]
    assert not any("without ground truth" in w for w in result.warnings)


def test_no_matching_stem_is_an_input_error(tmp_path: Path) -> None:
    _write_txt(tmp_path / "gt" / "a.txt", [(1, 1)])
    _write_txt(tmp_path / "pred" / "b.txt", [(1, 1)])
    with pytest.raises(InputError, match="matches"):
        evaluate_celldet(tmp_path / "gt", tmp_path / "pred")
    with pytest.raises(InputError, match="not found"):
        evaluate_celldet(tmp_path / "missing", tmp_path / "pred")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no annotation files"):
        evaluate_celldet(tmp_path / "gt", tmp_path / "empty")


def test_malformed_file_names_the_file(tmp_path: Path) -> None:
    _write_txt(tmp_path / "gt" / "a.txt", [(1, 1)])
    bad = tmp_path / "pred" / "a.txt"
    bad.parent.mkdir()
    bad.write_text("1 2 3 4 5\n")
    with pytest.raises(InputError, match="a.txt"):
        evaluate_celldet(tmp_path / "gt", tmp_path / "pred")


def test_prepared_endonuke_ground_truth(tmp_path: Path) -> None:
    from histostain.datasets.endonuke import prepare_endonuke
    from histostain.io.annotations import read_centroids_txt
    from histostain.synth import write_dataset

    write_dataset("endonuke", tmp_path / "raw", 3, seed=5)
    prepared = tmp_path / "prepared"
    prepare_endonuke(tmp_path / "raw", prepared, mpp=2.0, fractions="0.4,0.3,0.3")  # 50 x 50 px tiles
    manifest = json.loads((prepared / "manifest.json").read_text())
    labels = {s["id"]: prepared / s["split"] / "labels" / f"{s['id']}.txt" for s in manifest["samples"]}
    # predictions: the ground truth itself as hover_net-style JSON (a shifted copy is not enough: at 2 um/px
    # nuclei lie < 1 px apart, and a translation ties with other assignments of the same total distance)
    n_points = 0
    for stem, label in labels.items():
        nuclei = read_centroids_txt(label)
        n_points += len(nuclei)
        write_annotations(tmp_path / "pred" / f"{stem}.json", nuclei)
    result = evaluate_celldet(prepared, tmp_path / "pred", radius=2.0, split="all")  # every split, pooled
    assert result.meta["true_kind"] == "prepared-endonuke" and result.meta["n_images"] == len(labels)
    assert result.meta["split"] == "all" and result.meta["splits"] == ["train", "val", "test"]
    assert result.scope == "splits train+val+test pooled"
    assert result.summary["tp"] == n_points and result.summary["fp"] == 0 and result.summary["fn"] == 0
    assert result.meta["mpp"] == 2.0 and result.meta["radius_um"] == pytest.approx(4.0)  # 2 px at 2 um/px
    assert {r.get("name") for r in result.tables["per_class"]} <= {"stroma", "epithelium", "other"}
    for split in ("train", "test"):
        one = evaluate_celldet(prepared, tmp_path / "pred", radius=2.0, split=split)
        assert one.meta["n_images"] == sum(s["split"] == split for s in manifest["samples"])
        assert one.meta["split"] == split and one.scope == f"split {split}"
        assert one.meta["unmatched_pred"]  # the other splits' predictions have no ground truth here
    # --radius-um alone: the prepared ground truth's manifest gives the um/px (4 um at 2 um/px = 2 px)
    in_um = evaluate_celldet(prepared, tmp_path / "pred", radius_um=4.0, split="all")
    assert in_um.meta["radius_px"] == pytest.approx(2.0) and in_um.meta["mpp_source"] == "manifest"
    assert in_um.summary == result.summary
    default = evaluate_celldet(prepared, tmp_path / "pred", radius=2.0)  # no --split: the test split, not all
    assert default.meta["split"] == "test" and default.meta["split_reason"] == "default: the test split"
    assert default.meta["n_images"] == sum(s["split"] == "test" for s in manifest["samples"])
    with pytest.raises(ConfigError, match="split"):
        evaluate_celldet(prepared, tmp_path / "pred", split="nope")
    with pytest.raises(ConfigError, match="split"):
        evaluate_celldet(tmp_path / "pred", tmp_path / "pred", split="test")  # not a prepared folder


# --------------------------------------------------------------------------------------------- properties


@st.composite
def _point_sets(draw):
    """Random continuous points (ties have probability 0, so the optimal assignment is unique)."""
    seed = draw(st.integers(0, 2**32 - 1))
    n_true = draw(st.integers(0, 12))
    n_pred = draw(st.integers(0, 12))
    extent = draw(st.sampled_from([10.0, 40.0, 200.0]))
    radius = draw(st.floats(0.0, 30.0))
    rng = np.random.default_rng(seed)
    return rng.uniform(0, extent, (n_true, 2)), rng.uniform(0, extent, (n_pred, 2)), radius


@settings(max_examples=150, deadline=None)
@given(_point_sets())
def test_swapping_true_and_pred_swaps_precision_and_recall(case) -> None:
    true, pred, radius = case
    forward = _score([(_img(true), _img(pred))], radius).summary
    backward = _score([(_img(pred), _img(true))], radius).summary
    assert (forward["tp"], forward["fp"], forward["fn"]) == (backward["tp"], backward["fn"], backward["fp"])
    assert np.isclose(forward["precision"], backward["recall"], equal_nan=True)
    assert np.isclose(forward["recall"], backward["precision"], equal_nan=True)
    assert np.isclose(forward["f1"], backward["f1"], equal_nan=True)


_coords = st.lists(st.tuples(st.integers(0, 40), st.integers(0, 40)), max_size=10)


@settings(max_examples=150, deadline=None)
@given(_coords, _coords, st.sampled_from([0.0, 1.0, 5.0, 12.0, 100.0]))
def test_pairs_are_one_to_one_within_radius_and_bounded(true, pred, radius) -> None:
    # integer coordinates: many ties, the invariants must hold whichever optimum scipy picks
    true_xy = np.array(true, dtype=float).reshape(-1, 2)
    pred_xy = np.array(pred, dtype=float).reshape(-1, 2)
    pairs, unpaired_true, unpaired_pred = match_points(true_xy, pred_xy, radius)
    assert len(set(pairs[:, 0].tolist())) == len(pairs) == len(set(pairs[:, 1].tolist()))
    if len(pairs):
        distances = np.hypot(*(true_xy[pairs[:, 0]] - pred_xy[pairs[:, 1]]).T)
        assert np.all(distances <= radius)
    assert sorted(pairs[:, 0].tolist() + unpaired_true.tolist()) == list(range(len(true_xy)))
    assert sorted(pairs[:, 1].tolist() + unpaired_pred.tolist()) == list(range(len(pred_xy)))
    counts = DetectionCounts(len(pairs), len(unpaired_pred), len(unpaired_true))
    assert counts.tp <= min(len(true_xy), len(pred_xy))
    for value in (counts.precision, counts.recall, counts.f1):
        assert math.isnan(value) or 0.0 <= value <= 1.0
    # identical point sets match completely whenever they are not empty
    same, _, _ = match_points(true_xy, true_xy, radius)
    assert len(same) == len(true_xy)


# --------------------------------------------------------------------------------------------- array level


def _random_images(seed: int, n_images: int = 12) -> list[tuple[ImagePoints, ImagePoints]]:
    """Typed, scored point sets with empty images on either side; coordinates on a 0.25 px grid (exact in txt)."""
    rng = np.random.default_rng(seed)
    images = []
    for index in range(n_images):
        n_true, n_pred = (0, 5) if index == 0 else (4, 0) if index == 1 else rng.integers(0, 20, 2)
        true_xy = np.round(rng.uniform(0, 120, (n_true, 2)) * 4) / 4
        near = true_xy[: n_pred // 2] + np.round(rng.normal(0, 5, (min(n_pred // 2, n_true), 2)) * 4) / 4
        far = np.round(rng.uniform(0, 120, (n_pred - len(near), 2)) * 4) / 4
        pred_xy = np.concatenate([near, far]).reshape(-1, 2)
        images.append(
            (
                _img(true_xy, rng.integers(0, 3, n_true)),
                _img(pred_xy, rng.integers(0, 3, len(pred_xy)), np.round(rng.uniform(0, 1, len(pred_xy)), 3)),
            )
        )
    return images


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"thresholds": [0.25, 0.5, 0.75], "class_map": {0: 3, 1: 5}, "pred_class_map": {0: 3, 1: 5}},
        {"compat": "seed", "thresholds": [0.5], "radius": 6.0},
    ],
)
def test_files_and_arrays_give_identical_results(tmp_path: Path, options: dict) -> None:
    """evaluate_celldet reads files and feeds the same scorer as score_detection: every number is the same."""
    images = _random_images(3)
    stems = [f"tile_{i:02d}" for i in range(len(images))]
    for stem, (true, pred) in zip(stems, images, strict=True):
        _write_txt(tmp_path / "gt" / f"{stem}.txt", true.xy.tolist(), true.labels.tolist())
        _write(tmp_path / "pred" / f"{stem}.csv", pred.xy.tolist(), pred.labels.tolist(), pred.scores.tolist())
    from_files = evaluate_celldet(tmp_path / "gt", tmp_path / "pred", **options)
    from_arrays = score_detection([t for t, _ in images], [p for _, p in images], names=stems, **options)
    assert from_files.summary["tp"] > 0 and from_files.tables["per_class"]  # a case with something to compare
    assert from_files.to_json()["summary"] == from_arrays.to_json()["summary"]
    assert from_files.to_json()["per_image"] == from_arrays.to_json()["per_image"]
    assert from_files.to_json()["tables"] == from_arrays.to_json()["tables"]
    for key in ("radius_px", "matching", "pooling", "compat", "empty_images", "classes", "class_weights"):
        assert from_files.meta[key] == from_arrays.meta[key], key
    assert from_arrays.provenance is None and from_files.provenance is not None


def test_scorer_accepts_plain_coordinate_arrays_and_keeps_only_counts() -> None:
    from histostain.metrics.detection import DetectionScorer

    scorer = DetectionScorer(radius=5.0)
    assert scorer.add("a", np.array([[0.0, 0.0], [10.0, 0.0]]), np.array([[1.0, 0.0]]))["tp"] == 1
    assert scorer.add("b", np.zeros((0, 2)), np.array([[3.0, 3.0]]))["fp"] == 1
    result = scorer.result()
    assert _counts(result) == (1, 1, 1) and result.summary["n_images"] == 2
    assert "per_class" not in result.tables  # plain coordinates carry no classes
    assert result.meta["empty_images"] == {"true": 1, "pred": 0, "dummy_points": 0}


def test_score_detection_argument_errors() -> None:
    with pytest.raises(ValueError, match="2 ground-truth images but 1"):
        score_detection([np.zeros((0, 2))] * 2, [np.zeros((0, 2))])
    with pytest.raises(ValueError, match="1 names for 2 images"):
        score_detection([np.zeros((0, 2))] * 2, [np.zeros((0, 2))] * 2, names=["a"])
    with pytest.raises(ConfigError, match="radius"):
        score_detection([], [], radius=-1.0)
    with pytest.raises(ConfigError, match="compat"):
        score_detection([], [], compat="celldetr")
    with pytest.raises(ConfigError, match="thresholds"):
        score_detection([], [], thresholds=[math.nan])


def test_library_callers_get_a_provenance_record_of_their_arguments(tmp_path: Path) -> None:
    _write_txt(tmp_path / "gt" / "a.txt", [(1, 1)])
    _write_txt(tmp_path / "pred" / "a.txt", [(1, 2)])
    record = evaluate_celldet(tmp_path / "gt", tmp_path / "pred", radius=3.0).provenance
    assert record is not None and record.command  # sys.argv of the calling process
    assert record.options["radius"] == 3.0 and record.options["true"] == str(tmp_path / "gt")
    assert record.options["compat"] == "histostain"
