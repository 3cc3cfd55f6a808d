"""The pyramidal OME-TIFF writer: raster files, 2x levels, what open_slide / tifffile read back, determinism."""

from __future__ import annotations

import hashlib
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import tifffile

from histostain.errors import ConfigError
from histostain.io import ome_writer
from histostain.io.ome_writer import (
    RasterFile,
    build_levels,
    check_compression,
    downscale2,
    iter_tiles,
    pyramid_shapes,
    write_array_pyramid,
)
from histostain.io.slides import open_slide
from tests.io.slides_fixtures import make_mosaic


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Smooth colour ramps plus noise: compressible like tissue, but every pixel differs."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([(xx * 255 // max(1, w - 1)), (yy * 255 // max(1, h - 1)), ((xx + yy) % 256)], axis=-1)
    return np.clip(base + rng.integers(-20, 21, (h, w, 3)), 0, 255).astype(np.uint8)


def _formula(pixels: np.ndarray) -> np.ndarray:
    h, w = pixels.shape[0] // 2, pixels.shape[1] // 2
    p = pixels[: 2 * h, : 2 * w].astype(np.uint16)
    return ((p[0::2, 0::2] + p[1::2, 0::2] + p[0::2, 1::2] + p[1::2, 1::2] + 2) // 4).astype(np.uint8)


def test_raster_file_round_trip_partial_rows_and_reopen(tmp_path: Path) -> None:
    image = _image(37, 53)
    with RasterFile(tmp_path / "r.raw", 37, 53) as raster:
        raster.write(0, 0, image[:, :20])  # partial rows
        raster.write(0, 20, image[:, 20:])
        assert np.array_equal(raster.read(0, 0, 37, 53), image)
        assert np.array_equal(raster.read(5, 7, 11, 13), image[5:16, 7:20])
        with pytest.raises(ValueError, match="outside"):
            raster.write(30, 50, image[:2, :4])
    with RasterFile(tmp_path / "r.raw", 37, 53) as again:  # a resumed run keeps what was written
        assert np.array_equal(again.read(0, 0, 30, 53), image[:30])
    with RasterFile(tmp_path / "r.raw", 10, 10) as other:  # another size starts blank
        assert (other.read(0, 0, 10, 10) == 0).all()


def test_pyramid_shapes_halve_until_the_longer_side_fits() -> None:
    assert pyramid_shapes(5000, 3001) == [(5000, 3001), (2500, 1500), (1250, 750), (625, 375)]
    assert pyramid_shapes(1024, 700) == [(1024, 700)]
    assert pyramid_shapes(1025, 3) == [(1025, 3), (512, 1)]


@pytest.mark.parametrize("shape", [(64, 64), (37, 91), (3, 5)])
def test_downscale2_is_the_exact_2x_area_average(shape: tuple[int, int]) -> None:
    image = _image(*shape, seed=3)
    assert np.array_equal(downscale2(image), _formula(image))


def test_levels_built_band_by_band_equal_the_whole_image_average(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ome_writer, "BAND_BYTES", 64 * 1024)  # many bands per level on a small image
    image = _image(2100, 1300, seed=5)
    with RasterFile(tmp_path / "level0.raw", *image.shape[:2]) as base:
        base.write(0, 0, image)
        levels = build_levels(base, tmp_path, progress=False)
        assert [(lv.height, lv.width) for lv in levels] == [(2100, 1300), (1050, 650), (525, 325)]
        expected = image
        for level in levels[1:]:
            expected = _formula(expected)
            assert np.array_equal(level.read(0, 0, level.height, level.width), expected)
            level.close()


def test_iter_tiles_pads_edges_by_repetition_in_row_major_order(tmp_path: Path) -> None:
    image = _image(600, 700)
    with RasterFile(tmp_path / "r.raw", 600, 700) as raster:
        raster.write(0, 0, image)
        tiles = list(iter_tiles(raster, 512))
    assert len(tiles) == 4 and all(t.shape == (512, 512, 3) for t in tiles)
    assert np.array_equal(tiles[1][:, :188], image[:512, 512:])
    assert np.array_equal(tiles[1][:, 188:], np.repeat(image[:512, 699:700], 324, axis=1))
    assert np.array_equal(tiles[2][:88], image[512:, :512])


@pytest.fixture(scope="module")
def source() -> np.ndarray:
    return _image(1500, 2300, seed=7)


@pytest.fixture(scope="module")
def lossless(source: np.ndarray, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("ome")
    return write_array_pyramid(folder / "x.ome.tif", source, folder / "scratch", mpp=0.25, compression="zlib")


def test_lossless_pyramid_opens_with_open_slide_at_every_level(lossless: Path, source: np.ndarray) -> None:
    slide = open_slide(lossless)
    try:
        assert slide.format == "ome"
        assert slide.levels == [(1500, 2300), (750, 1150), (375, 575)]
        assert slide.mpp == pytest.approx(0.25)
        assert np.array_equal(slide.read_region(0, 0, 2300, 1500), source)  # level 0: exactly
        level1 = slide.read_region(0, 0, 1150, 750, level=1)
        assert np.array_equal(level1, _formula(source))  # a 2x area downscale
        level2 = slide.read_region(0, 0, 575, 375, level=2)
        assert np.array_equal(level2, _formula(_formula(source)))
    finally:
        slide.close()


def test_layout_is_a_tiled_subifd_pyramid_with_ome_physical_size(lossless: Path) -> None:
    with tifffile.TiffFile(lossless) as tif:
        assert tif.is_ome
        series = tif.series[0]
        assert [lv.shape for lv in series.levels] == [(1500, 2300, 3), (750, 1150, 3), (375, 575, 3)]
        first = tif.pages.first
        assert first.is_tiled and (first.tilelength, first.tilewidth) == (512, 512)
        assert first.photometric == tifffile.PHOTOMETRIC.RGB and first.compression == tifffile.COMPRESSION.ADOBE_DEFLATE
        assert len(first.subifds or ()) == 2  # sub-resolutions are SubIFDs of level 0, not pages
        assert len(tif.pages) == 1
        sub = series.levels[1].keyframe
        assert sub.subfiletype == 1 and sub.is_tiled
        resolution = first.tags["XResolution"].value
        assert resolution[0] / resolution[1] == pytest.approx(1e4 / 0.25)  # pixels per cm
        pixels = next(e for e in ET.fromstring(tif.ome_metadata).iter() if e.tag.endswith("Pixels"))
        assert float(pixels.get("PhysicalSizeX")) == 0.25 and float(pixels.get("PhysicalSizeY")) == 0.25
        assert pixels.get("PhysicalSizeXUnit") == "µm" and pixels.get("PhysicalSizeYUnit") == "µm"
        assert series.levels[1].asarray().shape == (750, 1150, 3)


def test_jpeg_pyramid_of_tissue_is_close_and_much_smaller(tmp_path: Path) -> None:
    tissue, _ = make_mosaic()
    lossless = write_array_pyramid(tmp_path / "z.ome.tif", tissue, tmp_path / "s", mpp=0.25, compression="zlib")
    path = write_array_pyramid(tmp_path / "j.ome.tif", tissue, tmp_path / "s", mpp=0.25, compression="jpeg")
    assert path.stat().st_size < lossless.stat().st_size / 3
    with tifffile.TiffFile(path) as tif:
        assert tif.pages.first.compression == tifffile.COMPRESSION.JPEG
        level0 = tif.series[0].levels[0].asarray()
        level1 = tif.series[0].levels[1].asarray()
    error = np.abs(level0.astype(float) - tissue).mean()
    # quality 90 with 4:2:0 chroma, as scanners write: measured 2.4 levels at level 0, 3.2 at level 1 (denser
    # detail per pixel); the file is 7x smaller than zlib
    assert error < 3.0, error
    assert np.abs(level1.astype(float) - _formula(tissue)).mean() < 4.0


def test_output_bytes_are_deterministic(source: np.ndarray, tmp_path: Path) -> None:
    digests = set()
    for name in ("a", "b"):
        path = write_array_pyramid(
            tmp_path / name / "x.ome.tif", source[:700, :900], tmp_path / name / "s", mpp=0.5, identity="same"
        )
        digests.add(hashlib.sha256(path.read_bytes()).hexdigest())
    assert len(digests) == 1


def test_unknown_pixel_size_writes_no_physical_size(tmp_path: Path) -> None:
    path = write_array_pyramid(tmp_path / "x.ome.tif", _image(64, 80), tmp_path / "s", mpp=None, compression="zlib")
    with tifffile.TiffFile(path) as tif:
        assert "PhysicalSizeX" not in tif.ome_metadata
    slide = open_slide(path)
    assert slide.mpp is None and slide.levels == [(64, 80)]
    slide.close()


def test_compression_names_are_checked() -> None:
    assert check_compression(" JPEG ") == "jpeg"
    with pytest.raises(ConfigError, match="--compression lzw"):
        check_compression("lzw")
