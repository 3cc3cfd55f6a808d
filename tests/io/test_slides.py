"""Whole-slide reading (histostain.io.slides) on slides fabricated with tifffile in tests/io/slides_fixtures.py."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import tifffile

from histostain.errors import InputError
from histostain.io import slides
from histostain.io.slides import OPENSLIDE_HINT, is_slide, open_slide
from tests.io.slides_fixtures import (
    downscale,
    large_expected,
    make_mosaic,
    write_large_tiff,
    write_ome_tiff,
    write_pyramid_tiff,
    write_svs,
)

LEVELS = [(1536, 2048), (384, 512), (96, 128)]


@pytest.fixture(scope="module")
def mosaic() -> np.ndarray:
    return make_mosaic()[0]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory, mosaic: np.ndarray) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("slides")
    return {
        "svs": write_svs(folder / "mosaic.svs", mosaic),
        "ome": write_ome_tiff(folder / "mosaic.ome.tif", mosaic),
        "tiff": write_pyramid_tiff(folder / "mosaic.tif", mosaic),
        "svs_no_mpp": write_svs(folder / "nompp.svs", mosaic, mpp=None),
    }


def mean_abs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def expected_region(image: np.ndarray, x: int, y: int, width: int, height: int) -> np.ndarray:
    """What read_region must return at level 0: the image's pixels, white outside it."""
    out = np.full((height, width, 3), 255, dtype=np.uint8)
    h, w = image.shape[:2]
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + width, w), min(y + height, h)
    if x1 > x0 and y1 > y0:
        out[y0 - y : y1 - y, x0 - x : x1 - x] = image[y0:y1, x0:x1]
    return out


@pytest.mark.parametrize(("kind", "fmt"), [("svs", "aperio"), ("ome", "ome"), ("tiff", "tiff")])
def test_metadata_read_back(files: dict[str, Path], kind: str, fmt: str) -> None:
    with open_slide(files[kind]) as slide:
        assert slide.format == fmt
        assert slide.levels == LEVELS
        assert slide.downsamples == [1.0, 4.0, 16.0]
        assert slide.mpp == pytest.approx(0.25)
        assert slide.path == files[kind]


REGIONS = [
    (0, 0, 2048, 1536),  # the whole level
    (100, 37, 300, 411),  # crosses tile borders both ways
    (255, 255, 2, 2),  # four tiles meet
    (1900, 1400, 300, 300),  # over the right and bottom edges: padded white
    (-50, -20, 100, 80),  # over the top-left corner
    (5000, 5000, 16, 16),  # entirely outside
]


@pytest.mark.parametrize("kind", ["ome", "tiff"])
@pytest.mark.parametrize("region", REGIONS)
def test_level0_lossless_exact(files: dict[str, Path], mosaic: np.ndarray, kind: str, region: tuple) -> None:
    with open_slide(files[kind]) as slide:
        got = slide.read_region(*region)
    assert got.dtype == np.uint8 and got.shape == (region[3], region[2], 3)
    np.testing.assert_array_equal(got, expected_region(mosaic, *region))


@pytest.mark.parametrize("region", REGIONS)
def test_level0_svs_within_jpeg_error(files: dict[str, Path], mosaic: np.ndarray, region: tuple) -> None:
    with open_slide(files["svs"]) as slide:
        got = slide.read_region(*region)
    expected = expected_region(mosaic, *region)
    assert got.shape == expected.shape
    assert mean_abs(got, expected) < 4.0
    outside = expected_region(np.zeros_like(mosaic), *region) == 255  # pixels off the slide must be pure white
    assert (got[outside] == 255).all()


@pytest.mark.parametrize("kind", ["svs", "ome"])
def test_lower_levels_match_downscaled_mosaic(files: dict[str, Path], mosaic: np.ndarray, kind: str) -> None:
    tolerance = 6.0 if kind == "svs" else 0.5
    with open_slide(files[kind]) as slide:
        for level, factor in ((1, 4), (2, 16)):
            small = downscale(mosaic, factor)
            whole = slide.read_region(0, 0, small.shape[1], small.shape[0], level=level)
            assert mean_abs(whole, small) < tolerance
        # (x, y) stay level-0 coordinates at any level, as in OpenSlide; the size is in the level's pixels
        part = slide.read_region(800, 400, 100, 50, level=1)
        assert mean_abs(part, downscale(mosaic, 4)[100:150, 200:300]) < tolerance


@pytest.mark.parametrize(
    ("target", "level", "residual"),
    [(0.25, 0, 1.0), (1.0, 1, 1.0), (4.0, 2, 1.0), (0.5, 0, 2.0), (2.0, 1, 2.0), (8.0, 2, 2.0), (0.125, 0, 0.5)],
)
def test_best_level(files: dict[str, Path], target: float, level: int, residual: float) -> None:
    with open_slide(files["svs"]) as slide:
        got_level, got_residual = slide.best_level(target)
    assert got_level == level
    assert got_residual == pytest.approx(residual)


def test_mpp_override_and_missing_mpp(files: dict[str, Path]) -> None:
    with open_slide(files["svs"], mpp=0.5) as slide:
        assert slide.mpp == 0.5
        assert slide.best_level(1.0) == (0, pytest.approx(2.0))
        assert slide.best_level(2.0) == (1, pytest.approx(1.0))
    with open_slide(files["svs_no_mpp"]) as slide:
        assert slide.mpp is None
        with pytest.raises(InputError) as info:
            slide.best_level(0.5)
        assert "--mpp" in info.value.one_line()
    with open_slide(files["svs_no_mpp"], mpp=0.25) as slide:
        assert slide.best_level(1.0) == (1, 1.0)
    with pytest.raises(InputError):
        open_slide(files["svs"], mpp=-1.0)


def test_thumbnail_from_smallest_level(files: dict[str, Path], mosaic: np.ndarray) -> None:
    with open_slide(files["ome"]) as slide:
        thumb = slide.thumbnail(64)
        assert thumb.shape == (48, 64, 3)
        assert mean_abs(thumb, downscale(mosaic, 32)) < 3.0
        assert slide.thumbnail(1024).shape == (96, 128, 3)  # never enlarged beyond the smallest level


def test_scaled_read_in_chunks_matches_whole(files: dict[str, Path], mosaic: np.ndarray, monkeypatch) -> None:
    monkeypatch.setattr(slides, "SCALED_READ_CHUNK", 512)  # several chunks on the 2048 x 1536 level 0
    with open_slide(files["ome"]) as slide:
        scaled = slide.read_level_scaled(0, 512)
    assert scaled.shape == (384, 512, 3)
    assert mean_abs(scaled, downscale(mosaic, 4)) < 0.5


def test_svs_leaves_out_thumbnail_label_and_macro(files: dict[str, Path]) -> None:
    with tifffile.TiffFile(files["svs"]) as tif:
        assert len(tif.pages) == 6  # level 0, thumbnail, 1/4, 1/16, label, macro
    with open_slide(files["svs"]) as slide:
        assert len(slide.levels) == 3


def test_vendor_format_without_openslide_is_one_line_hint(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(slides, "_import_openslide", lambda: None)
    for name in ("slide.mrxs", "slide.ndpi", "slide.vms", "slide.scn", "slide.bif"):
        path = tmp_path / name
        path.write_bytes(b"vendor data")
        with pytest.raises(InputError) as info:
            open_slide(path)
        line = info.value.one_line()
        assert "slides need OpenSlide" in line and str(path) in line
        assert OPENSLIDE_HINT in line
        assert "\n" not in line


def test_damaged_files_are_one_line_errors(tmp_path: Path, files: dict[str, Path]) -> None:
    garbage = tmp_path / "garbage.svs"
    garbage.write_bytes(b"this is not a slide" * 100)
    with pytest.raises(InputError) as info:
        open_slide(garbage)
    assert "garbage.svs" in info.value.one_line()

    data = files["ome"].read_bytes()
    truncated = tmp_path / "truncated.ome.tif"
    truncated.write_bytes(data[: len(data) // 2])
    # at open, or at the latest when a missing tile is read
    with pytest.raises(InputError) as info, open_slide(truncated) as slide:
        slide.read_region(0, 0, *slide.levels[0][::-1])
    assert "truncated.ome.tif" in info.value.one_line()

    empty = tmp_path / "empty.svs"
    empty.write_bytes(b"")
    with pytest.raises(InputError, match="empty"):
        open_slide(empty)
    with pytest.raises(InputError, match="does not exist"):
        open_slide(tmp_path / "missing.svs")


def test_corrupt_tile_is_one_line_error(tmp_path: Path, mosaic: np.ndarray) -> None:
    path = write_ome_tiff(tmp_path / "corrupt.ome.tif", mosaic)
    with tifffile.TiffFile(path) as tif:
        offset, count = tif.pages[0].dataoffsets[5], tif.pages[0].databytecounts[5]
    data = bytearray(path.read_bytes())
    data[offset : offset + count] = b"\x00" * count  # a zlib stream of zeros does not decode
    path.write_bytes(bytes(data))
    with open_slide(path) as slide:
        slide.read_region(0, 0, 256, 256)  # tile 0 is fine
        with pytest.raises(InputError, match="tile 5 of level 0"):
            slide.read_region(5 * 256, 0, 256, 256)


def test_bad_arguments(files: dict[str, Path]) -> None:
    with open_slide(files["ome"]) as slide:
        with pytest.raises(ValueError, match="level 3"):
            slide.read_region(0, 0, 10, 10, level=3)
        with pytest.raises(ValueError):
            slide.best_level(0)
        assert slide.read_region(10, 10, 0, 5).shape == (5, 0, 3)


def test_is_slide(tmp_path: Path, files: dict[str, Path]) -> None:
    assert is_slide(files["svs"])
    assert is_slide(tmp_path / "not-yet-written.ndpi")  # by extension alone
    assert not is_slide(files["ome"])  # a 2048-px pyramid is an image, not a slide
    png = tmp_path / "tile.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n")
    assert not is_slide(png)
    assert not is_slide(tmp_path / "missing.tif")

    big = tmp_path / "big.tif"  # a tiled pyramid wider than 10,000 px: cheap to write, one flat colour
    tile = np.full((256, 256, 3), 230, dtype=np.uint8)
    opts = {"photometric": "rgb", "compression": "zlib", "metadata": None, "dtype": np.uint8, "tile": (256, 256)}
    with tifffile.TiffWriter(big) as tw:
        tw.write((tile for _ in range(48)), shape=(256, 12288, 3), **opts)
        tw.write((tile for _ in range(12)), shape=(64, 3072, 3), subfiletype=1, **opts)
    assert is_slide(big)
    with open_slide(big) as slide:
        assert slide.format == "tiff" and slide.levels == [(256, 12288), (64, 3072)] and slide.mpp is None


def test_region_memory_does_not_depend_on_slide_size(tmp_path: Path) -> None:
    path = write_large_tiff(tmp_path / "large.tif", side=8192)  # 192 MB of pixels if decoded whole
    tracemalloc.start()
    try:
        with open_slide(path) as slide:
            assert slide.levels == [(8192, 8192)]
            region = slide.read_region(3000, 5000, 512, 512)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 50 * 2**20, f"peak {peak / 2**20:.1f} MB"
    assert mean_abs(region, large_expected(3000, 5000, 512, 512)) < 4.0


def test_openslide_backend_reads_the_svs(files: dict[str, Path], mosaic: np.ndarray) -> None:
    openslide = pytest.importorskip("openslide")
    slide = slides.OpenSlideSlide(files["svs"], openslide.OpenSlide(str(files["svs"])), None)
    with slide:
        assert slide.levels == LEVELS
        assert slide.mpp == pytest.approx(0.25)
        assert mean_abs(slide.read_region(100, 37, 300, 411), mosaic[37:448, 100:400]) < 4.0
