"""IHC positivity as pathologists score ER/PR/Ki-67: a DAB intensity class per nucleus and the H-score per image.

The DAB optical density ("OD") used everywhere in histostain is the **base-10 Beer-Lambert optical density of the
DAB stain**: the DAB coefficient of the Ruifrok-Johnston colour deconvolution with ``skimage.color``'s
haematoxylin / eosin / DAB vectors (``rgb2hed``), rescaled from skimage's units to base-10 OD with a white
reference of 255. ``rgb2hed`` divides the natural-log optical density by ``ln(1e6)`` before unmixing, so its
DAB channel times ``log10(1e6) = 6`` is the base-10 concentration of the (unit) DAB vector, the quantity QuPath's
positive-cell detection thresholds (0.2 / 0.4 / 0.6 by default). A nucleus' ``dab_od`` is the mean of that
per-pixel value over the nucleus' pixels.

Classes (``measurements["positivity"]``): 0 negative (``dab_od < t1``), 1 = 1+ weak (``t1 <= dab_od < t2``),
2 = 2+ moderate (``t2 <= dab_od < t3``), 3 = 3+ strong (``dab_od >= t3``). They live in a measurement column, not
in ``types``: type code 0 means background in every type map and in hover_net JSON, while a negative nucleus
is a nucleus. Per image, :func:`positivity_summary` gives the counts, the positive percentage (1+ to 3+ over all
scored nuclei) and the H-score ``1 x %1+ + 2 x %2+ + 3 x %3+`` (0..300), the same numbers as the segment
command's summary (:func:`histostain.segmentation.output_classes.ihc_summary`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from histostain.errors import ConfigError
from histostain.io.annotations.classes import IHC_CLASS_NAMES
from histostain.segmentation.nuclei import Nuclei

DEFAULT_THRESHOLDS: tuple[float, float, float] = (0.2, 0.4, 0.6)
DAB_OD = "dab_od"  # measurement column: mean DAB optical density of the nucleus (base-10, see module docstring)
POSITIVITY = "positivity"  # measurement column: 0 negative, 1 = 1+, 2 = 2+, 3 = 3+
OD_PER_SKIMAGE_UNIT = math.log10(1e6)  # rgb2hed's value x this = base-10 optical density


def check_thresholds(thresholds: Sequence[float]) -> tuple[float, float, float]:
    """Three finite, non-negative, strictly increasing DAB OD thresholds (1+, 2+, 3+), as floats."""
    values = tuple(float(t) for t in thresholds)
    if len(values) != 3 or not all(math.isfinite(t) and t >= 0 for t in values):
        raise ConfigError(
            f"positivity thresholds {list(thresholds)}: expected three non-negative DAB OD values for 1+, 2+, 3+",
            hint="e.g. 0.2,0.4,0.6 (the defaults)",
        )
    if not values[0] < values[1] < values[2]:
        raise ConfigError(
            f"positivity thresholds {list(values)}: must increase (1+ < 2+ < 3+)", hint="e.g. 0.2,0.4,0.6"
        )
    return values  # type: ignore[return-value]


def positivity_classes(dab_od: np.ndarray, thresholds: Sequence[float] = DEFAULT_THRESHOLDS) -> np.ndarray:
    """The intensity class 0..3 of each mean DAB OD: the number of thresholds it reaches (``>=``).

    Float64 like every measurement column, so that a non-finite OD (a nucleus nothing measured) stays NaN,
    "not scored", the convention of the chunk merge and of the output writers.
    """
    values = np.asarray(dab_od, dtype=np.float64)
    classes = np.searchsorted(np.asarray(check_thresholds(thresholds)), values, side="right").astype(np.float64)
    classes[~np.isfinite(values)] = np.nan
    return classes


def positivity_summary(nuclei: Nuclei) -> dict[str, float | int]:
    """Counts per intensity class, positive percentage and H-score of one image's IHC-scored nuclei.

    Keys: ``n`` (scored nuclei), one count per class name (``Negative``, ``1+``, ``2+``, ``3+``, QuPath's names),
    ``positive_percent`` = 100 x (1+ + 2+ + 3+) / n and ``h_score`` = 1 x %1+ + 2 x %2+ + 3 x %3+ (0..300). With
    no scored nucleus both are 0 (an empty tile is not "undefined" in a table of slides). Nuclei whose class is not
    a finite 0..3 are left out. Raises ``ValueError`` when the nuclei were not scored (no ``positivity`` column:
    H&E, or a segmenter without IHC scoring).
    """
    column = nuclei.measurements.get(POSITIVITY)
    if column is None:
        raise ValueError("these nuclei carry no IHC positivity (segment with stain='ihc')")
    values = np.asarray(column, dtype=np.float64)
    scored = values[np.isfinite(values) & (values >= 0) & (values <= 3)].astype(np.int64)
    n = len(scored)
    counts = np.bincount(scored, minlength=4)[:4]
    percent = 100.0 * counts / n if n else np.zeros(4)
    summary: dict[str, float | int] = {"n": n}
    summary.update({IHC_CLASS_NAMES[code]: int(counts[code]) for code in range(4)})
    summary["positive_percent"] = float(percent[1:].sum())
    summary["h_score"] = float(percent[1] + 2 * percent[2] + 3 * percent[3])
    return summary


__all__ = [
    "DAB_OD",
    "DEFAULT_THRESHOLDS",
    "OD_PER_SKIMAGE_UNIT",
    "POSITIVITY",
    "check_thresholds",
    "positivity_classes",
    "positivity_summary",
]
