"""The ``evaluate celldet`` service: annotation files paired by stem, read, and fed to the detection scorer.

Reading is :mod:`histostain.metrics.detection_sources`, scoring :class:`histostain.metrics.detection.DetectionScorer`
(the same scorer array callers use, so files and arrays give the same numbers). This module resolves the radius
(pixels, or micrometres with a resolution), pairs the sides and adds what only a file-based run knows: the
inputs, unmatched stems, the resolution and the provenance record.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from histostain.errors import ConfigError, InputError
from histostain.metrics.defaults import DEFAULT_COMPAT, DEFAULT_RADIUS
from histostain.metrics.detection import DetectionScorer, check_compat
from histostain.metrics.detection_sources import read_points, resolve_side
from histostain.metrics.pairing import listed, pair_by_stem
from histostain.metrics.report import EvaluationResult
from histostain.provenance import Provenance, record_or_capture

log = logging.getLogger(__name__)


def _resolve_radius(radius: float, radius_um: float | None, mpp: float | None) -> tuple[float, float | None]:
    """The matching radius in pixels and, when known, in micrometres."""
    if (radius_um is None) != (mpp is None):
        raise ConfigError(
            "--radius-um and --mpp go together",
            hint="give both (radius in px = radius_um / mpp; a prepared EndoNuke ground truth gives mpp itself), "
            "or give --radius in pixels",
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
    compat: str = DEFAULT_COMPAT,
    split: str | None = None,
    provenance: Provenance | None = None,
) -> EvaluationResult:
    """Cell-detection P/R/F1 of predicted centroids against ground truth, paired by file stem.

    ``true``/``pred``: a folder (or one file) of centroid txt, hover_net JSON, GeoJSON or CSV files; a hover_net
    output folder whose ``json/`` subfolder holds the files; on the true side also a prepared EndoNuke folder
    (``split``: one split, default test, or ``"all"`` to pool them; see :mod:`histostain.metrics.splits`).
    ``class_map`` maps ground-truth class codes, ``pred_class_map``
    prediction codes (e.g. EndoNuke 0/1/2 onto PanNuke types). ``thresholds`` adds a table of scores for
    predictions with score ``>= t``. ``compat="seed"`` reproduces the seed project's dummy points.
    ``provenance``: the caller's run record (the CLI's); without one the result records this call's arguments.
    """
    from histostain.runtime.progress import track

    check_compat(compat)
    warnings: list[str] = []
    true_side = None
    scale = mpp
    if radius_um is not None and mpp is None:  # a prepared ground truth records its um/px
        true_side = resolve_side(Path(true), "true", split, warnings)
        scale = true_side.mpp
    radius_px, radius_in_um = _resolve_radius(radius, radius_um, scale)
    record = record_or_capture(
        provenance,
        true=true,
        pred=pred,
        radius=radius,
        radius_um=radius_um,
        mpp=mpp,
        thresholds=thresholds,
        class_map=class_map,
        pred_class_map=pred_class_map,
        compat=compat,
        split=split,
    )
    # built before any input is read, so option errors come first
    scorer = DetectionScorer(
        radius_px, thresholds=thresholds or (), compat=compat, class_map=class_map, pred_class_map=pred_class_map
    )
    if true_side is None:
        true_side = resolve_side(Path(true), "true", split, warnings)
    pred_side = resolve_side(Path(pred), "pred", None, warnings)
    if true_side.class_names and not class_map:  # the dataset's names, unless its codes were mapped away
        scorer.class_names = true_side.class_names
    paired = pair_by_stem(
        true_side.files,
        pred_side.files,
        no_match=InputError(
            f"no file stem in {pred_side.source} matches one in {true_side.source}",
            hint="ground truth and predictions pair by file name without extension (e.g. 12.txt <-> 12.json)",
        ),
        single_files=true_side.kind == "file" and pred_side.kind == "file",
    )
    if paired.only_true:
        warnings.append(
            f"{len(paired.only_true)} ground-truth file(s) without a prediction, skipped: {listed(paired.only_true)}"
        )
    if paired.only_pred:
        warnings.append(
            f"{len(paired.only_pred)} prediction file(s) without ground truth, skipped: {listed(paired.only_pred)}"
        )
    for stem, true_path, pred_path in track(paired.matched, "Reading annotations", unit="image"):
        scorer.add(stem, read_points(true_path), read_points(pred_path))

    result = scorer.result(record)
    scored = result.meta
    mpp_used = mpp if mpp is not None else true_side.mpp
    meta: dict[str, Any] = {
        "radius_px": radius_px,
        "radius_um": radius_in_um if radius_in_um is not None else (radius_px * mpp_used if mpp_used else None),
        "mpp": mpp_used,
        "mpp_source": "option" if mpp is not None else ("manifest" if true_side.mpp else None),
        "matching": scored["matching"],
        "pooling": scored["pooling"],
        "compat": compat,
        "empty_images": scored["empty_images"],
        "true_source": true_side.source,
        "true_kind": true_side.kind,
        "pred_source": pred_side.source,
        "pred_kind": pred_side.kind,
        "n_images": scored["n_images"],
        "unmatched_true": paired.only_true,
        "unmatched_pred": paired.only_pred,
        "classes": scored["classes"],
        "class_weights": scored["class_weights"],
        "class_map": scored["class_map"],
        "pred_class_map": scored["pred_class_map"],
        "thresholds": scored["thresholds"],
        # the split(s) of a prepared ground truth that were scored (None: not a prepared folder)
        **(true_side.split.to_meta() if true_side.split else {"split": None, "splits": None}),
    }
    result.meta = meta
    result.scope = true_side.split.label if true_side.split else None
    result.warnings = warnings + result.warnings
    summary = result.summary
    log.info(
        "celldet: %d images, TP %s FP %s FN %s, F1 %.4f",
        summary["n_images"],
        summary["tp"],
        summary["fp"],
        summary["fn"],
        summary["f1"],
    )
    return result


__all__ = ["evaluate_celldet"]
