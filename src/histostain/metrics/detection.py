"""Cell-detection scoring on arrays: centroid matching, pooled precision / recall / F1, CoNIC per-class scores.

The matching is the one HoVer-Net's ``pair_coordinates`` and the seed project's ``CellDetectionMetric`` (a copy
of celldetr's) use: a Euclidean cost matrix, :func:`scipy.optimize.linear_sum_assignment` on the *full* matrix
(minimum total distance), and only then the pairs farther than ``radius`` are dropped (a pair at exactly
``radius`` is kept). Counts are pooled over all images (micro average), as the reference does; per-image rows
are extra. Per-class scores use the CoNIC/HoVer-Net "F1 type" weighting ``w = [2, 2, 1, 1]``.

Conventions that differ from the reference (docs/commands/evaluate-celldet.md):

- An image without ground truth or without predictions gets **no** dummy point. The reference inserts a point
  at ``(0, 0)`` with label 0 on each empty side, which adds one FN/FP per empty image (and one TP when both
  sides are empty); ``compat="seed"`` reproduces that for comparison with the seed project's table.
- A ratio whose denominator is 0 is NaN (the reference raises ZeroDivisionError): precision without any
  prediction, recall without any ground truth, F1 only when both are empty.

:class:`DetectionScorer` takes images one at a time (``add``) and keeps only counts, so a pipeline can score
tiles as it makes them; :func:`score_detection` runs it over sequences. The ``evaluate celldet`` service
(:mod:`histostain.metrics.evaluate_celldet`) reads annotation files and feeds the same scorer.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import cdist

from histostain.errors import ConfigError
from histostain.metrics.defaults import COMPAT_MODES, DEFAULT_COMPAT, DEFAULT_RADIUS
from histostain.metrics.report import EvaluationResult, TableView
from histostain.provenance import Provenance

CONIC_WEIGHTS: tuple[float, float, float, float] = (2.0, 2.0, 1.0, 1.0)
MATCHING = "hungarian on the full euclidean cost matrix, then pairs with distance > radius dropped"
POOLING = "micro (counts summed over images)"

# How a terminal shows the per-class and per-threshold tables: twelve columns do not fit 80 characters, so the
# scores and the CoNIC error counts are two small tables, with the error terms explained under the second.
# The JSON and the per-image CSV keep every column.
CONIC_LEGEND = (
    "fp_dt: predicted as this class on a true nucleus of another class; fn_dt: a true nucleus of this class "
    "predicted as another class; fp_d: unmatched predictions of this class; fn_d: unmatched true nuclei of this "
    "class. F1 = 2 tp / (2 tp + 2 fp_dt + 2 fn_dt + fp_d + fn_d) (CoNIC)."
)
PER_CLASS_VIEWS = [
    TableView((("name", "class"), "n_true", "n_pred", "tp", "precision", "recall", "f1"), "per class"),
    TableView((("name", "class"), "tp", "fp_dt", "fn_dt", "fp_d", "fn_d"), "per class: errors", CONIC_LEGEND),
]
THRESHOLD_COLUMNS = ("threshold", "tp", "fp", "fn", "precision", "recall", "f1")
THRESHOLD_CLASS_NOTE = "per-class F1 at each threshold (f1_class_*): in the JSON (--json, --out)"

# --------------------------------------------------------------------------------------------- matching


def match_points(true_xy: np.ndarray, pred_xy: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pair true and predicted points one-to-one: Hungarian on the full distance matrix, then drop far pairs.

    Returns ``(pairs, unpaired_true, unpaired_pred)``: ``pairs`` is ``(K, 2)`` int64 ``[true_index, pred_index]``
    with every paired distance ``<= radius``; the other two are sorted index arrays. The assignment minimises
    the total distance over a maximal matching *before* the radius is applied, exactly like the reference, so
    it can pair fewer points than a radius-first matching would (docs explain when).
    """
    true_xy = _as_points(true_xy, "true_xy")
    pred_xy = _as_points(pred_xy, "pred_xy")
    n_true, n_pred = len(true_xy), len(pred_xy)
    if n_true == 0 or n_pred == 0:
        return np.zeros((0, 2), dtype=np.int64), np.arange(n_true), np.arange(n_pred)
    cost = cdist(true_xy, pred_xy)
    rows, cols = linear_sum_assignment(cost)
    keep = cost[rows, cols] <= radius
    pairs = np.stack([rows[keep], cols[keep]], axis=1).astype(np.int64)
    true_free = np.ones(n_true, dtype=bool)
    true_free[pairs[:, 0]] = False
    pred_free = np.ones(n_pred, dtype=bool)
    pred_free[pairs[:, 1]] = False
    return pairs, np.flatnonzero(true_free), np.flatnonzero(pred_free)


def _as_points(points: Any, name: str) -> np.ndarray:
    array = np.asarray(points, dtype=np.float64)
    if array.size == 0:
        return np.zeros((0, 2), dtype=np.float64)
    if array.ndim != 2 or array.shape[1] < 2:
        raise ValueError(f"{name} must be an (N, 2) array of (x, y), got shape {array.shape}")
    return array[:, :2]  # like the reference: only the first two columns are the centre


def ratio(numerator: float, denominator: float) -> float:
    """``numerator / denominator``, NaN when the denominator is 0 (the score is undefined, not 0 or 1)."""
    return float(numerator) / float(denominator) if denominator else math.nan


@dataclass(frozen=True)
class DetectionCounts:
    """TP/FP/FN of a detection, with precision TP/(TP+FP), recall TP/(TP+FN), F1 2TP/(2TP+FP+FN)."""

    tp: int = 0
    fp: int = 0
    fn: int = 0

    def __add__(self, other: DetectionCounts) -> DetectionCounts:
        return DetectionCounts(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn)

    @property
    def precision(self) -> float:
        return ratio(self.tp, self.tp + self.fp)

    @property
    def recall(self) -> float:
        return ratio(self.tp, self.tp + self.fn)

    @property
    def f1(self) -> float:
        return ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn)

    def row(self) -> dict[str, float | int]:
        return {
            "tp": self.tp,
            "fp": self.fp,
            "fn": self.fn,
            "precision": self.precision,
            "recall": self.recall,
            "f1": self.f1,
        }


# --------------------------------------------------------------------------------------------- classes


@dataclass
class ClassTally:
    """Class labels of matched and unmatched points, pooled over images as counts (memory: classes^2, not points).

    ``pairs[(t, p)]``: matched pairs with true class ``t`` and predicted class ``p``; ``unpaired_true[c]`` /
    ``unpaired_pred[c]``: unmatched points of class ``c``. Label -1 means "no class".
    """

    pairs: Counter[tuple[int, int]] = field(default_factory=Counter)
    unpaired_true: Counter[int] = field(default_factory=Counter)
    unpaired_pred: Counter[int] = field(default_factory=Counter)

    def add(self, paired_true: Any, paired_pred: Any, unpaired_true: Any, unpaired_pred: Any) -> None:
        """Count one image's labels: of the matched pairs (true, pred, aligned) and of the unmatched points."""
        self.pairs.update(zip(np.asarray(paired_true).tolist(), np.asarray(paired_pred).tolist(), strict=True))
        self.unpaired_true.update(np.asarray(unpaired_true).tolist())
        self.unpaired_pred.update(np.asarray(unpaired_pred).tolist())

    def type_accuracy(self) -> float:
        """Share of matched pairs whose classes agree (HoVer-Net's "type accuracy"); NaN without pairs."""
        agree = sum(n for (t, p), n in self.pairs.items() if t == p)
        return ratio(agree, sum(self.pairs.values()))


def class_scores(tally: ClassTally, cls: int, weights: Sequence[float] = CONIC_WEIGHTS) -> dict[str, float | int]:
    """CoNIC/HoVer-Net per-class scores of class ``cls`` from the pooled labels of paired and unpaired points.

    Only pairs where at least one label is ``cls`` count (so ``tn`` is always 0, as in the reference):
    ``tp`` both ``cls``; ``fp_dt`` pred ``cls`` on a true other class; ``fn_dt`` true ``cls`` predicted as
    another class; ``fp_d``/``fn_d`` unpaired preds/trues of ``cls``. With ``w = [w0, w1, w2, w3]``:
    F1 = 2(tp+tn) / (2(tp+tn) + w0 fp_dt + w1 fn_dt + w2 fp_d + w3 fn_d), precision and recall alike.
    """
    w0, w1, w2, w3 = (float(v) for v in weights)
    tp = tally.pairs[(cls, cls)]
    fp_dt = sum(n for (t, p), n in tally.pairs.items() if p == cls and t != cls)
    fn_dt = sum(n for (t, p), n in tally.pairs.items() if t == cls and p != cls)
    fp_d = tally.unpaired_pred[cls]
    fn_d = tally.unpaired_true[cls]
    good = tp  # + tn, which is 0 among the pairs involving cls
    return {
        "class": int(cls),
        "tp": tp,
        "fp_dt": fp_dt,
        "fn_dt": fn_dt,
        "fp_d": fp_d,
        "fn_d": fn_d,
        "precision": ratio(good, good + w0 * fp_dt + w2 * fp_d),
        "recall": ratio(good, good + w1 * fn_dt + w3 * fn_d),
        "f1": ratio(2 * good, 2 * good + w0 * fp_dt + w1 * fn_dt + w2 * fp_d + w3 * fn_d),
    }


def map_labels(labels: np.ndarray, mapping: Mapping[int, int] | None) -> np.ndarray:
    """Apply a class map to the labelled points; codes absent from the map, and -1 (no class), are kept."""
    if not mapping or len(labels) == 0:
        return labels
    out = labels.copy()
    for src, dst in mapping.items():
        if src >= 0:
            out[labels == src] = dst
    return out


# --------------------------------------------------------------------------------------------- points


@dataclass
class ImagePoints:
    """The points of one image on one side: ``xy`` (N, 2), class labels (N,) or None, scores (N,) or None."""

    xy: np.ndarray
    labels: np.ndarray | None = None
    scores: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.xy = _as_points(self.xy, "xy")
        n = len(self.xy)
        if self.labels is not None:
            self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
            if len(self.labels) != n:
                raise ValueError(f"{len(self.labels)} labels for {n} points")
        if self.scores is not None:
            self.scores = np.asarray(self.scores, dtype=np.float64).reshape(-1)
            if len(self.scores) != n:
                raise ValueError(f"{len(self.scores)} scores for {n} points")

    def __len__(self) -> int:
        return len(self.xy)

    def label_array(self) -> np.ndarray:
        """Labels, with -1 (no class) where the side carries none."""
        return self.labels if self.labels is not None else np.full(len(self.xy), -1, dtype=np.int64)

    def kept(self, threshold: float | None) -> ImagePoints:
        """The points whose score is ``>= threshold`` (points without a score count as score 1, as the seed)."""
        if threshold is None or len(self) == 0:
            return self
        scores = self.scores if self.scores is not None else np.ones(len(self))
        mask = scores >= threshold
        return ImagePoints(
            self.xy[mask],
            None if self.labels is None else self.labels[mask],
            None if self.scores is None else self.scores[mask],
        )


Points = ImagePoints | np.ndarray | Sequence[Sequence[float]]
_DUMMY = ImagePoints(np.zeros((1, 2)), np.zeros(1, dtype=np.int64), np.ones(1))


def check_compat(compat: str) -> str:
    """``compat`` if it is a known mode; a typo must not silently score without the seed's dummy points."""
    if compat not in COMPAT_MODES:
        raise ConfigError(f"unknown compat mode {compat!r}", hint=f"use one of {', '.join(COMPAT_MODES)}")
    return compat


def _check_class_map(mapping: Mapping[int, int] | None, name: str) -> dict[int, int] | None:
    """The map with int codes; anything but integer codes onto codes >= 0 is a ConfigError (-1 means no class)."""
    if mapping is None:
        return None
    checked: dict[int, int] = {}
    for src, dst in mapping.items():
        if isinstance(src, bool) or isinstance(dst, bool) or int(src) != src or int(dst) != dst or dst < 0:
            raise ConfigError(f"{name}: {src!r}:{dst!r} is not a mapping of class codes (integers >= 0)")
        checked[int(src)] = int(dst)
    return checked


# --------------------------------------------------------------------------------------------- scoring


@dataclass
class _Pooled:
    """What one threshold (or all predictions) accumulates: counts and class labels."""

    counts: DetectionCounts = field(default_factory=DetectionCounts)
    tally: ClassTally = field(default_factory=ClassTally)
    dummies: int = 0

    def add(self, true: ImagePoints, pred: ImagePoints, radius: float, seed: bool) -> DetectionCounts:
        """Match one image and pool its counts and labels; returns the image's counts."""
        if seed:  # the reference's dummy point (0, 0), label 0, in each empty side
            if len(true) == 0:
                true, self.dummies = _DUMMY, self.dummies + 1
            if len(pred) == 0:
                pred, self.dummies = _DUMMY, self.dummies + 1
        pairs, unpaired_true, unpaired_pred = match_points(true.xy, pred.xy, radius)
        counts = DetectionCounts(len(pairs), len(unpaired_pred), len(unpaired_true))
        self.counts += counts
        true_labels, pred_labels = true.label_array(), pred.label_array()
        self.tally.add(
            true_labels[pairs[:, 0]], pred_labels[pairs[:, 1]], true_labels[unpaired_true], pred_labels[unpaired_pred]
        )
        return counts


class DetectionScorer:
    """Cell detection over images fed one at a time: matching within ``radius``, pooled P/R/F1, per-class scores.

    ``add(name, true, pred)`` matches one image (points as :class:`ImagePoints`, or ``(N, 2)`` arrays of
    ``(x, y)`` without classes) and keeps counts only; ``result()`` returns the pooled summary, one row per image
    and, when both sides carry a class for every point, the CoNIC per-class table, ``type_accuracy`` and
    ``f1_type_mean``. ``thresholds`` add a table for predictions with score ``>= t``; ``class_map`` /
    ``pred_class_map`` map class codes first; ``class_names`` label the per-class rows; ``compat="seed"``
    inserts the seed project's dummy points into empty images.
    """

    def __init__(
        self,
        radius: float = DEFAULT_RADIUS,
        *,
        thresholds: Iterable[float] = (),
        compat: str = DEFAULT_COMPAT,
        class_map: Mapping[int, int] | None = None,
        pred_class_map: Mapping[int, int] | None = None,
        class_names: Mapping[int, str] | None = None,
    ) -> None:
        self.compat = check_compat(compat)
        if not (math.isfinite(radius) and radius >= 0):
            raise ConfigError(f"the matching radius must be a non-negative number of pixels, got {radius}")
        self.radius = float(radius)
        self.class_map = _check_class_map(class_map, "class map")
        self.pred_class_map = _check_class_map(pred_class_map, "prediction class map")
        self.thresholds = [float(t) for t in thresholds]
        if any(not math.isfinite(t) for t in self.thresholds):
            raise ConfigError(f"score thresholds must be finite numbers, got {self.thresholds}")
        self.class_names = dict(class_names) if class_names else None
        self.rows: list[dict[str, Any]] = []
        self._all = _Pooled()
        self._at = [_Pooled() for _ in self.thresholds]
        self._labels_true: Counter[int] = Counter()  # class code -> points (after the class map)
        self._labels_pred: Counter[int] = Counter()
        self._has_points = [False, False]  # per side: any point at all
        self._unlabelled = [False, False]  # per side: a point without a class
        self._unmapped: tuple[set[int], set[int]] = (set(), set())  # codes outside the class map, per side
        self._empty = [0, 0]
        self._scored_pred = False

    def _prepare(self, points: Points, side: int, mapping: dict[int, int] | None) -> ImagePoints:
        """Note what the side carries (points, classes, codes outside the map) and apply the class map."""
        if not isinstance(points, ImagePoints):
            points = ImagePoints(np.asarray(points, dtype=np.float64))
        labels = points.label_array()
        if len(points):
            self._has_points[side] = True
            self._unlabelled[side] |= bool(np.any(labels < 0))
        else:
            self._empty[side] += 1
        if mapping:
            self._unmapped[side].update(int(c) for c in np.unique(labels) if c >= 0 and int(c) not in mapping)
            labels = map_labels(labels, mapping)
            points = ImagePoints(points.xy, labels, points.scores)
        (self._labels_true if side == 0 else self._labels_pred).update(labels.tolist())
        return points

    def add(self, name: str, true: Points, pred: Points) -> dict[str, Any]:
        """Match one image; returns its row (``stem``, ``n_true``, ``n_pred``, TP/FP/FN, precision, recall, F1)."""
        true_points = self._prepare(true, 0, self.class_map)
        pred_points = self._prepare(pred, 1, self.pred_class_map)
        self._scored_pred |= isinstance(pred, ImagePoints) and pred.scores is not None
        seed = self.compat == "seed"
        counts = self._all.add(true_points, pred_points, self.radius, seed)
        for threshold, pooled in zip(self.thresholds, self._at, strict=True):
            pooled.add(true_points, pred_points.kept(threshold), self.radius, seed)
        row = {"stem": name, "n_true": len(true_points), "n_pred": len(pred_points), **counts.row()}
        self.rows.append(row)
        return row

    def _carries_classes(self, side: int) -> bool:
        """A side carries classes when it has points and every one of them has a class."""
        return self._has_points[side] and not self._unlabelled[side]

    def result(self, provenance: Provenance | None = None) -> EvaluationResult:
        """Pooled scores of every image added so far."""
        total = self._all.counts
        with_classes = self._carries_classes(0) and self._carries_classes(1)
        summary: dict[str, float | int | None] = {
            "precision": total.precision,
            "recall": total.recall,
            "f1": total.f1,
            "tp": total.tp,
            "fp": total.fp,
            "fn": total.fn,
            "n_images": len(self.rows),
            "n_true": sum(r["n_true"] for r in self.rows),
            "n_pred": sum(r["n_pred"] for r in self.rows),
        }
        warnings: list[str] = []
        mapped = bool(self.class_map or self.pred_class_map)
        unmapped = set().union(*(codes for side, codes in enumerate(self._unmapped) if self._carries_classes(side)))
        if mapped and not with_classes:
            warnings.append("a class map was given but not both sides carry classes; per-class scores are skipped")
        elif mapped and unmapped:
            warnings.append(f"class code(s) {sorted(unmapped)} are not in the class map and are kept unchanged")
        tables: dict[str, list[dict[str, Any]]] = {}
        classes: list[int] = []
        if with_classes:
            present = sorted(c for c in (*self._labels_true, *self._labels_pred) if c >= 0)
            # The seed (celldetr) scores classes 1..K only: 0 is its "no class" label, also used by the dummies.
            classes = list(range(1, max(present, default=0) + 1)) if self.compat == "seed" else sorted(set(present))
            rows = [class_scores(self._all.tally, c) for c in classes]
            for row in rows:
                cls = int(row["class"])
                row["n_true"] = self._labels_true[cls]
                row["n_pred"] = self._labels_pred[cls]
                if self.class_names and cls in self.class_names:
                    row["name"] = self.class_names[cls]
            tables["per_class"] = rows
            summary["type_accuracy"] = self._all.tally.type_accuracy()
            summary["f1_type_mean"] = _nanmean([r["f1"] for r in rows])
        if self.thresholds:
            threshold_rows = []
            for threshold, pooled in zip(self.thresholds, self._at, strict=True):
                row = {"threshold": threshold, **pooled.counts.row()}
                if with_classes:
                    for c in classes:
                        row[f"f1_class_{c}"] = class_scores(pooled.tally, c)["f1"]
                threshold_rows.append(row)
            tables["per_threshold"] = threshold_rows
            if not self._scored_pred:
                warnings.append("the predictions carry no scores; every threshold keeps all of them (score 1)")
        if self.compat == "seed" and self._all.dummies:
            warnings.append(
                f"compat=seed: {self._all.dummies} dummy point(s) at (0, 0) were inserted into empty images, "
                "as the seed project's metric does; they change the counts"
            )
        meta: dict[str, Any] = {
            "radius_px": self.radius,
            "matching": MATCHING,
            "pooling": POOLING,
            "compat": self.compat,
            "empty_images": {"true": self._empty[0], "pred": self._empty[1], "dummy_points": self._all.dummies},
            "n_images": len(self.rows),
            "classes": classes,
            "class_weights": list(CONIC_WEIGHTS) if with_classes else None,
            "class_map": self.class_map,
            "pred_class_map": self.pred_class_map,
            "thresholds": list(self.thresholds),
        }
        return EvaluationResult(
            metric="celldet",
            summary=summary,
            per_image=[dict(row) for row in self.rows],
            tables=tables,
            meta=meta,
            warnings=warnings,
            provenance=provenance,
            views=self._views(tables, with_classes),
        )

    @staticmethod
    def _views(tables: Mapping[str, Any], with_classes: bool) -> dict[str, list[TableView]]:
        views: dict[str, list[TableView]] = {}
        if "per_class" in tables:
            views["per_class"] = list(PER_CLASS_VIEWS)
        if "per_threshold" in tables:
            note = THRESHOLD_CLASS_NOTE if with_classes else None
            views["per_threshold"] = [TableView(THRESHOLD_COLUMNS, "per threshold", note)]
        return views


def _nanmean(values: Sequence[float]) -> float:
    """``np.nanmean``, but NaN without numpy's warning when every value is NaN."""
    array = np.asarray(values, dtype=np.float64)
    return float(np.nanmean(array)) if np.any(~np.isnan(array)) else math.nan


def score_detection(
    true_points: Sequence[Points],
    pred_points: Sequence[Points],
    *,
    names: Sequence[str] | None = None,
    radius: float = DEFAULT_RADIUS,
    thresholds: Iterable[float] = (),
    compat: str = DEFAULT_COMPAT,
    class_map: Mapping[int, int] | None = None,
    pred_class_map: Mapping[int, int] | None = None,
    class_names: Mapping[int, str] | None = None,
    provenance: Provenance | None = None,
) -> EvaluationResult:
    """:class:`DetectionScorer` over per-image point sets (``true_points[i]`` against ``pred_points[i]``).

    ``names`` name the per-image rows (default ``"0"``, ``"1"``, ...).
    """
    if len(true_points) != len(pred_points):
        raise ValueError(f"{len(true_points)} ground-truth images but {len(pred_points)} predicted ones")
    names = [str(i) for i in range(len(true_points))] if names is None else list(names)
    if len(names) != len(true_points):
        raise ValueError(f"{len(names)} names for {len(true_points)} images")
    scorer = DetectionScorer(
        radius,
        thresholds=thresholds,
        compat=compat,
        class_map=class_map,
        pred_class_map=pred_class_map,
        class_names=class_names,
    )
    for name, true, pred in zip(names, true_points, pred_points, strict=True):
        scorer.add(name, true, pred)
    return scorer.result(provenance)


__all__ = [
    "CONIC_LEGEND",
    "CONIC_WEIGHTS",
    "ClassTally",
    "DetectionCounts",
    "DetectionScorer",
    "ImagePoints",
    "check_compat",
    "class_scores",
    "map_labels",
    "match_points",
    "ratio",
    "score_detection",
]
