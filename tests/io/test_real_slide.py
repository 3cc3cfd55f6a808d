"""The real Aperio slide CMU-1-Small-Region.svs (OpenSlide test data, CC0; tests/data/slides/README.md): its
metadata, lazily read regions equal to tifffile's decode of the whole page, and a tissue mask that keeps the
tissue and drops the glass."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from histostain.io.slides import is_slide, open_slide
from histostain.io.tissue import tissue_mask

SLIDE = Path(__file__).resolve().parents[1] / "data" / "slides" / "CMU-1-Small-Region.svs"


@pytest.fixture(scope="module")
def level0() -> np.ndarray:
    with tifffile.TiffFile(SLIDE) as tif:
        return tif.pages[0].asarray()


def test_metadata_of_the_real_slide() -> None:
    assert is_slide(SLIDE)
    with open_slide(SLIDE) as slide:
        assert slide.format == "aperio"
        assert slide.levels == [(2967, 2220)]  # one level; thumbnail, label and macro pages are not levels
        assert slide.mpp == pytest.approx(0.499)
        level, factor = slide.best_level(1.0)
        assert level == 0 and factor == pytest.approx(1.0 / 0.499)


@pytest.mark.parametrize(("x", "y", "w", "h"), [(0, 0, 240, 240), (1000, 1500, 512, 300), (2100, 2900, 200, 150)])
def test_regions_equal_the_decoded_page(level0: np.ndarray, x: int, y: int, w: int, h: int) -> None:
    with open_slide(SLIDE) as slide:
        region = slide.read_region(x, y, w, h)
    assert region.shape == (h, w, 3) and region.dtype == np.uint8
    inside = level0[y : y + h, x : x + w]
    np.testing.assert_array_equal(region[: inside.shape[0], : inside.shape[1]], inside)
    assert (region[inside.shape[0] :] == 255).all() and (region[:, inside.shape[1] :] == 255).all()  # past the edge


def test_tissue_mask_keeps_tissue_and_drops_glass() -> None:
    with open_slide(SLIDE) as slide:
        mask = tissue_mask(slide)
    assert 0.25 < mask.mask.mean() < 0.55  # a strip of skin on glass (looked at: docs/slides.md)
    assert not mask.covers(0, 2200, 300, 300)  # glass at the left edge, lower half
    assert mask.covers(900, 1800, 300, 300)  # the epidermis in the middle
