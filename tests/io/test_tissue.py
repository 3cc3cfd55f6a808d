"""Tissue detection (histostain.io.tissue) on the fabricated mosaic slide with known glass cells."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from histostain.errors import InputError
from histostain.io.slides import open_slide
from histostain.io.tissue import detect_tissue, load_tissue_mask, tissue_mask
from tests.io.slides_fixtures import CELL, COLS, ROWS, make_mosaic, mosaic_truth, write_svs


@pytest.fixture(scope="module")
def svs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_svs(tmp_path_factory.mktemp("tissue") / "mosaic.svs", make_mosaic()[0])


def cell_fractions(mask: np.ndarray) -> np.ndarray:
    """Tissue fraction per mosaic cell of a mask covering the whole mosaic at any integer downsample."""
    rows, cols = mask.shape[0] // ROWS, mask.shape[1] // COLS
    return mask.reshape(ROWS, rows, COLS, cols).mean(axis=(1, 3))


def test_mask_marks_tissue_cells_not_glass(svs: Path) -> None:
    _, layout = make_mosaic()
    with open_slide(svs) as slide:
        found = tissue_mask(slide)
    assert found.mask.shape == (1536, 2048)  # level 1 (512 px) is under ~1,000 px, so level 0 is used
    assert found.downsample == 1.0
    fractions = cell_fractions(found.mask)
    assert (fractions[~layout] <= 0.03).all(), fractions
    assert (fractions[layout] >= 0.4).all(), fractions
    assert (found.mask == mosaic_truth()).mean() >= 0.9


def test_covers(svs: Path) -> None:
    with open_slide(svs) as slide:
        found = tissue_mask(slide, max_side=512)
    assert found.mask.shape == (384, 512) and found.downsample == 4.0
    assert not found.covers(0, 0, 2 * CELL, CELL)  # the glass corner
    assert not found.covers(7 * CELL + 20, 2 * CELL + 20, 200, 3 * CELL)  # the glass strip on the right
    assert found.covers(4 * CELL, 4 * CELL, CELL, CELL)
    assert found.covers(2 * CELL - 56, 0, 64, 64)  # mostly glass but reaching 8 px into tissue: over 5%
    assert not found.covers(2 * CELL - 56, 0, 64, 64, min_fraction=0.5)
    assert not found.covers(5000, 5000, 100, 100)  # off the slide
    assert not found.covers(0, 0, 0, 10)


def test_all_glass_is_empty() -> None:
    rng = np.random.default_rng(0)
    glass = np.clip(rng.normal((238, 236, 241), 2, size=(600, 800, 3)), 0, 255).astype(np.uint8)
    assert detect_tissue(glass).mean() < 0.01


def test_user_mask_scaled_to_slide(svs: Path, tmp_path: Path) -> None:
    _, layout = make_mosaic()
    png = tmp_path / "mask.png"
    Image.fromarray(np.kron(layout, np.ones((10, 10), dtype=bool)).astype(np.uint8) * 255).save(png)  # 80 x 60
    with open_slide(svs) as slide:
        user = load_tissue_mask(png, slide)
        assert user.downsample == pytest.approx(2048 / 80)
        for r in range(ROWS):
            for c in range(COLS):
                assert user.covers(c * CELL + 16, r * CELL + 16, CELL - 32, CELL - 32) == layout[r, c]

        wrong = tmp_path / "square.png"
        Image.fromarray(np.full((50, 50), 255, dtype=np.uint8)).save(wrong)
        with pytest.raises(InputError, match="aspect"):
            load_tissue_mask(wrong, slide)
        blank = tmp_path / "blank.png"
        Image.fromarray(np.zeros((60, 80), dtype=np.uint8)).save(blank)
        with pytest.raises(InputError, match="no tissue"):
            load_tissue_mask(blank, slide)
