"""IHC positivity: the intensity class of a mean DAB OD, and per-image positive % and H-score, by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from histostain.errors import ConfigError
from histostain.segmentation.nuclei import Nuclei
from histostain.segmentation.positivity import (
    OD_PER_SKIMAGE_UNIT,
    POSITIVITY,
    check_thresholds,
    positivity_classes,
    positivity_summary,
)
from histostain.segmentation.postprocess import nuclei_from_labels


def _nuclei_with(classes: list[float]) -> Nuclei:
    labels = np.zeros((8, 4 * max(len(classes), 1)), np.int32)
    for i in range(len(classes)):
        labels[2:6, 4 * i : 4 * i + 3] = i + 1
    nuclei = nuclei_from_labels(labels, mpp=0.5)
    nuclei.measurements[POSITIVITY] = np.asarray(classes, dtype=np.float64)
    return nuclei


def test_dab_od_is_the_base10_beer_lambert_density() -> None:
    """A pixel of pure DAB at base-10 optical density d transmits 10^(-d x v) of white per channel, v being
    skimage's DAB colour vector; colour deconvolution must give d back."""
    from skimage.color import rgb_from_hed

    from histostain.segmentation.classical import optical_densities

    for d in (0.2, 0.5, 1.0):
        pixel = 255 * 10 ** (-d * rgb_from_hed[2])
        od = optical_densities(np.full((2, 2, 3), pixel / 255.0))
        assert od[0, 0, 2] == pytest.approx(d, abs=1e-4) and abs(od[0, 0, 0]) < 1e-4
    assert pytest.approx(math.log(1e6) / math.log(10)) == OD_PER_SKIMAGE_UNIT


def test_classes_count_the_thresholds_reached() -> None:
    od = [0.0, 0.199, 0.2, 0.399, 0.4, 0.6, 2.5, np.nan]
    classes = positivity_classes(od, (0.2, 0.4, 0.6))
    np.testing.assert_array_equal(classes[:-1], [0, 0, 1, 1, 2, 3, 3])
    assert np.isnan(classes[-1])  # an unmeasured nucleus stays unscored


def test_summary_positive_percent_and_h_score_by_hand() -> None:
    # 10 nuclei: 4 negative, 3 weak, 2 moderate, 1 strong (one NaN row is not scored)
    summary = positivity_summary(_nuclei_with([0, 0, 0, 0, 1, 1, 1, 2, 2, 3, np.nan]))
    assert summary["n"] == 10
    assert (summary["Negative"], summary["1+"], summary["2+"], summary["3+"]) == (4, 3, 2, 1)
    assert summary["positive_percent"] == pytest.approx(60.0)
    assert summary["h_score"] == pytest.approx(1 * 30 + 2 * 20 + 3 * 10)  # 100


def test_summary_extremes() -> None:
    assert positivity_summary(_nuclei_with([3, 3, 3]))["h_score"] == pytest.approx(300.0)
    empty = positivity_summary(_nuclei_with([]))
    assert empty["n"] == 0 and empty["positive_percent"] == 0.0 and empty["h_score"] == 0.0


def test_unscored_nuclei_are_an_error_not_a_zero() -> None:
    nuclei = _nuclei_with([0, 1])
    del nuclei.measurements[POSITIVITY]
    with pytest.raises(ValueError, match="no IHC positivity"):
        positivity_summary(nuclei)


@pytest.mark.parametrize(
    "thresholds", [(0.2, 0.4), (0.4, 0.2, 0.6), (0.2, 0.2, 0.6), (-0.1, 0.4, 0.6), (0, 1, math.inf)]
)
def test_bad_thresholds(thresholds: tuple[float, ...]) -> None:
    with pytest.raises(ConfigError):
        check_thresholds(thresholds)
