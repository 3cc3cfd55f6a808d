"""Cell-detection metrics: centroid matching and pooled precision / recall / F1 (``histostain evaluate celldet``).

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
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import cdist

from histostain.errors import ConfigError, DatasetLayoutError, InputError
from histostain.metrics.report import EvaluationResult

log = logging.getLogger(__name__)

COMPAT_MODES = ("histostain", "seed")
CONIC_WEIGHTS: tuple[float, float, float, float] = (2.0, 2.0, 1.0, 1.0)
DEFAULT_RADIUS = 12.0
# Annotation extensions, in the order that wins when one folder holds the same stem twice.
ANNOTATION_SUFFIXES = (".json", ".geojson", ".txt", ".csv")
_MAX_LISTED = 10  # stems named in a warning before "... and N more"


# --------------------------------------------------------------------------------------------- pure core


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
    unpaired_true, unpaired_pred = np.flatnonzero(true_free), np.flatnonzero(pred_free)
    return pairs, unpaired_true, unpaired_pred


def _as_points(points: np.ndarray, name: str) -> np.ndarray:
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


def class_scores(
    paired_true: np.ndarray,
    paired_pred: np.ndarray,
    unpaired_true: np.ndarray,
    unpaired_pred: np.ndarray,
    cls: int,
    weights: Sequence[float] = CONIC_WEIGHTS,
) -> dict[str, float | int]:
    """CoNIC/HoVer-Net per-class scores of class ``cls`` from the labels of paired and unpaired points.

    Only pairs where at least one label is ``cls`` count (so ``tn`` is always 0, as in the reference):
    ``tp`` both ``cls``; ``fp_dt`` pred ``cls`` on a true other class; ``fn_dt`` true ``cls`` predicted as
    another class; ``fp_d``/``fn_d`` unpaired preds/trues of ``cls``. With ``w = [w0, w1, w2, w3]``:
    F1 = 2(tp+tn) / (2(tp+tn) + w0 fp_dt + w1 fn_dt + w2 fp_d + w3 fn_d), precision and recall alike.
    """
    w0, w1, w2, w3 = (float(v) for v in weights)
    paired_true = np.asarray(paired_true)
    paired_pred = np.asarray(paired_pred)
    involved = (paired_true == cls) | (paired_pred == cls)
    pt, pp = paired_true[involved], paired_pred[involved]
    tp = int(np.count_nonzero((pt == cls) & (pp == cls)))
    tn = int(np.count_nonzero((pt != cls) & (pp != cls)))  # 0 by construction; kept to mirror the formula
    fp_dt = int(np.count_nonzero((pt != cls) & (pp == cls)))
    fn_dt = int(np.count_nonzero((pt == cls) & (pp != cls)))
    fp_d = int(np.count_nonzero(np.asarray(unpaired_pred) == cls))
    fn_d = int(np.count_nonzero(np.asarray(unpaired_true) == cls))
    good = tp + tn
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


@dataclass
class DetectionOutcome:
    """Result of :func:`evaluate_points` at one threshold: per-image and pooled counts, and the labels of paired
    and unpaired points over the whole dataset (for the per-class scores)."""

    per_image: list[DetectionCounts]
    total: DetectionCounts
    paired_true: np.ndarray
    paired_pred: np.ndarray
    unpaired_true: np.ndarray
    unpaired_pred: np.ndarray
    dummies: int = 0


_DUMMY = ImagePoints(np.zeros((1, 2)), np.zeros(1, dtype=np.int64), np.ones(1))


def evaluate_points(
    images: Sequence[tuple[ImagePoints, ImagePoints]],
    radius: float,
    *,
    threshold: float | None = None,
    compat: str = "histostain",
) -> DetectionOutcome:
    """Match every (true, pred) image pair and pool the counts (micro average) over the dataset.

    ``threshold`` keeps predictions with score ``>= threshold``. ``compat="seed"`` inserts the reference's dummy
    point ``(0, 0)`` with label 0 into each side that is empty (after thresholding) before matching.
    """
    _check_compat(compat)
    per_image: list[DetectionCounts] = []
    pt, pp, ut, up = [], [], [], []
    dummies = 0
    for true, pred in images:
        pred = pred.kept(threshold)
        if compat == "seed":
            if len(true) == 0:
                true, dummies = _DUMMY, dummies + 1
            if len(pred) == 0:
                pred, dummies = _DUMMY, dummies + 1
        pairs, unpaired_true, unpaired_pred = match_points(true.xy, pred.xy, radius)
        per_image.append(DetectionCounts(len(pairs), len(unpaired_pred), len(unpaired_true)))
        true_labels, pred_labels = true.label_array(), pred.label_array()
        pt.append(true_labels[pairs[:, 0]])
        pp.append(pred_labels[pairs[:, 1]])
        ut.append(true_labels[unpaired_true])
        up.append(pred_labels[unpaired_pred])
    total = DetectionCounts(sum(c.tp for c in per_image), sum(c.fp for c in per_image), sum(c.fn for c in per_image))

    def cat(parts: list[np.ndarray]) -> np.ndarray:
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    return DetectionOutcome(per_image, total, cat(pt), cat(pp), cat(ut), cat(up), dummies)


def per_class_scores(
    outcome: DetectionOutcome, classes: Sequence[int], weights: Sequence[float] = CONIC_WEIGHTS
) -> list[dict[str, float | int]]:
    """:func:`class_scores` for each class, from the pooled labels of ``outcome``."""
    return [
        class_scores(outcome.paired_true, outcome.paired_pred, outcome.unpaired_true, outcome.unpaired_pred, c, weights)
        for c in classes
    ]


def map_labels(labels: np.ndarray, mapping: Mapping[int, int] | None) -> np.ndarray:
    """Apply a class map; codes absent from the map are kept (the caller warns about them)."""
    if not mapping or len(labels) == 0:
        return labels
    out = labels.copy()
    for src, dst in mapping.items():
        out[labels == src] = dst
    return out


# --------------------------------------------------------------------------------------------- inputs


@dataclass
class _Side:
    """One side's annotation files by stem, where they came from, and what to tell the user."""

    files: dict[str, Path]
    source: str
    kind: str  # "files", "hovernet-json-subfolder", "prepared-endonuke", "file"
    mpp: float | None = None
    class_names: dict[int, str] | None = None


def _annotation_files(folder: Path, warnings: list[str]) -> dict[str, Path]:
    """Annotation files directly in ``folder`` by stem; a stem present twice keeps the preferred extension."""
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        suffix = path.suffix.lower()
        if path.name.startswith(".") or suffix not in ANNOTATION_SUFFIXES or not path.is_file():
            continue
        other = found.get(path.stem)
        if other is not None:
            keep, drop = sorted([other, path], key=lambda p: ANNOTATION_SUFFIXES.index(p.suffix.lower()))
            warnings.append(f"{folder}: both {keep.name} and {drop.name} exist; using {keep.name}")
            found[path.stem] = keep
        else:
            found[path.stem] = path
    return found


def _resolve_side(path: Path, role: str, split: str | None, warnings: list[str]) -> _Side:
    """Find the annotation files of one side: a file, a folder, its ``json/`` subfolder or a prepared EndoNuke."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{role} annotations not found: {path}", hint="check the path")
    if path.is_file():
        if path.suffix.lower() not in ANNOTATION_SUFFIXES:
            raise InputError(
                f"{path}: not an annotation file (extension {path.suffix or '(none)'!r})",
                hint=f"use {', '.join(ANNOTATION_SUFFIXES)} files or a folder of them",
            )
        return _Side({path.stem: path}, str(path), "file")
    if role == "true" and (path / "manifest.json").is_file():
        return _prepared_endonuke(path, split)
    files = _annotation_files(path, warnings)
    json_dir = path / "json"
    if json_dir.is_dir():
        nested = _annotation_files(json_dir, warnings)
        if nested and not files:
            return _Side(nested, str(json_dir), "hovernet-json-subfolder")
        if nested:
            warnings.append(f"{path}: using its own files; the json/ subfolder is ignored")
    if not files:
        raise InputError(
            f"no annotation files ({', '.join(ANNOTATION_SUFFIXES)}) in {path}",
            hint="pass the folder that holds the files (hover_net: its output folder or json/ subfolder)",
        )
    return _Side(files, str(path), "files")


def _prepared_endonuke(folder: Path, split: str | None) -> _Side:
    from histostain.datasets.prepared import SPLIT_NAMES, load_prepared
    from histostain.io.annotations import ENDONUKE_TYPE_NAMES

    manifest = load_prepared(folder)
    if manifest.dataset != "endonuke":
        raise InputError(
            f"{folder} holds prepared {manifest.dataset!r} data; celldet reads prepared EndoNuke ground truth",
            hint="pass a prepared EndoNuke folder or a folder of annotation files",
        )
    if split is not None and split not in manifest.splits:
        raise ConfigError(
            f"split {split!r} is not in {folder}",
            hint=f"available: {', '.join(s for s in SPLIT_NAMES if s in manifest.splits) or '(none)'}",
        )
    files: dict[str, Path] = {}
    for sample in manifest.samples:
        if split is not None and sample["split"] != split:
            continue
        label = folder / sample["split"] / "labels" / f"{sample['id']}.txt"
        if not label.is_file():
            raise DatasetLayoutError(f"{label}: listed in {folder / 'manifest.json'} but missing")
        files[str(sample["id"])] = label
    mpp = manifest.options.get("mpp")
    where = f"{folder} (split {split})" if split else str(folder)
    return _Side(files, where, "prepared-endonuke", float(mpp) if mpp else None, dict(ENDONUKE_TYPE_NAMES))


def _read_points(path: Path) -> ImagePoints:
    from histostain.io.annotations import read_annotations

    nuclei = read_annotations(path)
    xy = np.array([n.centroid for n in nuclei], dtype=np.float64).reshape(-1, 2)
    labels = np.array([-1 if n.type is None else n.type for n in nuclei], dtype=np.int64)
    has_scores = any(n.score is not None for n in nuclei)
    scores = np.array([1.0 if n.score is None else n.score for n in nuclei]) if has_scores else None
    return ImagePoints(xy, labels, scores)


# --------------------------------------------------------------------------------------------- options


def _check_compat(compat: str) -> None:
    if compat not in COMPAT_MODES:
        raise ConfigError(f"unknown compat mode {compat!r}", hint=f"use one of {', '.join(COMPAT_MODES)}")


def _resolve_radius(radius: float, radius_um: float | None, mpp: float | None) -> tuple[float, float | None]:
    """The matching radius in pixels and, when known, in micrometres."""
    if (radius_um is None) != (mpp is None):
        raise ConfigError(
            "--radius-um and --mpp go together",
            hint="give both (radius in px = radius_um / mpp), or give --radius in pixels",
        )
    if mpp is not None:
        if not (math.isfinite(mpp) and mpp > 0):
            raise ConfigError(f"--mpp must be a positive number of micrometres per pixel, got {mpp}")
        if not (math.isfinite(radius_um) and radius_um >= 0):  # type: ignore[arg-type]
            raise ConfigError(f"--radius-um must be a non-negative number, got {radius_um}")
        return float(radius_um) / float(mpp), float(radius_um)  # type: ignore[arg-type]
    if not (math.isfinite(radius) and radius >= 0):
        raise ConfigError(f"--radius must be a non-negative number of pixels, got {radius}")
    return float(radius), None


def _check_class_map(mapping: Mapping[int, int] | None, name: str) -> dict[int, int] | None:
    if mapping is None:
        return None
    checked: dict[int, int] = {}
    for src, dst in mapping.items():
        if isinstance(src, bool) or isinstance(dst, bool) or int(src) != src or int(dst) != dst or dst < 0:
            raise ConfigError(f"{name}: {src!r}:{dst!r} is not a mapping of class codes (integers >= 0)")
        checked[int(src)] = int(dst)
    return checked


def _listed(stems: Sequence[str]) -> str:
    shown = ", ".join(stems[:_MAX_LISTED])
    return shown + (f" ... and {len(stems) - _MAX_LISTED} more" if len(stems) > _MAX_LISTED else "")


# --------------------------------------------------------------------------------------------- service


def evaluate_celldet(
    true: Path,
    pred: Path,
    *,
    radius: float = DEFAULT_RADIUS,
    radius_um: float | None = None,
    mpp: float | None = None,
    thresholds: list[float] | None = None,
    class_map: dict[int, int] | None = None,
    pred_class_map: dict[int, int] | None = None,
    compat: str = "histostain",
    split: str | None = None,
) -> EvaluationResult:
    """Cell-detection P/R/F1 of predicted centroids against ground truth, paired by file stem.

    ``true``/``pred``: a folder (or one file) of centroid txt, hover_net JSON, GeoJSON or CSV files; a hover_net
    output folder whose ``json/`` subfolder holds the files; on the true side also a prepared EndoNuke folder
    (``split`` restricts it to one split). ``class_map`` maps ground-truth class codes, ``pred_class_map``
    prediction codes (e.g. EndoNuke 0/1/2 onto PanNuke types). ``thresholds`` adds a table of scores for
    predictions with score ``>= t``. ``compat="seed"`` reproduces the seed project's dummy points.
    """
    from histostain.runtime.progress import track

    _check_compat(compat)
    radius_px, radius_in_um = _resolve_radius(radius, radius_um, mpp)
    class_map = _check_class_map(class_map, "class map")
    pred_class_map = _check_class_map(pred_class_map, "prediction class map")
    thresholds = [float(t) for t in thresholds or []]
    if any(not math.isfinite(t) for t in thresholds):
        raise ConfigError(f"score thresholds must be finite numbers, got {thresholds}")

    warnings: list[str] = []
    true_side = _resolve_side(Path(true), "true", split, warnings)
    pred_side = _resolve_side(Path(pred), "pred", None, warnings)
    if split is not None and true_side.kind != "prepared-endonuke":
        raise ConfigError(
            f"--split {split} only applies to a prepared EndoNuke ground truth; {true}", hint="omit --split"
        )
    only_true: list[str] = []
    only_pred: list[str] = []
    if true_side.kind == "file" and pred_side.kind == "file":  # two files: one pair, whatever their names
        (stem, true_file), pred_file = next(iter(true_side.files.items())), next(iter(pred_side.files.values()))
        pairs_by_stem = {stem: (true_file, pred_file)}
    else:
        common = sorted(set(true_side.files) & set(pred_side.files))
        only_true = sorted(set(true_side.files) - set(pred_side.files))
        only_pred = sorted(set(pred_side.files) - set(true_side.files))
        if not common:
            raise InputError(
                f"no file stem in {pred_side.source} matches one in {true_side.source}",
                hint="ground truth and predictions pair by file name without extension (e.g. 12.txt <-> 12.json)",
            )
        pairs_by_stem = {s: (true_side.files[s], pred_side.files[s]) for s in common}
    if only_true:
        warnings.append(f"{len(only_true)} ground-truth file(s) without a prediction, skipped: {_listed(only_true)}")
    if only_pred:
        warnings.append(f"{len(only_pred)} prediction file(s) without ground truth, skipped: {_listed(only_pred)}")

    images: list[tuple[ImagePoints, ImagePoints]] = []
    stems = list(pairs_by_stem)
    for stem in track(stems, "Reading annotations", total=len(stems), unit="image"):
        true_path, pred_path = pairs_by_stem[stem]
        images.append((_read_points(true_path), _read_points(pred_path)))

    # Classes: a side carries classes when every nucleus on it has one (and it has nuclei at all).
    true_typed = _carries_classes(im[0] for im in images)
    pred_typed = _carries_classes(im[1] for im in images)
    with_classes = true_typed and pred_typed
    unmapped: set[int] = set()
    for t_points, p_points in images:
        if true_typed:
            unmapped |= _unmapped(t_points.labels, class_map)
            t_points.labels = map_labels(t_points.labels, class_map)
        else:
            t_points.labels = None
        if pred_typed:
            unmapped |= _unmapped(p_points.labels, pred_class_map)
            p_points.labels = map_labels(p_points.labels, pred_class_map)
        else:
            p_points.labels = None
    if (class_map or pred_class_map) and not with_classes:
        warnings.append("a class map was given but not both sides carry classes; per-class scores are skipped")
    elif unmapped and (class_map or pred_class_map):
        warnings.append(f"class code(s) {sorted(unmapped)} are not in the class map and are kept unchanged")
    for t_points, p_points in images:  # a consistent dtype even for empty images
        if t_points.labels is None and with_classes:
            t_points.labels = np.zeros(0, dtype=np.int64)
        if p_points.labels is None and with_classes:
            p_points.labels = np.zeros(0, dtype=np.int64)

    outcome = evaluate_points(images, radius_px, compat=compat)
    per_image = [
        {"stem": stem, "n_true": len(t), "n_pred": len(p), **counts.row()}
        for stem, (t, p), counts in zip(stems, images, outcome.per_image, strict=True)
    ]
    total = outcome.total
    summary: dict[str, float | int | None] = {
        "precision": total.precision,
        "recall": total.recall,
        "f1": total.f1,
        "tp": total.tp,
        "fp": total.fp,
        "fn": total.fn,
        "n_images": len(images),
        "n_true": sum(len(t) for t, _ in images),
        "n_pred": sum(len(p) for _, p in images),
    }
    tables: dict[str, list[dict[str, Any]]] = {}
    classes: list[int] = []
    if with_classes:
        present = sorted(
            {int(c) for t, p in images for c in np.concatenate([t.label_array(), p.label_array()]) if c >= 0}
        )
        # The seed (celldetr) scores classes 1..K only: 0 is its "no class" label, also used by the dummies.
        classes = list(range(1, max(present, default=0) + 1)) if compat == "seed" else present
        names = true_side.class_names if true_side.class_names and not class_map else None
        rows = per_class_scores(outcome, classes)
        for row in rows:
            cls = int(row["class"])
            row["n_true"] = int(sum(np.count_nonzero(t.label_array() == cls) for t, _ in images))
            row["n_pred"] = int(sum(np.count_nonzero(p.label_array() == cls) for _, p in images))
            if names and cls in names:
                row["name"] = names[cls]
        tables["per_class"] = rows
        agree = outcome.paired_true == outcome.paired_pred
        summary["type_accuracy"] = ratio(int(np.count_nonzero(agree)), len(agree))
        summary["f1_type_mean"] = float(np.nanmean([r["f1"] for r in rows])) if rows else math.nan
    if thresholds:
        threshold_rows = []
        for t in thresholds:
            at = evaluate_points(images, radius_px, threshold=t, compat=compat)
            row: dict[str, Any] = {"threshold": t, **at.total.row()}
            if with_classes:
                for r in per_class_scores(at, classes):
                    row[f"f1_class_{r['class']}"] = r["f1"]
            threshold_rows.append(row)
        tables["per_threshold"] = threshold_rows
        if not any(p.scores is not None for _, p in images):
            warnings.append("the predictions carry no scores; every threshold keeps all of them (score 1)")

    empty_true = sum(1 for t, _ in images if len(t) == 0)
    empty_pred = sum(1 for _, p in images if len(p) == 0)
    if compat == "seed" and outcome.dummies:
        warnings.append(
            f"compat=seed: {outcome.dummies} dummy point(s) at (0, 0) were inserted into empty images, "
            "as the seed project's metric does; they change the counts"
        )
    meta: dict[str, Any] = {
        "radius_px": radius_px,
        "radius_um": radius_in_um if radius_in_um is not None else _um(radius_px, true_side.mpp),
        "mpp": mpp if mpp is not None else true_side.mpp,
        "mpp_source": "option" if mpp is not None else ("manifest" if true_side.mpp else None),
        "matching": "hungarian on the full euclidean cost matrix, then pairs with distance > radius dropped",
        "pooling": "micro (counts summed over images)",
        "compat": compat,
        "empty_images": {"true": empty_true, "pred": empty_pred, "dummy_points": outcome.dummies},
        "true_source": true_side.source,
        "true_kind": true_side.kind,
        "pred_source": pred_side.source,
        "pred_kind": pred_side.kind,
        "n_images": len(images),
        "unmatched_true": only_true,
        "unmatched_pred": only_pred,
        "classes": classes,
        "class_weights": list(CONIC_WEIGHTS) if with_classes else None,
        "class_map": class_map,
        "pred_class_map": pred_class_map,
        "thresholds": thresholds,
        "split": split,
    }
    log.info("celldet: %d images, TP %d FP %d FN %d, F1 %.4f", len(images), total.tp, total.fp, total.fn, total.f1)
    return EvaluationResult(
        metric="celldet", summary=summary, per_image=per_image, tables=tables, meta=meta, warnings=warnings
    )


def _um(radius_px: float, mpp: float | None) -> float | None:
    return radius_px * mpp if mpp else None


def _carries_classes(sides: Any) -> bool:
    any_points = False
    for points in sides:
        if len(points):
            any_points = True
            if points.labels is None or np.any(points.labels < 0):
                return False
    return any_points


def _unmapped(labels: np.ndarray | None, mapping: Mapping[int, int] | None) -> set[int]:
    if not mapping or labels is None:
        return set()
    return {int(c) for c in np.unique(labels)} - set(mapping)


__all__ = [
    "CONIC_WEIGHTS",
    "DetectionCounts",
    "DetectionOutcome",
    "ImagePoints",
    "class_scores",
    "evaluate_celldet",
    "evaluate_points",
    "map_labels",
    "match_points",
    "per_class_scores",
    "ratio",
]
