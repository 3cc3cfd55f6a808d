"""The official PanNuke evaluation (``TissueImageAnalytics/PanNuke-metrics`` ``run.py``) on arrays: mPQ and bPQ.

Per image ``i`` (masks ``(H, W, C)``, channels 0-4 = Neoplastic, Inflammatory, Connective, Dead, Epithelial
instance ids; further channels ignored):

- bPQ_i: :func:`binarize` merges the five channels into one instance map on each side (later channels overwrite
  earlier ones), then PQ (IoU > 0.5); NaN when the ground truth has no nucleus;
- PQ_i,c per class: PQ of channel c after ``remap_label``; NaN when the ground truth has no nucleus of class c,
  even if the prediction has (false positives of an absent class are never penalised, as in the reference);
- mPQ_i = nanmean over the five classes.

Aggregation: per tissue the nanmean over its images; mPQ and bPQ = nanmean over the tissues (tissue-averaged,
not image-averaged); the per-class PQ = nanmean over all images.

Where the reference crashes, this module does not: binarize leaves gaps in the ids when an instance is wholly
overwritten by a later channel (``IndexError`` in ``get_fast_pq``); here the merged map is renumbered, which
gives the value the reference would give with contiguous ids. The reference's ``class_stats.csv`` puts the
Connective value in the Inflammatory row and drops the class names; the tables here are labelled correctly.

Reading ``masks.npy``/``types.npy`` is :mod:`histostain.metrics.instance_sources`; the ``evaluate instance
--protocol pannuke`` service is :mod:`histostain.metrics.evaluate_instance`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from histostain.errors import InputError
from histostain.metrics.defaults import DEFAULT_MATCH_IOU
from histostain.metrics.instance import Labels, as_labels, contingency_of, nanmean, pq_of, relabel

# masks.npy channel order and the 19 tissues in the order of the script's tables
from histostain.vocabulary import PANNUKE_CLASSES, PANNUKE_TISSUES

N_CLASSES = len(PANNUKE_CLASSES)


def _class_planes(masks: Any, name: str) -> np.ndarray:
    """The class channels of ``(H, W, C>=5)`` masks as contiguous integer planes ``(5, H, W)`` (one pass)."""
    array = np.asarray(masks)
    if array.ndim != 3:
        raise ValueError(f"{name}: expected (H, W, channels), got shape {array.shape}")
    return as_labels(np.moveaxis(array[..., :N_CLASSES], -1, 0), name, order="C")


def _channel_labels(planes: np.ndarray) -> list[Labels]:
    """Each class plane relabelled 1..n_c."""
    return [relabel(plane) for plane in planes]


def _merge(channels: list[Labels]) -> Labels:
    """binarize on relabelled channels: ids numbered channel by channel, later channels overwrite, no gaps."""
    merged = np.zeros(channels[0].size, np.int64)
    offset = 0
    for labels in channels:
        if labels.ids.size:
            merged[labels.index] = labels.label + offset
            offset += labels.ids.size
    return relabel(merged)


def binarize(classes: Any) -> np.ndarray:
    """Merge class channels ``(H, W, K)`` into one instance map (int32) as PanNuke-metrics ``binarize``.

    Ids are numbered channel by channel (ascending id inside a channel); a pixel claimed by several channels
    takes the later channel's instance. Instances wholly overwritten leave no gap: the result is 1..n.
    """
    array = np.asarray(classes)
    if array.ndim != 3:
        raise ValueError(f"masks: expected (H, W, channels), got shape {array.shape}")
    planes = as_labels(np.moveaxis(array, -1, 0), "masks", order="C")
    return _merge(_channel_labels(planes)).dense().reshape(array.shape[:2])


def image_pq(true_masks: Any, pred_masks: Any, match_iou: float = DEFAULT_MATCH_IOU) -> tuple[float, list[float]]:
    """(bPQ, [PQ per class]) of one image ``(H, W, C>=5)``; NaN where the ground truth has nothing to find."""
    true_planes = _class_planes(true_masks, "true masks")
    pred_planes = _class_planes(pred_masks, "pred masks")
    if true_planes.shape != pred_planes.shape:
        raise ValueError(f"true and pred masks differ in shape: {true_planes.shape} vs {pred_planes.shape}")
    return _planes_pq(true_planes, pred_planes, match_iou)


def _planes_pq(true_planes: np.ndarray, pred_planes: np.ndarray, match_iou: float) -> tuple[float, list[float]]:
    truth, guess = _channel_labels(true_planes), _channel_labels(pred_planes)
    if any(labels.ids.size for labels in truth):
        binary = pq_of(contingency_of(_merge(truth), _merge(guess)), match_iou).pq
    else:
        binary = math.nan
    per_class = [
        pq_of(contingency_of(t, p), match_iou).pq if t.ids.size else math.nan for t, p in zip(truth, guess, strict=True)
    ]
    return binary, per_class


@dataclass
class PanNukeScores:
    """Everything the protocol produces: headline numbers and the three tables."""

    mpq: float
    bpq: float
    per_image: list[dict[str, Any]]
    per_class: list[dict[str, Any]]
    per_tissue: list[dict[str, Any]]
    extra_tissues: list[str] = field(default_factory=list)


def _tissue_order(tissues: Sequence[str]) -> tuple[list[str], list[str]]:
    present = set(tissues)
    known = [t for t in PANNUKE_TISSUES if t in present]
    extra = sorted(present - set(PANNUKE_TISSUES))
    return known + extra, extra


def _row_planes(row: Any, where: str) -> np.ndarray:
    try:
        return _class_planes(row, where)
    except ValueError as exc:
        raise InputError(f"{where}: {str(exc).split(': ', 1)[-1]}") from exc


def pannuke_scores(
    true_masks: Any,
    pred_masks: Any,
    tissues: Sequence[str],
    *,
    match_iou: float = DEFAULT_MATCH_IOU,
    names: Sequence[str] | None = None,
    true_label: str = "true masks.npy",
    pred_label: str = "pred masks.npy",
) -> PanNukeScores:
    """Run the protocol over ``(N, H, W, C>=5)`` array-likes (memory maps are read one image at a time)."""
    from histostain.runtime.progress import track

    n = len(tissues)
    per_image: list[dict[str, Any]] = []
    class_values: list[list[float]] = [[] for _ in range(N_CLASSES)]
    for index in track(range(n), "PanNuke protocol", total=n, unit="image"):
        true_planes = _row_planes(true_masks[index], f"{true_label} image {index}")
        pred_planes = _row_planes(pred_masks[index], f"{pred_label} image {index}")
        binary, per_class = _planes_pq(true_planes, pred_planes, match_iou)
        row: dict[str, Any] = {"index": index}
        if names is not None:
            row["id"] = names[index]
        row["tissue"] = str(tissues[index])
        row["mPQ"] = nanmean(per_class)
        row["bPQ"] = binary
        for name, value in zip(PANNUKE_CLASSES, per_class, strict=True):
            row[f"PQ_{name}"] = value
        for channel, value in enumerate(per_class):
            class_values[channel].append(value)
        per_image.append(row)

    order, extra = _tissue_order([str(t) for t in tissues])
    per_tissue = []
    for tissue in order:
        rows = [r for r in per_image if r["tissue"] == tissue]
        per_tissue.append(
            {
                "tissue": tissue,
                "images": len(rows),
                "mPQ": nanmean([r["mPQ"] for r in rows]),
                "bPQ": nanmean([r["bPQ"] for r in rows]),
            }
        )
    per_class = [
        {
            "class": name,
            "channel": channel,
            "PQ": nanmean(class_values[channel]),
            "images": sum(1 for v in class_values[channel] if not math.isnan(v)),
        }
        for channel, name in enumerate(PANNUKE_CLASSES)
    ]
    return PanNukeScores(
        mpq=nanmean([r["mPQ"] for r in per_tissue]),
        bpq=nanmean([r["bPQ"] for r in per_tissue]),
        per_image=per_image,
        per_class=per_class,
        per_tissue=per_tissue,
        extra_tissues=extra,
    )


__all__ = ["N_CLASSES", "PanNukeScores", "binarize", "image_pq", "pannuke_scores"]
