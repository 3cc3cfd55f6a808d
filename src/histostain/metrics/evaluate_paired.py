"""The ``evaluate paired`` service: two folders of images paired by stem, every pair scored, means over pairs.

The metrics themselves are :mod:`histostain.metrics.paired` (arrays in, numbers out); this module reads the
images, pairs them (:mod:`histostain.metrics.pairing`), refuses pairs of different sizes and aggregates.
"""

from __future__ import annotations

import logging
import math
import warnings as _warnings
from pathlib import Path
from typing import Any

import numpy as np

from histostain.errors import ConfigError, InputError
from histostain.metrics.paired import DEFAULT_METRICS, METRICS
from histostain.metrics.pairing import listed, pair_by_stem
from histostain.metrics.report import EvaluationResult
from histostain.provenance import Provenance, record_or_capture

log = logging.getLogger(__name__)


def _images_by_stem(folder: Path, role: str) -> dict[str, Path]:
    """The images of one side by stem, sorted by stem; two images with one stem are an error (which to pair?)."""
    from histostain.io.images import list_images

    found: dict[str, Path] = {}
    for path in list_images(folder):
        if path.stem in found:
            raise InputError(
                f"{role}: {found[path.stem].name} and {path.name} share the stem {path.stem!r}",
                hint="pairs are matched by file name without extension; keep one of them",
            )
        found[path.stem] = path
    return dict(sorted(found.items()))


def evaluate_paired(
    real: Path, fake: Path, *, metrics: list[str] | None = None, provenance: Provenance | None = None
) -> EvaluationResult:
    """Per-pair and mean PSNR/SSIM/MAE/Pearson/MS-GMSD/MDSI/HaarPSI of ``fake`` images against ``real`` ones.

    ``real``/``fake`` are folders (or single files) paired by file stem; unmatched stems are reported. Pairs
    must have the same size. The summary is the mean over pairs of each metric (PSNR over the finite values;
    identical pairs are counted in ``meta``). ``provenance``: the caller's run record (the CLI's); without one
    the result records this call's arguments.
    """
    from histostain.io.images import read_image
    from histostain.runtime.progress import track

    names = list(metrics) if metrics else list(DEFAULT_METRICS)
    unknown = [m for m in names if m not in METRICS]
    if unknown:
        raise ConfigError(f"unknown paired metric(s): {', '.join(unknown)}", hint=f"choose from {', '.join(METRICS)}")
    real, fake = Path(real), Path(fake)
    paired = pair_by_stem(
        _images_by_stem(real, "real"),
        _images_by_stem(fake, "fake"),
        no_match=InputError(
            f"no image stem in {fake} matches one in {real}",
            hint="real and fake images pair by file name without extension (e.g. 001.png <-> 001.jpg)",
        ),
        single_files=real.is_file() and fake.is_file(),
    )
    only_real, only_fake = paired.only_true, paired.only_pred
    warnings: list[str] = []
    if only_real:
        warnings.append(f"{len(only_real)} real image(s) without a fake, skipped: {listed(only_real)}")
    if only_fake:
        warnings.append(f"{len(only_fake)} fake image(s) without a real one, skipped: {listed(only_fake)}")

    rows: list[dict[str, Any]] = []
    resolutions: dict[str, int] = {}
    for stem, real_path, fake_path in track(paired.matched, "Comparing image pairs", unit="pair"):
        a, b = read_image(real_path), read_image(fake_path)
        if a.shape != b.shape:
            raise InputError(
                f"{fake_path}: {b.shape[1]}x{b.shape[0]} differs from {real_path} ({a.shape[1]}x{a.shape[0]})",
                hint="paired metrics need aligned images of the same size; resize or crop them first",
            )
        key = f"{a.shape[1]}x{a.shape[0]}"
        resolutions[key] = resolutions.get(key, 0) + 1
        row: dict[str, Any] = {"stem": stem, "width": a.shape[1], "height": a.shape[0]}
        for name in names:
            try:
                with _warnings.catch_warnings():
                    _warnings.simplefilter("ignore", RuntimeWarning)
                    row[name] = METRICS[name](a, b)
            except ValueError as exc:
                raise InputError(f"{real_path} / {fake_path}: {name}: {exc}") from exc
        rows.append(row)

    summary: dict[str, float | int | None] = {}
    identical = 0
    for name in names:
        values = np.array([row[name] for row in rows], dtype=np.float64)
        if name == "psnr":
            identical = int(np.count_nonzero(np.isinf(values)))
            values = values[np.isfinite(values)]
        finite = values[~np.isnan(values)]
        summary[name] = float(finite.mean()) if len(finite) else math.nan
    summary["n_pairs"] = len(rows)
    if identical:
        warnings.append(f"{identical} pair(s) are identical (PSNR infinite) and left out of the mean PSNR")
    undefined = {
        name: int(sum(1 for r in rows if isinstance(r[name], float) and math.isnan(r[name]))) for name in names
    }
    undefined = {k: v for k, v in undefined.items() if v}
    if undefined:
        warnings.append(f"undefined values (NaN, e.g. Pearson on a flat image) left out of the means: {undefined}")
    meta: dict[str, Any] = {
        "real": str(real),
        "fake": str(fake),
        "n_pairs": len(rows),
        "metrics": names,
        "resolutions": resolutions,
        "protocol": "BCI: uint8 RGB at full resolution; skimage PSNR (data_range 255) and SSIM (channel_axis=-1, "
        "data_range 255, uniform 7x7 window); mean over pairs",
        "identical_pairs": identical,
        "undefined": undefined,
        "unmatched_real": only_real,
        "unmatched_fake": only_fake,
        "direction": {
            "psnr": "higher is better",
            "ssim": "higher is better",
            "mae": "lower is better",
            "pearson": "higher is better",
            "ms_gmsd": "lower is better",
            "mdsi": "lower is better",
            "haarpsi": "higher is better",
        },
    }
    log.info("paired: %d pairs at %s", len(rows), ", ".join(resolutions))
    return EvaluationResult(
        metric="paired",
        summary=summary,
        per_image=rows,
        tables={},
        meta=meta,
        warnings=warnings,
        provenance=record_or_capture(provenance, real=real, fake=fake, metrics=names),
    )


__all__ = ["evaluate_paired"]
