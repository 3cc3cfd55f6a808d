"""The class each nucleus is shown as in the segment outputs, and the counts and IHC scores of summary.csv.

One rule, so the overlay, its legend, the QuPath classification and the summary agree:

* nuclei scored for IHC positivity (``nuclei.measurements["positivity"]``, 0..3) are shown by their intensity
  class, Negative / 1+ / 2+ / 3+ (QuPath's own class names), because on an IHC slide that is the result;
* otherwise typed nuclei are shown by their type, named by ``nuclei.type_names`` (PanNuke names when the
  segmenter gives none) and coloured from the vocabulary palette (EndoNuke names with EndoNuke colours);
* otherwise a nucleus has no class. A type code without a name whose palette colour is background (0) is
  "no class" too: hover_net gives type 0 to a nucleus whose pixels all voted background.

The model's type stays what the JSON, txt and TIFF outputs store; this module only decides how it is shown.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from histostain.io.annotations import IHC_CLASS_COLOURS, IHC_CLASS_NAMES, class_colour, colours_for_names
from histostain.segmentation.nuclei import Nuclei
from histostain.vocabulary import PANNUKE_TYPE_NAMES, RGB

POSITIVITY = "positivity"  # the measurement column of IHC intensity scores 0..3
UNCLASSIFIED = "Unclassified"  # QuPath's name for objects without a class
NO_CLASS = -1


@dataclass(frozen=True)
class OutputClasses:
    """Per nucleus its class code (``NO_CLASS`` for none), and every class' name and colour in legend order."""

    kind: str  # "positivity", "type" or "none"
    codes: np.ndarray  # (n,) int64
    names: dict[int, str]
    colours: dict[int, RGB]

    def name(self, code: int) -> str | None:
        """The class name of a code (a code without a name is written as its number); None for no class."""
        if code == NO_CLASS:
            return None
        return self.names.get(code, str(code))

    def counts(self) -> dict[int, int]:
        """Nuclei per class: every named class (zeros included, so every image lists the same classes), then
        unnamed codes that occur, then ``NO_CLASS`` when some nucleus has none."""
        present, numbers = np.unique(self.codes, return_counts=True)
        found = dict(zip(present.tolist(), numbers.tolist(), strict=True))
        counts = {code: int(found.get(code, 0)) for code in self.names}
        counts.update({code: int(n) for code, n in found.items() if code not in counts and code != NO_CLASS})
        if NO_CLASS in found:
            counts[NO_CLASS] = int(found[NO_CLASS])
        return counts


def positivity_scores(nuclei: Nuclei) -> np.ndarray | None:
    """The IHC intensity score 0..3 of every nucleus (``NO_CLASS`` where it is not finite), or None."""
    column = nuclei.measurements.get(POSITIVITY)
    if column is None:
        return None
    values = np.asarray(column, dtype=np.float64)
    scores = np.full(values.shape, NO_CLASS, dtype=np.int64)
    finite = np.isfinite(values)
    scores[finite] = np.clip(np.rint(values[finite]), 0, 3).astype(np.int64)
    return scores


def type_names_of(nuclei: Nuclei) -> Mapping[int, str]:
    """The names of the type codes: the segmenter's, else PanNuke's (the default of every histostain model)."""
    return nuclei.type_names if nuclei.type_names is not None else PANNUKE_TYPE_NAMES


def output_classes(nuclei: Nuclei) -> OutputClasses:
    """The class of every nucleus by the module's rule (positivity, else type, else none)."""
    scores = positivity_scores(nuclei)
    if scores is not None:
        return OutputClasses(POSITIVITY, scores, dict(IHC_CLASS_NAMES), dict(IHC_CLASS_COLOURS))
    if nuclei.types is None:
        return OutputClasses("none", np.full(len(nuclei), NO_CLASS, dtype=np.int64), {}, {})
    names = dict(sorted(type_names_of(nuclei).items()))
    colours = colours_for_names(names)
    codes = np.asarray(nuclei.types, dtype=np.int64).copy()
    codes[(codes <= 0) & ~np.isin(codes, list(names))] = NO_CLASS  # unnamed background votes: no class
    for code in np.unique(codes).tolist():
        if code != NO_CLASS:
            colours.setdefault(code, class_colour(code, colours))
    return OutputClasses("type", codes, names, colours)


def ihc_scores(counts: Mapping[int, int]) -> dict[str, float | int]:
    """Counts per intensity class, positive % and H-score from the number of scored nuclei per score 0..3.

    Positive % is the share of scored nuclei with score >= 1; H-score = 1 x %1+ + 2 x %2+ + 3 x %3+ (0..300);
    with no scored nucleus both are 0. Split from :func:`ihc_summary` so a whole slide can add its chunks' counts.
    """
    total = sum(int(counts.get(code, 0)) for code in IHC_CLASS_NAMES)
    percent = {code: 100.0 * int(counts.get(code, 0)) / total if total else 0.0 for code in IHC_CLASS_NAMES}
    return {
        **{name: int(counts.get(code, 0)) for code, name in IHC_CLASS_NAMES.items()},
        "positive_percent": round(float(percent[1] + percent[2] + percent[3]), 4),
        "h_score": round(float(percent[1] + 2 * percent[2] + 3 * percent[3]), 4),
    }


def ihc_counts(nuclei: Nuclei) -> dict[int, int] | None:
    """Scored nuclei per intensity score 0..3 (nuclei whose score is not finite are left out); None when nothing
    was scored."""
    scores = positivity_scores(nuclei)
    if scores is None:
        return None
    return {code: int(np.count_nonzero(scores == code)) for code in IHC_CLASS_NAMES}


def ihc_summary(nuclei: Nuclei) -> dict[str, float | int] | None:
    """Counts per intensity class, positive % and H-score of IHC-scored nuclei (:func:`ihc_scores`); None when
    nothing was scored."""
    counts = ihc_counts(nuclei)
    return None if counts is None else ihc_scores(counts)


__all__ = [
    "NO_CLASS",
    "POSITIVITY",
    "UNCLASSIFIED",
    "OutputClasses",
    "ihc_counts",
    "ihc_scores",
    "ihc_summary",
    "output_classes",
    "positivity_scores",
    "type_names_of",
]
