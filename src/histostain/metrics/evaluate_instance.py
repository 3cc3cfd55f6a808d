"""The ``evaluate instance`` service: instance maps from files scored by the hover_net or the PanNuke protocol.

Reading is :mod:`histostain.metrics.instance_sources`, scoring :mod:`histostain.metrics.instance` (hover_net:
files are fed image by image to the same :class:`~histostain.metrics.instance.InstanceScorer` that array callers
use) and :mod:`histostain.metrics.pannuke` (mPQ/bPQ). This module pairs the sides, checks them against each other
and adds what only a file-based run knows: the inputs, unmatched stems and the provenance record.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from histostain.errors import ConfigError, InputError
from histostain.metrics.defaults import DEFAULT_MATCH_IOU, DEFAULT_PROTOCOL, PROTOCOLS
from histostain.metrics.instance import InstanceScorer, check_match_iou
from histostain.metrics.instance_sources import open_label_source, open_pannuke_masks, pair_sources, read_tissues
from histostain.metrics.pannuke import pannuke_scores
from histostain.metrics.report import EvaluationResult
from histostain.metrics.splits import SplitChoice, check_split_applies
from histostain.provenance import Provenance, record_or_capture

log = logging.getLogger(__name__)


def evaluate_instance(
    true: Path,
    pred: Path,
    *,
    protocol: str = DEFAULT_PROTOCOL,
    match_iou: float = DEFAULT_MATCH_IOU,
    split: str | None = None,
    provenance: Provenance | None = None,
) -> EvaluationResult:
    """Score predicted instance maps against the ground truth.

    ``protocol="hovernet"``: per-image Dice, AJI, AJI+, DQ, SQ, PQ, their means over images (what hover_net's
    ``compute_stats.py`` prints) and the dataset-level pooled DQ/SQ/PQ. ``protocol="pannuke"``: mPQ and bPQ of
    the official PanNuke-metrics script (see :mod:`histostain.metrics.pannuke`). ``split`` picks the split of a
    prepared folder (default test; ``"all"`` pools them, hover_net protocol only; see
    :mod:`histostain.metrics.splits`) and is refused for other inputs. ``provenance``: the caller's run
    record (the CLI's); without one the result records this call's arguments and ``sys.argv``.
    """
    if protocol not in PROTOCOLS:
        raise ConfigError(f"unknown protocol {protocol!r}; expected one of {', '.join(PROTOCOLS)}")
    check_match_iou(match_iou)
    record = record_or_capture(provenance, true=true, pred=pred, protocol=protocol, match_iou=match_iou, split=split)
    if protocol == "pannuke":
        return evaluate_pannuke(Path(true), Path(pred), split=split, match_iou=match_iou, provenance=record)
    result = _evaluate_hovernet(Path(true), Path(pred), match_iou, split)
    result.provenance = record
    return result


def _evaluate_hovernet(true: Path, pred: Path, match_iou: float, split: str | None) -> EvaluationResult:
    """Read each pair of maps and feed it to the scorer, one image in memory per side."""
    from histostain.runtime.progress import track

    true_source = open_label_source(true, split, side="true")
    pred_source = open_label_source(pred, split, side="pred")
    chosen = true_source.split or pred_source.split
    if chosen is None:
        check_split_applies(split, true)
    pairs, unmatched_true, unmatched_pred = pair_sources(true_source, pred_source)
    scorer = InstanceScorer(match_iou)
    for t_index, p_index in track(pairs, "evaluate instance", unit="image"):
        true_map = true_source.load(t_index)
        pred_map = pred_source.load(p_index)
        if true_map.shape != pred_map.shape:
            raise InputError(
                f"{pred_source.where(p_index)}: shape {pred_map.shape} differs from the ground truth "
                f"{true_source.where(t_index)} {true_map.shape}"
            )
        scorer.add(true_source.names[t_index], true_map, pred_map)
    result = scorer.result()
    scored = result.meta
    result.meta = {
        "protocol": scored["protocol"],
        "match_iou": scored["match_iou"],
        "true": true_source.description,
        "pred": pred_source.description,
        "images": scored["images"],
        "aggregation": scored["aggregation"],
        "undefined_images": scored["undefined_images"],
        "unmatched_true": unmatched_true,
        "unmatched_pred": unmatched_pred,
        **_split_meta(chosen),
    }
    result.scope = chosen.label if chosen else None
    unmatched = []
    if unmatched_true:
        unmatched.append(f"{len(unmatched_true)} ground-truth image(s) have no prediction and were left out")
    if unmatched_pred:
        unmatched.append(f"{len(unmatched_pred)} prediction(s) have no ground truth and were left out")
    result.warnings = unmatched + result.warnings
    log.info("evaluate instance (hover_net protocol): %d images, mean PQ %.4f", scored["images"], result.summary["PQ"])
    return result


def evaluate_pannuke(
    true: Path,
    pred: Path,
    *,
    split: str | None = None,
    match_iou: float = DEFAULT_MATCH_IOU,
    provenance: Provenance | None = None,
) -> EvaluationResult:
    """The official PanNuke protocol on ``true``/``pred`` folders; summary mPQ, bPQ; tables per class/tissue."""
    truth = open_pannuke_masks(Path(true), split, "true")
    guess = open_pannuke_masks(Path(pred), split, "pred")
    chosen = truth.split or guess.split
    if chosen is None:
        check_split_applies(split, true)
    if truth.masks.shape[:3] != guess.masks.shape[:3]:
        raise InputError(
            f"{guess.masks_path}: shape {guess.masks.shape} does not match the ground truth "
            f"{truth.masks_path} {truth.masks.shape}; expected the same images in the same order"
        )
    tissues = read_tissues(truth.types_path, truth.masks_path, truth.masks.shape[0])
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
    if match_iou != DEFAULT_MATCH_IOU:
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
        **_split_meta(chosen),
    }
    return EvaluationResult(
        metric="instance",
        summary={"mPQ": scores.mpq, "bPQ": scores.bpq},
        per_image=scores.per_image,
        tables={"per_class": scores.per_class, "per_tissue": scores.per_tissue},
        meta=meta,
        warnings=warnings,
        provenance=record_or_capture(provenance, true=true, pred=pred, split=split, match_iou=match_iou),
        scope=chosen.label if chosen else None,
    )


def _split_meta(choice: SplitChoice | None) -> dict[str, Any]:
    """``meta.split``/``meta.splits``: the split(s) of prepared data that were scored; None for other inputs."""
    return choice.to_meta() if choice else {"split": None, "splits": None}


__all__ = ["evaluate_instance", "evaluate_pannuke"]
