"""The official PanNuke evaluation (``TissueImageAnalytics/PanNuke-metrics`` ``run.py``): mPQ and bPQ.

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
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

# masks.npy channel order and the 19 tissues in the order of the script's tables (one source of truth)
from histostain.datasets.pannuke import CLASS_NAMES, TISSUES
from histostain.errors import InputError
from histostain.metrics.instance import (
    Labels,
    NpyRows,
    as_labels,
    contingency_of,
    nanmean,
    pq_of,
    prepared_pannuke_split,
    relabel,
)

if TYPE_CHECKING:
    from histostain.metrics.report import EvaluationResult

log = logging.getLogger(__name__)

N_CLASSES = len(CLASS_NAMES)


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


def image_pq(true_masks: Any, pred_masks: Any, match_iou: float = 0.5) -> tuple[float, list[float]]:
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
    known = [t for t in TISSUES if t in present]
    extra = sorted(present - set(TISSUES))
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
    match_iou: float = 0.5,
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
        for name, value in zip(CLASS_NAMES, per_class, strict=True):
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
        for channel, name in enumerate(CLASS_NAMES)
    ]
    return PanNukeScores(
        mpq=nanmean([r["mPQ"] for r in per_tissue]),
        bpq=nanmean([r["bPQ"] for r in per_tissue]),
        per_image=per_image,
        per_class=per_class,
        per_tissue=per_tissue,
        extra_tissues=extra,
    )


# ------------------------------------------------------------------------------------------------- inputs


@dataclass
class _Side:
    masks: NpyRows
    masks_path: Path
    types_path: Path | None
    names: list[str] | None
    description: str


def _open_side(path: Path, split: str | None, side: str) -> _Side:
    """masks.npy (and types.npy) of a PanNuke-metrics folder, a masks.npy file, or a prepared PanNuke split."""
    if not path.exists():
        raise InputError(f"{side} not found: {path}")
    names = None
    if path.is_file():
        if path.name.endswith(".npy"):
            folder, masks_path, description = path.parent, path, str(path)
        else:
            raise InputError(f"{path}: expected a folder holding masks.npy (the PanNuke-metrics layout)")
    elif (path / "manifest.json").is_file():
        chosen, names = prepared_pannuke_split(path, split)
        folder = path / chosen / "eval"
        masks_path, description = folder / "masks.npy", f"{path} ({chosen})"
    else:
        folder, masks_path, description = path, path / "masks.npy", str(path)
    if not masks_path.is_file():
        raise InputError(
            f"{path}: no masks.npy",
            hint="the PanNuke protocol reads masks.npy (N, H, W, 6) and types.npy, as PanNuke-metrics run.py",
        )
    masks = NpyRows(masks_path, "masks.npy")
    if masks.ndim != 4 or masks.shape[-1] < N_CLASSES:
        raise InputError(f"{masks_path}: shape {masks.shape}; expected PanNuke masks (N, H, W, 6)")
    if masks.dtype.kind not in "iufb":
        raise InputError(f"{masks_path}: dtype {masks.dtype}; expected numeric instance ids")
    types_path = folder / "types.npy"
    return _Side(masks, masks_path, types_path if types_path.is_file() else None, names, description)


def _read_tissues(path: Path | None, masks_path: Path, n: int) -> list[str]:
    if path is None:
        raise InputError(
            f"no types.npy beside {masks_path}",
            hint="the PanNuke protocol averages per tissue: types.npy holds each image's tissue name",
        )
    try:
        types = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise InputError(
            f"cannot read {path}: {str(exc).splitlines()[0]}",
            hint="expected a plain unicode array of tissue names (object arrays are not loaded)",
        ) from exc
    if types.ndim != 1 or types.shape[0] != n:
        raise InputError(f"{path}: shape {types.shape}; expected ({n},), one tissue name per image of {masks_path}")
    if types.dtype.kind == "S":
        return [t.decode("utf-8", "replace") for t in types.tolist()]
    if types.dtype.kind != "U":
        raise InputError(f"{path}: dtype {types.dtype}; expected tissue names (strings)")
    return [str(t) for t in types.tolist()]


def evaluate_pannuke(true: Path, pred: Path, *, split: str | None = None, match_iou: float = 0.5) -> EvaluationResult:
    """The official PanNuke protocol on ``true``/``pred`` folders; summary mPQ, bPQ; tables per class/tissue."""
    from histostain.metrics.report import EvaluationResult

    truth = _open_side(Path(true), split, "true")
    guess = _open_side(Path(pred), split, "pred")
    if truth.masks.shape[:3] != guess.masks.shape[:3]:
        raise InputError(
            f"{guess.masks_path}: shape {guess.masks.shape} does not match the ground truth "
            f"{truth.masks_path} {truth.masks.shape}; expected the same images in the same order"
        )
    tissues = _read_tissues(truth.types_path, truth.masks_path, truth.masks.shape[0])
    scores = pannuke_scores(
        truth.masks,
        guess.masks,
        tissues,
        match_iou=match_iou,
        names=truth.names,
        true_label=str(truth.masks_path),
        pred_label=str(guess.masks_path),
    )
    warnings = []
    if scores.extra_tissues:
        warnings.append(
            f"types.npy names tissues outside the 19 PanNuke tissues ({', '.join(scores.extra_tissues)}); "
            "they are averaged as tissues of their own (PanNuke-metrics would leave them out of mPQ/bPQ)"
        )
    if match_iou != 0.5:
        warnings.append(f"match IoU {match_iou} is not the published 0.5: not comparable with PanNuke tables")
    empty = sum(1 for row in scores.per_image if math.isnan(row["bPQ"]))
    log.info("PanNuke protocol: %d images, mPQ %.4f, bPQ %.4f", len(scores.per_image), scores.mpq, scores.bpq)
    meta = {
        "protocol": "pannuke",
        "match_iou": match_iou,
        "true": truth.description,
        "pred": guess.description,
        "images": len(scores.per_image),
        "images_without_nuclei": empty,
        "tissues": len(scores.per_tissue),
        "aggregation": "per image: bPQ and nanmean of class PQs; per tissue: nanmean; mPQ/bPQ: mean over tissues",
    }
    return EvaluationResult(
        metric="instance",
        summary={"mPQ": scores.mpq, "bPQ": scores.bpq},
        per_image=scores.per_image,
        tables={"per_class": scores.per_class, "per_tissue": scores.per_tissue},
        meta=meta,
        warnings=warnings,
    )
