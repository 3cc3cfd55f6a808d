"""Instance-segmentation metrics on arrays (Dice, AJI, AJI+, DQ, SQ, PQ), per image and aggregated over images.

The per-image functions reproduce ``metrics/stats_utils.py`` of hover_net (the code the HoVer-Net, PanNuke and
CoNSeP tables come from) value for value, but they work on any integer instance maps:

- ids need not be contiguous (the reference silently mis-indexes its mask list unless ``remap_label`` ran first);
- a map without background pixels, an empty prediction and two empty maps are all handled (the reference raises
  ``ValueError``, ``ValueError`` and ``ZeroDivisionError``). An image where a metric is 0/0 gets NaN
  ("undefined"), which ``nanmean`` aggregations skip, exactly as the PanNuke protocol skips empty images.

Every metric comes from one sparse contingency table of (true id, predicted id) -> overlapping pixels, counted
with ``np.bincount`` over the instance pixels only, instead of the reference's loop over per-instance masks.

:class:`InstanceScorer` aggregates images fed one at a time the way hover_net's ``compute_stats.py`` reports them
(mean over images) plus a dataset-level pooled PQ, and returns an :class:`EvaluationResult`; it is the one
scoring path of both the ``evaluate instance`` service (files, :mod:`histostain.metrics.evaluate_instance`) and
callers that hold arrays (the pipeline, per tile). Reading label files is :mod:`histostain.metrics.instance_sources`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from histostain.errors import ConfigError
from histostain.metrics.defaults import DEFAULT_MATCH_IOU
from histostain.metrics.report import EvaluationResult
from histostain.provenance import Provenance

SQ_EPS = 1.0e-6  # hover_net: SQ = sum(IoU) / (TP + 1e-6)
AJI_EPS = 1.0e-6  # hover_net AJI/AJI+: IoU = I / (U + 1e-6) when choosing pairs
_DENSE_TABLE_LIMIT = 1 << 22  # (n_true + 1) * (n_pred + 1) cells counted with a dense bincount
_DENSE_HUNGARIAN_LIMIT = 4_000_000  # larger cost matrices are solved per connected overlap component

# --------------------------------------------------------------------------------------------- relabelling


def as_labels(labels: Any, name: str, order: str = "K") -> np.ndarray:
    """An integer array of ``labels`` (bool -> 0/1; integral floats such as PanNuke's float64 ids accepted).

    Integer input is returned as is (a view) unless ``order="C"`` asks for a contiguous copy.
    """
    array = np.asarray(labels)
    if array.dtype == np.bool_:
        return np.asarray(array, np.uint8, order=order)
    if array.dtype.kind in "iu":
        return np.asarray(array, order=order) if order == "C" else array
    if array.dtype.kind == "f":
        with np.errstate(invalid="ignore"):  # NaN/inf cast to garbage, which the comparison then rejects
            ints = np.asarray(array, np.int64, order=order)
            exact = np.array_equal(ints, array)
        if not exact:
            raise ValueError(f"{name}: instance ids must be integers, got non-integer {array.dtype} values")
        return ints
    raise ValueError(f"{name}: instance ids must be integers, got dtype {array.dtype}")


class Labels(NamedTuple):
    """One map relabelled, stored sparsely: only its instance pixels.

    ``index``: flat positions of the instance pixels (ascending); ``label``: their new id 1..n in the ascending
    order of the original ids; ``ids``: the original ids (n,); ``areas``: pixels per instance (n,); ``size``:
    pixels in the whole map. Work is proportional to the instance pixels, not the image.
    """

    index: np.ndarray
    label: np.ndarray
    ids: np.ndarray
    areas: np.ndarray
    size: int

    def dense(self, dtype: Any = np.int32) -> np.ndarray:
        """The flat map with the new ids (0 = background)."""
        out = np.zeros(self.size, dtype)
        out[self.index] = self.label
        return out


_LUT_LIMIT = 1 << 22  # ids up to this use a lookup table; larger (or negative) ids are sorted with np.unique


def relabel(labels: np.ndarray) -> Labels:
    """Relabel any integer map to contiguous ids 1..n, keeping the order of the original ids.

    Value 0 is background wherever it appears in the order of ids (negative ids, if any, are instances).
    """
    flat = labels.ravel()
    index = np.flatnonzero(flat)
    values = flat[index]
    if values.size == 0:
        empty = np.zeros(0, np.int64)
        return Labels(empty, np.zeros(0, np.int32), empty, empty, int(flat.size))
    low, high = int(values.min()), int(values.max())
    if low > 0 and high <= _LUT_LIMIT:
        counts = np.bincount(values)
        ids = np.flatnonzero(counts)
        lut = np.zeros(high + 1, np.int32 if ids.size < 1 << 31 else np.int64)
        lut[ids] = np.arange(1, ids.size + 1)
        return Labels(index, lut[values], ids.astype(np.int64), counts[ids].astype(np.int64), int(flat.size))
    ids, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    return Labels(index, inverse.ravel() + 1, ids.astype(np.int64), counts.astype(np.int64), int(flat.size))


def remap_label(labels: Any, by_size: bool = False) -> np.ndarray:
    """Renumber instance ids to 1..n (int32), keeping their order, as hover_net's ``remap_label``.

    With ``by_size`` larger instances get smaller ids (equal sizes keep their id order, as Python's stable sort).
    Unlike the reference it accepts maps without a background pixel, and a map without instances comes back as
    an int32 array of zeros (the reference returns its input object).
    """
    array = as_labels(labels, "labels")
    found = relabel(array)
    new = found.label
    if by_size and found.areas.size:
        order = np.argsort(-found.areas, kind="stable")  # order[k] = old rank (0-based) of the k-th largest
        rank = np.empty(found.areas.size + 1, np.int64)
        rank[0] = 0
        rank[order + 1] = np.arange(1, found.areas.size + 1)
        new = rank[new]
    out = np.zeros(found.size, np.int32)
    out[found.index] = new
    return out.reshape(array.shape)


# ------------------------------------------------------------------------------------------ contingency table


@dataclass(frozen=True)
class Contingency:
    """Overlaps of two instance maps: the sparse table every metric here is computed from.

    ``true_ids``/``pred_ids`` are the original ids in ascending order; table indices are positions in them.
    ``rows``/``cols``/``inter`` list every overlapping (true, pred) pair, sorted by row then column.
    """

    true_ids: np.ndarray
    pred_ids: np.ndarray
    true_area: np.ndarray
    pred_area: np.ndarray
    rows: np.ndarray
    cols: np.ndarray
    inter: np.ndarray

    @property
    def n_true(self) -> int:
        return int(self.true_ids.size)

    @property
    def n_pred(self) -> int:
        return int(self.pred_ids.size)

    @property
    def union(self) -> np.ndarray:
        """Union of each listed pair: |T| + |P| - |T n P|."""
        return self.true_area[self.rows] + self.pred_area[self.cols] - self.inter

    def iou(self) -> np.ndarray:
        """IoU of each listed pair exactly as ``get_fast_pq``: I / (|T| + |P| - I)."""
        return self.inter / self.union

    def iou_aji(self) -> np.ndarray:
        """IoU as ``get_fast_aji``/``aji_plus`` rank pairs: I / (U + 1e-6) (it decides ties, so it is kept)."""
        return self.inter / (self.union + AJI_EPS)


def contingency(true: Any, pred: Any) -> Contingency:
    """Count the overlap of every (true, pred) instance pair in one pass over the pixels."""
    true_a = as_labels(true, "true")
    pred_a = as_labels(pred, "pred")
    if true_a.shape != pred_a.shape:
        raise ValueError(f"true and pred differ in shape: {true_a.shape} vs {pred_a.shape}")
    return contingency_of(relabel(true_a), relabel(pred_a))


def contingency_of(true: Labels, pred: Labels) -> Contingency:
    """The contingency table of two relabelled maps (lets callers reuse one relabelling for several tables)."""
    if true.size != pred.size:
        raise ValueError(f"true and pred differ in size: {true.size} vs {pred.size} pixels")
    n_t, n_p = true.ids.size, pred.ids.size
    width = n_p + 1
    if n_t == 0 or n_p == 0:
        rows = cols = inter = np.zeros(0, np.int64)
    else:
        true_at_pred = true.dense()[pred.index]  # true label under every predicted pixel
        both = true_at_pred > 0
        keys = true_at_pred[both].astype(np.int64) * width + pred.label[both]
        cells = (n_t + 1) * width
        if cells <= _DENSE_TABLE_LIMIT:
            table = np.bincount(keys, minlength=cells).reshape(n_t + 1, width)
            rows, cols = np.nonzero(table)
            inter = table[rows, cols]
            rows, cols = rows - 1, cols - 1
        else:
            keys, inter = np.unique(keys, return_counts=True)
            rows, cols = keys // width - 1, keys % width - 1
    return Contingency(
        true_ids=true.ids,
        pred_ids=pred.ids,
        true_area=true.areas,
        pred_area=pred.areas,
        rows=rows.astype(np.int64),
        cols=cols.astype(np.int64),
        inter=inter.astype(np.int64),
    )


def _hungarian(table: Contingency, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unique pairing maximising the summed ``weights`` of the listed pairs (``linear_sum_assignment(-W)``).

    The full ``n_true x n_pred`` matrix is solved as the reference does, so ties resolve the same way; beyond
    a few million cells each connected component of the overlap graph is solved alone (same optimum).
    Returns the indices of the chosen listed pairs with weight > 0 (rows, cols).
    """
    from scipy.optimize import linear_sum_assignment

    n_t, n_p = table.n_true, table.n_pred
    if n_t == 0 or n_p == 0 or table.rows.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    if n_t * n_p <= _DENSE_HUNGARIAN_LIMIT:
        dense = np.zeros((n_t, n_p), np.float64)
        dense[table.rows, table.cols] = weights
        rows, cols = linear_sum_assignment(-dense)
        keep = dense[rows, cols] > 0
        return rows[keep], cols[keep]
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    graph = coo_matrix((np.ones(table.rows.size), (table.rows, n_t + table.cols)), shape=(n_t + n_p, n_t + n_p))
    _, component = connected_components(graph, directed=False)
    pair_component = component[table.rows]
    order = np.argsort(pair_component, kind="stable")
    bounds = np.flatnonzero(np.diff(pair_component[order])) + 1
    chosen_rows: list[np.ndarray] = []
    chosen_cols: list[np.ndarray] = []
    for group in np.split(order, bounds):
        r_ids, r_local = np.unique(table.rows[group], return_inverse=True)
        c_ids, c_local = np.unique(table.cols[group], return_inverse=True)
        dense = np.zeros((r_ids.size, c_ids.size), np.float64)
        dense[r_local, c_local] = weights[group]
        rows, cols = linear_sum_assignment(-dense)
        keep = dense[rows, cols] > 0
        chosen_rows.append(r_ids[rows[keep]])
        chosen_cols.append(c_ids[cols[keep]])
    rows, cols = np.concatenate(chosen_rows), np.concatenate(chosen_cols)
    order = np.argsort(rows, kind="stable")
    return rows[order], cols[order]


def _pair_index(table: Contingency, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Positions in the listed pairs of the (row, col) pairs given (all of which must be listed)."""
    keys = table.rows * max(table.n_pred, 1) + table.cols  # listed pairs are sorted by (row, col)
    return np.searchsorted(keys, rows * max(table.n_pred, 1) + cols)


# ------------------------------------------------------------------------------------------------ metrics


def _dice(table: Contingency) -> float:
    denominator = int(table.true_area.sum() + table.pred_area.sum())
    if denominator == 0:
        return math.nan
    return 2.0 * int(table.inter.sum()) / denominator


def _aji_from_pairs(table: Contingency, pairs: np.ndarray, paired_rows: np.ndarray, paired_cols: np.ndarray) -> float:
    """sum I(pairs) / (sum U(pairs) + areas of unpaired true + areas of predictions never paired)."""
    if table.n_true == 0 and table.n_pred == 0:
        return math.nan
    inter = float(table.inter[pairs].sum())
    union = float(table.union[pairs].sum())
    unpaired_true = np.ones(table.n_true, bool)
    unpaired_true[paired_rows] = False
    unpaired_pred = np.ones(table.n_pred, bool)
    unpaired_pred[paired_cols] = False
    union += float(table.true_area[unpaired_true].sum() + table.pred_area[unpaired_pred].sum())
    return inter / union


def _aji(table: Contingency) -> float:
    """MoNuSeg AJI: every true instance takes its argmax-IoU prediction (reuse allowed; first index on ties)."""
    if table.rows.size == 0:
        return _aji_from_pairs(table, np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64))
    iou = table.iou_aji()
    order = np.lexsort((table.cols, -iou, table.rows))  # per row: highest IoU first, then the lowest pred index
    sorted_rows = table.rows[order]
    first = np.ones(order.size, bool)
    first[1:] = sorted_rows[1:] != sorted_rows[:-1]
    best = order[first]
    best = best[iou[best] > 0.0]
    return _aji_from_pairs(table, best, table.rows[best], table.cols[best])


def _aji_plus(table: Contingency) -> float:
    """AJI+: unique Hungarian pairing on IoU, pairs with IoU > 0 kept."""
    rows, cols = _hungarian(table, table.iou_aji())
    return _aji_from_pairs(table, _pair_index(table, rows, cols), rows, cols)


@dataclass(frozen=True)
class Pairing:
    """The PQ matching: paired ids (original ids), their IoU, and the unpaired ids (FN on true, FP on pred)."""

    paired_true: np.ndarray
    paired_pred: np.ndarray
    paired_iou: np.ndarray
    unpaired_true: np.ndarray
    unpaired_pred: np.ndarray

    @property
    def tp(self) -> int:
        return int(self.paired_true.size)

    @property
    def fp(self) -> int:
        return int(self.unpaired_pred.size)

    @property
    def fn(self) -> int:
        return int(self.unpaired_true.size)

    @property
    def iou_sum(self) -> float:
        return float(self.paired_iou.sum())


class PQResult(NamedTuple):
    """``(dq, sq, pq, pairing)`` as ``get_fast_pq`` returns ``[dq, sq, pq], pairing``."""

    dq: float
    sq: float
    pq: float
    pairing: Pairing


def _pairing(table: Contingency, match_iou: float) -> Pairing:
    if not 0.0 <= match_iou <= 1.0:
        raise ValueError(f"match_iou must be within 0..1, got {match_iou}")
    iou = table.iou()
    if match_iou >= 0.5:  # IoU > 0.5 pairs are unique: each instance has at most one such partner
        chosen = np.flatnonzero(iou > match_iou)
    else:
        rows, cols = _hungarian(table, iou)
        chosen = _pair_index(table, rows, cols)
        chosen = chosen[iou[chosen] > match_iou]
    rows, cols = table.rows[chosen], table.cols[chosen]
    unpaired_true = np.ones(table.n_true, bool)
    unpaired_true[rows] = False
    unpaired_pred = np.ones(table.n_pred, bool)
    unpaired_pred[cols] = False
    return Pairing(
        paired_true=table.true_ids[rows],
        paired_pred=table.pred_ids[cols],
        paired_iou=iou[chosen],
        unpaired_true=table.true_ids[unpaired_true],
        unpaired_pred=table.pred_ids[unpaired_pred],
    )


def pq_from_counts(tp: int, fp: int, fn: int, iou_sum: float) -> tuple[float, float, float]:
    """DQ = TP / (TP + FP/2 + FN/2), SQ = sum IoU / (TP + 1e-6), PQ = DQ * SQ; NaN when nothing exists."""
    if tp + fp + fn == 0:
        return math.nan, math.nan, math.nan
    dq = tp / (tp + 0.5 * fp + 0.5 * fn)
    sq = iou_sum / (tp + SQ_EPS)
    return dq, sq, dq * sq


def pq_of(table: Contingency, match_iou: float) -> PQResult:
    pairing = _pairing(table, match_iou)
    dq, sq, pq_value = pq_from_counts(pairing.tp, pairing.fp, pairing.fn, pairing.iou_sum)
    return PQResult(dq, sq, pq_value, pairing)


def dice(true: Any, pred: Any) -> float:
    """Binary Dice of the foregrounds (hover_net ``get_dice_1``); NaN when both maps are empty."""
    return _dice(contingency(true, pred))


def aji(true: Any, pred: Any) -> float:
    """Aggregated Jaccard Index as MoNuSeg/hover_net ``get_fast_aji`` (argmax-IoU pairing, reuse allowed).

    0 for an empty prediction against a non-empty truth (the reference raises), NaN when both are empty.
    """
    return _aji(contingency(true, pred))


def aji_plus(true: Any, pred: Any) -> float:
    """AJI+ as hover_net ``get_fast_aji_plus`` (unique Hungarian pairing, IoU > 0); NaN when both are empty."""
    return _aji_plus(contingency(true, pred))


def pq(true: Any, pred: Any, match_iou: float = DEFAULT_MATCH_IOU) -> PQResult:
    """Detection, segmentation and panoptic quality as hover_net ``get_fast_pq``.

    Pairs need IoU strictly above ``match_iou`` (an IoU of exactly 0.5 is not a match); below 0.5 the pairing
    is Hungarian on IoU first. All three values are NaN when both maps are empty (the reference divides by 0).
    """
    return pq_of(contingency(true, pred), match_iou)


def instance_metrics(true: Any, pred: Any, match_iou: float = DEFAULT_MATCH_IOU) -> dict[str, float | int]:
    """Dice, AJI, AJI+, DQ, SQ, PQ and the PQ counts of one image pair, from one contingency table."""
    table = contingency(true, pred)
    result = pq_of(table, match_iou)
    return {
        "dice": _dice(table),
        "aji": _aji(table),
        "aji_plus": _aji_plus(table),
        "dq": result.dq,
        "sq": result.sq,
        "pq": result.pq,
        "tp": result.pairing.tp,
        "fp": result.pairing.fp,
        "fn": result.pairing.fn,
        "iou_sum": result.pairing.iou_sum,
        "n_true": table.n_true,
        "n_pred": table.n_pred,
    }


def nanmean(values: Sequence[float]) -> float:
    """Mean of the finite values; NaN (without numpy's warning) when there are none."""
    kept = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    return math.fsum(kept) / len(kept) if kept else math.nan


# ------------------------------------------------------------------------------------ aggregation over images

HOVERNET_KEYS = ("dice", "aji", "aji_plus", "dq", "sq", "pq")
SUMMARY_NAMES = {"dice": "Dice", "aji": "AJI", "aji_plus": "AJI+", "dq": "DQ", "sq": "SQ", "pq": "PQ"}
AGGREGATION = "mean over images of the per-image scores (NaN skipped); *_pooled: TP/FP/FN/IoU summed"


def check_match_iou(match_iou: float) -> float:
    """The PQ match threshold as a user gives it: within [0, 1) (IoU > 1 is impossible, so 1 would match nothing)."""
    if not 0.0 <= match_iou < 1.0:
        raise ConfigError(f"match IoU must be within [0, 1), got {match_iou}")
    return float(match_iou)


class InstanceScorer:
    """The hover_net protocol over images fed one at a time: per-image rows, means over images, pooled PQ.

    ``add(name, true, pred)`` scores one pair of instance maps (any integer ids, equal shapes) and keeps only its
    row of numbers, so a caller can feed tiles as it makes them without holding them; ``result()`` returns the
    summary (``Dice``, ``AJI``, ``AJI+``, ``DQ``, ``SQ``, ``PQ``: means over the images where each is defined, as
    ``compute_stats.py --mode=instance`` prints them; ``DQ_pooled``/``SQ_pooled``/``PQ_pooled`` from TP, FP, FN and
    IoUs summed over all images; ``images``, ``TP``, ``FP``, ``FN``), the per-image rows and the count of images
    where a metric is undefined.
    """

    def __init__(self, match_iou: float = DEFAULT_MATCH_IOU) -> None:
        self.match_iou = check_match_iou(match_iou)
        self.rows: list[dict[str, Any]] = []
        self._iou_sums: list[float] = []  # summed exactly (math.fsum) for the pooled SQ

    def add(self, name: str, true: Any, pred: Any) -> dict[str, Any]:
        """Score one image; returns its row: ``image``, the six scores, TP/FP/FN counts, ``n_true``, ``n_pred``."""
        scores = instance_metrics(true, pred, self.match_iou)
        self._iou_sums.append(float(scores.pop("iou_sum")))
        row: dict[str, Any] = {"image": name, **scores}
        self.rows.append(row)
        return row

    def result(self, provenance: Provenance | None = None) -> EvaluationResult:
        """The aggregate of every image added so far (NaN scores when none was)."""
        rows = self.rows
        summary: dict[str, float | int | None] = {
            SUMMARY_NAMES[k]: nanmean([r[k] for r in rows]) for k in HOVERNET_KEYS
        }
        tp, fp, fn = (sum(r[k] for r in rows) for k in ("tp", "fp", "fn"))
        dq, sq, pq_value = pq_from_counts(tp, fp, fn, math.fsum(self._iou_sums))
        summary.update({"DQ_pooled": dq, "SQ_pooled": sq, "PQ_pooled": pq_value})
        summary.update({"images": len(rows), "TP": tp, "FP": fp, "FN": fn})
        warnings = []
        both_empty = sum(1 for r in rows if r["n_true"] == 0 and r["n_pred"] == 0)
        if both_empty:
            warnings.append(f"{both_empty} image(s) are empty in both maps: their scores are undefined and skipped")
        meta = {
            "protocol": "hovernet",
            "match_iou": self.match_iou,
            "images": len(rows),
            "aggregation": AGGREGATION,
            "undefined_images": {SUMMARY_NAMES[k]: sum(1 for r in rows if math.isnan(r[k])) for k in HOVERNET_KEYS},
        }
        return EvaluationResult(
            metric="instance",
            summary=summary,
            per_image=[dict(row) for row in rows],
            meta=meta,
            warnings=warnings,
            provenance=provenance,
        )


def score_instances(
    images: Iterable[tuple[str, Any, Any]],
    *,
    match_iou: float = DEFAULT_MATCH_IOU,
    provenance: Provenance | None = None,
) -> EvaluationResult:
    """:class:`InstanceScorer` over ``(name, true map, predicted map)`` triples (any iterable, consumed once)."""
    scorer = InstanceScorer(match_iou)
    for name, true, pred in images:
        scorer.add(name, true, pred)
    return scorer.result(provenance)


__all__ = [
    "AJI_EPS",
    "SQ_EPS",
    "Contingency",
    "InstanceScorer",
    "Labels",
    "PQResult",
    "Pairing",
    "aji",
    "aji_plus",
    "as_labels",
    "check_match_iou",
    "contingency",
    "contingency_of",
    "dice",
    "instance_metrics",
    "nanmean",
    "pq",
    "pq_from_counts",
    "pq_of",
    "relabel",
    "remap_label",
    "score_instances",
]
