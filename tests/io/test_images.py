"""Tests for histostain.io.images: decoding policy, error reporting, atomic writes and listing."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from histostain.errors import InputError
from histostain.io import images
from histostain.io.images import (
    IMAGE_EXTENSIONS,
    list_images,
    read_image,
    read_label_tiff,
    write_image,
    write_label_tiff,
)


@pytest.fixture
def rgb() -> np.ndarray:
    rng = np.random.default_rng(7)
    return rng.integers(0, 256, size=(23, 31, 3), dtype=np.uint8)


def _smooth_rgb(height: int = 48, width: int = 64) -> np.ndarray:
    """Gradients compress well in JPEG, so a tight tolerance is meaningful."""
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([x * 255 // (width - 1), y * 255 // (height - 1), (x + y) * 2 % 256], axis=-1).astype(np.uint8)


# ---------------------------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("suffix", [".png", ".tif", ".tiff", ".PNG"])
def test_lossless_round_trip(tmp_path: Path, rgb: np.ndarray, suffix: str) -> None:
    path = write_image(tmp_path / f"tile{suffix}", rgb)
    back = read_image(path)
    assert back.dtype == np.uint8
    np.testing.assert_array_equal(back, rgb)


@pytest.mark.parametrize("suffix", [".jpg", ".jpeg"])
def test_jpeg_round_trip_within_tolerance(tmp_path: Path, suffix: str) -> None:
    image = _smooth_rgb()
    back = read_image(write_image(tmp_path / f"tile{suffix}", image))
    assert back.shape == image.shape
    assert np.abs(back.astype(int) - image.astype(int)).mean() < 2.0


def test_grayscale_and_rgba_round_trip(tmp_path: Path, rgb: np.ndarray) -> None:
    gray = rgb[..., 0]
    rgba = np.dstack([rgb, np.full(gray.shape, 255, np.uint8)])
    for suffix in (".png", ".tif"):
        np.testing.assert_array_equal(read_image(write_image(tmp_path / f"g{suffix}", gray)), np.dstack([gray] * 3))
        np.testing.assert_array_equal(read_image(write_image(tmp_path / f"a{suffix}", rgba)), rgb)


def test_tiff_tags_are_explicit(tmp_path: Path, rgb: np.ndarray) -> None:
    rgba = np.dstack([rgb, rgb[..., :1]])
    write_image(tmp_path / "rgb.tif", rgb)
    write_image(tmp_path / "rgba.tif", rgba)
    write_image(tmp_path / "gray.tif", rgb[..., 0])
    with tifffile.TiffFile(tmp_path / "rgb.tif") as tif:
        assert tif.pages[0].photometric == tifffile.PHOTOMETRIC.RGB
        assert tif.pages[0].compression == tifffile.COMPRESSION.ADOBE_DEFLATE
    with tifffile.TiffFile(tmp_path / "rgba.tif") as tif:
        assert tif.pages[0].photometric == tifffile.PHOTOMETRIC.RGB
        assert tuple(tif.pages[0].extrasamples) == (tifffile.EXTRASAMPLE.UNASSALPHA,)
        np.testing.assert_array_equal(tif.asarray(), rgba)  # alpha stored, even though read_image drops it
    with tifffile.TiffFile(tmp_path / "gray.tif") as tif:
        assert tif.pages[0].photometric == tifffile.PHOTOMETRIC.MINISBLACK


# ---------------------------------------------------------------------------------------- conversion policy


def test_16bit_tiff_uses_full_range_division(tmp_path: Path) -> None:
    values = np.array([[0, 1, 128, 129, 257], [32896, 65535, 385, 386, 65407]], dtype=np.uint16)
    # round(v / 257) by hand: 128/257=0.498->0, 129/257=0.502->1, 385/257=1.498->1, 386/257=1.502->2,
    # 65407/257=254.502->255. (Taking the high byte instead would give 0 for 129 and 1 for 386.)
    expected = np.array([[0, 0, 0, 1, 1], [128, 255, 1, 2, 255]], dtype=np.uint8)
    tifffile.imwrite(tmp_path / "g16.tif", values, photometric="minisblack")
    np.testing.assert_array_equal(read_image(tmp_path / "g16.tif"), np.dstack([expected] * 3))

    rgb16 = np.dstack([values, values[::-1], np.full_like(values, 257 * 3)])
    tifffile.imwrite(tmp_path / "rgb16.tif", rgb16, photometric="rgb")
    np.testing.assert_array_equal(
        read_image(tmp_path / "rgb16.tif"), np.dstack([expected, expected[::-1], np.full_like(expected, 3)])
    )


def test_16bit_is_not_stretched(tmp_path: Path) -> None:
    """A dim 16-bit image stays dim: no min-max normalisation per file."""
    values = np.full((4, 4), 2570, dtype=np.uint16)  # 2570 / 257 = 10
    values[0, 0] = 5140  # 20
    tifffile.imwrite(tmp_path / "dim.tif", values)
    out = read_image(tmp_path / "dim.tif")
    assert out.max() == 20 and out.min() == 10


def test_16bit_grayscale_png(tmp_path: Path) -> None:
    values = np.array([[0, 257, 32896, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")  # really stored as 16-bit
    np.testing.assert_array_equal(read_image(tmp_path / "g16.png")[0, :, 0], [0, 1, 128, 255])


def _png_rgb16(path: Path, values: np.ndarray) -> Path:
    """A 16-bit RGB PNG written by hand (Pillow cannot write one)."""
    height, width, _ = values.shape
    raw = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in values)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    )
    return path


def test_16bit_rgb_png_within_one_level_of_the_rule(tmp_path: Path) -> None:
    """Pillow keeps the high byte of 16-bit RGB PNGs (documented): at most one level from round(v / 257)."""
    rng = np.random.default_rng(4)
    values = rng.integers(0, 65536, size=(9, 11, 3)).astype(np.uint16)
    values[0, 0] = [0, 32896, 65535]
    out = read_image(_png_rgb16(tmp_path / "rgb16.png", values))
    exact = (values.astype(np.int64) + 128) // 257
    assert np.abs(out.astype(np.int64) - exact).max() <= 1
    np.testing.assert_array_equal(out[0, 0], [0, 128, 255])


def test_float_tiff_unit_range_and_255_range(tmp_path: Path) -> None:
    unit = np.array([[0.0, 0.5, 1.0, np.nan], [-0.2, 0.1, 0.999, 0.002]], dtype=np.float32)
    # *255 then round: 0.5 -> 127.5 -> 128 (half to even), float32(0.1) -> 25.5000004 -> 26
    # 0.999 -> 254.745 -> 255, 0.002 -> 0.51 -> 1, negative clipped to 0, NaN -> 0
    expected_unit = np.array([[0, 128, 255, 0], [0, 26, 255, 1]], dtype=np.uint8)
    tifffile.imwrite(tmp_path / "unit.tif", unit)
    np.testing.assert_array_equal(read_image(tmp_path / "unit.tif")[..., 1], expected_unit)

    wide = np.array([[0.0, 10.4, 10.6, 300.0], [254.5, -5.0, np.nan, 1.5]], dtype=np.float64)
    expected_wide = np.array([[0, 10, 11, 255], [254, 0, 0, 2]], dtype=np.uint8)  # 254.5 -> 254 (to even)
    tifffile.imwrite(tmp_path / "wide.tif", wide)
    np.testing.assert_array_equal(read_image(tmp_path / "wide.tif")[..., 2], expected_wide)


def test_grayscale_png_is_replicated(tmp_path: Path) -> None:
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    Image.fromarray(gray, mode="L").save(tmp_path / "gray.png")
    out = read_image(tmp_path / "gray.png")
    assert out.shape == (3, 4, 3)
    for channel in range(3):
        np.testing.assert_array_equal(out[..., channel], gray)


def test_rgba_png_alpha_dropped_not_composited(tmp_path: Path, rgb: np.ndarray) -> None:
    alpha = np.zeros(rgb.shape[:2], np.uint8)  # fully transparent: compositing would change every pixel
    alpha[::2] = 128
    Image.fromarray(np.dstack([rgb, alpha]), mode="RGBA").save(tmp_path / "rgba.png")
    np.testing.assert_array_equal(read_image(tmp_path / "rgba.png"), rgb)


def test_la_png_alpha_dropped(tmp_path: Path) -> None:
    gray = np.array([[10, 20], [30, 40]], np.uint8)
    Image.fromarray(np.dstack([gray, np.zeros_like(gray)]), mode="LA").save(tmp_path / "la.png")
    np.testing.assert_array_equal(read_image(tmp_path / "la.png"), np.dstack([gray] * 3))


def test_palette_png_maps_through_palette(tmp_path: Path) -> None:
    palette = [255, 0, 0, 0, 128, 0, 10, 20, 30] + [0] * (256 * 3 - 9)
    indices = np.array([[0, 1, 2], [2, 1, 0]], np.uint8)
    image = Image.fromarray(indices, mode="P")
    image.putpalette(palette)
    image.save(tmp_path / "pal.png")
    assert Image.open(tmp_path / "pal.png").mode == "P"
    colours = np.array([[255, 0, 0], [0, 128, 0], [10, 20, 30]], np.uint8)
    np.testing.assert_array_equal(read_image(tmp_path / "pal.png"), colours[indices])


def test_palette_tiff_maps_through_16bit_colormap(tmp_path: Path) -> None:
    colormap = np.zeros((3, 256), np.uint16)
    colormap[:, 1] = [65535, 0, 0]
    colormap[:, 2] = [257 * 10, 257 * 20, 257 * 30]
    indices = np.array([[0, 1, 2, 1]], np.uint8)
    tifffile.imwrite(tmp_path / "pal.tif", indices, photometric="palette", colormap=colormap)
    colours = np.array([[0, 0, 0], [255, 0, 0], [10, 20, 30]], np.uint8)
    np.testing.assert_array_equal(read_image(tmp_path / "pal.tif"), colours[indices])


def test_one_bit_images_map_to_0_and_255(tmp_path: Path) -> None:
    bits = np.array([[0, 1, 1], [1, 0, 0]], dtype=bool)
    Image.fromarray(bits).save(tmp_path / "bits.png")
    assert Image.open(tmp_path / "bits.png").mode == "1"
    np.testing.assert_array_equal(read_image(tmp_path / "bits.png")[..., 0], bits * 255)
    tifffile.imwrite(tmp_path / "bits.tif", bits, photometric="minisblack")
    np.testing.assert_array_equal(read_image(tmp_path / "bits.tif")[..., 0], bits * 255)


def test_miniswhite_tiff_is_inverted(tmp_path: Path) -> None:
    tifffile.imwrite(tmp_path / "mw.tif", np.array([[0, 55, 255]], np.uint8), photometric="miniswhite")
    np.testing.assert_array_equal(read_image(tmp_path / "mw.tif")[0, :, 0], [255, 200, 0])


def test_cmyk_tiff_naive_inversion(tmp_path: Path) -> None:
    cmyk = np.array([[[0, 0, 0, 0], [255, 0, 0, 0], [0, 0, 0, 255], [128, 64, 0, 51]]], np.uint8)
    tifffile.imwrite(tmp_path / "cmyk.tif", cmyk, photometric="separated")
    # (1 - c/255) * (1 - k/255) * 255: last pixel 127 * 0.8 = 101.6 -> 102, 191 * 0.8 = 152.8 -> 153, 255 * 0.8
    expected = np.array([[[255, 255, 255], [0, 255, 255], [0, 0, 0], [102, 153, 204]]], np.uint8)
    np.testing.assert_array_equal(read_image(tmp_path / "cmyk.tif"), expected)


def test_lab_tiff_is_refused(tmp_path: Path) -> None:
    tifffile.imwrite(tmp_path / "lab.tif", np.zeros((2, 2, 3), np.uint8), photometric="cielab")
    with pytest.raises(InputError, match=r"lab\.tif.*CIELAB"):
        read_image(tmp_path / "lab.tif")


def test_multipage_tiff_reads_first_page(tmp_path: Path, rgb: np.ndarray) -> None:
    with tifffile.TiffWriter(tmp_path / "multi.tif") as tif:
        tif.write(rgb, photometric="rgb")
        tif.write(255 - rgb, photometric="rgb")
        tif.write(rgb[:5, :5], photometric="rgb")
    np.testing.assert_array_equal(read_image(tmp_path / "multi.tif"), rgb)


def test_tiled_tiff(tmp_path: Path) -> None:
    image = _smooth_rgb(40, 50)  # not a multiple of the 16-pixel tiles
    tifffile.imwrite(tmp_path / "tiled.tif", image, photometric="rgb", tile=(16, 16), compression="zlib")
    with tifffile.TiffFile(tmp_path / "tiled.tif") as tif:
        assert tif.pages[0].is_tiled
    np.testing.assert_array_equal(read_image(tmp_path / "tiled.tif"), image)


def test_planar_tiff(tmp_path: Path, rgb: np.ndarray) -> None:
    planar = np.ascontiguousarray(np.moveaxis(rgb, -1, 0))  # 3 x H x W
    tifffile.imwrite(tmp_path / "planar.tif", planar, photometric="rgb", planarconfig="separate")
    with tifffile.TiffFile(tmp_path / "planar.tif") as tif:
        assert tif.pages[0].planarconfig == tifffile.PLANARCONFIG.SEPARATE
    np.testing.assert_array_equal(read_image(tmp_path / "planar.tif"), rgb)


def test_channel_per_page_ome_tiff(tmp_path: Path, rgb: np.ndarray) -> None:
    planar = np.ascontiguousarray(np.moveaxis(rgb, -1, 0))
    tifffile.imwrite(tmp_path / "c.ome.tif", planar, ome=True, photometric="minisblack", metadata={"axes": "CYX"})
    np.testing.assert_array_equal(read_image(tmp_path / "c.ome.tif"), rgb)


def test_tiff_with_wrong_extension_is_sniffed(tmp_path: Path, rgb: np.ndarray) -> None:
    tifffile.imwrite(tmp_path / "really_a_tiff.png", rgb, photometric="rgb")
    np.testing.assert_array_equal(read_image(tmp_path / "really_a_tiff.png"), rgb)


def test_bmp(tmp_path: Path, rgb: np.ndarray) -> None:
    Image.fromarray(rgb).save(tmp_path / "tile.bmp")
    np.testing.assert_array_equal(read_image(tmp_path / "tile.bmp"), rgb)


def test_large_png_is_not_a_decompression_bomb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Pillow's default limit is lowered here so a small file stands in for a whole-slide-sized one."""
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 1600 px would be a 'bomb' (> 2 * limit)
    assert read_image(tmp_path / "big.png").shape == (40, 40, 3)
    assert Image.MAX_IMAGE_PIXELS == 100  # the caller's global setting is restored


def test_decompression_bomb_beyond_our_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(tmp_path / "bomb.png")
    monkeypatch.setattr(images, "MAX_IMAGE_PIXELS", 100)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(InputError, match="bomb.png.*too large"):
        read_image(tmp_path / "bomb.png")


# -------------------------------------------------------------------------------------------- read errors


def _valid_png(path: Path) -> Path:
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path)
    return path


def test_zero_byte_file(tmp_path: Path) -> None:
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(InputError, match=r"empty\.png.*empty"):
        read_image(tmp_path / "empty.png")


def test_truncated_png(tmp_path: Path) -> None:
    path = _valid_png(tmp_path / "cut.png")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"cut\.png") as info:
        read_image(path)
    assert "truncated" in info.value.message


def test_truncated_tiff(tmp_path: Path, rgb: np.ndarray) -> None:
    path = tmp_path / "cut.tif"
    tifffile.imwrite(path, rgb, photometric="rgb", compression="zlib")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"cut\.tif"):
        read_image(path)


def test_text_file_named_png(tmp_path: Path) -> None:
    (tmp_path / "notes.png").write_text("this is not an image\n")
    with pytest.raises(InputError, match=r"notes\.png.*not a recognised image"):
        read_image(tmp_path / "notes.png")


def test_text_file_named_tif(tmp_path: Path) -> None:
    (tmp_path / "notes.tif").write_text("this is not an image either\n")
    with pytest.raises(InputError, match=r"notes\.tif"):
        read_image(tmp_path / "notes.tif")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"nothing\.png.*does not exist"):
        read_image(tmp_path / "nothing.png")


def test_directory(tmp_path: Path) -> None:
    (tmp_path / "folder.png").mkdir()
    with pytest.raises(InputError, match=r"folder\.png.*directory"):
        read_image(tmp_path / "folder.png")


def test_zero_dimension_tiff(tmp_path: Path) -> None:
    with pytest.warns(UserWarning):  # tifffile warns that a zero-size TIFF is non-conformant, but writes it
        tifffile.imwrite(tmp_path / "flat.tif", np.zeros((0, 5), np.uint8))
    with pytest.raises(InputError, match=r"flat\.tif.*zero width or height"):
        read_image(tmp_path / "flat.tif")


def test_unsupported_sample_type(tmp_path: Path) -> None:
    tifffile.imwrite(tmp_path / "signed.tif", np.array([[-5, 7]], np.int16))
    with pytest.raises(InputError, match=r"signed\.tif.*int16"):
        read_image(tmp_path / "signed.tif")


# -------------------------------------------------------------------------------------------------- writing


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((4, 4, 3), np.float32),
        np.zeros((4, 4, 3), np.uint16),
        np.zeros((4, 4, 2), np.uint8),
        np.zeros((4,), np.uint8),
        np.zeros((2, 4, 4, 3), np.uint8),
        np.zeros((0, 4, 3), np.uint8),
    ],
)
def test_write_image_rejects_bad_arrays(tmp_path: Path, bad: np.ndarray) -> None:
    with pytest.raises(ValueError):
        write_image(tmp_path / "x.png", bad)
    assert list(tmp_path.iterdir()) == []


def test_write_image_unknown_extension(tmp_path: Path, rgb: np.ndarray) -> None:
    with pytest.raises(InputError, match=r"x\.gif"):
        write_image(tmp_path / "x.gif", rgb)


def test_write_jpeg_with_alpha_is_refused(tmp_path: Path, rgb: np.ndarray) -> None:
    with pytest.raises(InputError, match="alpha"):
        write_image(tmp_path / "x.jpg", np.dstack([rgb, rgb[..., :1]]))


def test_write_creates_parent_folders(tmp_path: Path, rgb: np.ndarray) -> None:
    path = write_image(tmp_path / "a" / "b" / "tile.png", rgb)
    np.testing.assert_array_equal(read_image(path), rgb)


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_failed_write_leaves_nothing_behind(
    tmp_path: Path, rgb: np.ndarray, monkeypatch: pytest.MonkeyPatch, suffix: str
) -> None:
    def broken_encoder(handle: object, image: np.ndarray) -> None:
        handle.write(b"half an image")  # a partial file really exists when the failure happens
        raise RuntimeError("disk on fire")

    monkeypatch.setitem(images._ENCODERS, suffix, broken_encoder)
    with pytest.raises(RuntimeError, match="disk on fire"):
        write_image(tmp_path / f"new{suffix}", rgb)
    assert list(tmp_path.iterdir()) == []


def test_failed_overwrite_keeps_existing_target(
    tmp_path: Path, rgb: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = write_image(tmp_path / "tile.tif", rgb)
    before = target.read_bytes()

    def broken_imwrite(handle: object, *args: object, **kwargs: object) -> None:
        handle.write(b"II*\x00garbage")
        raise OSError("no space left on device")

    monkeypatch.setattr(images.tifffile, "imwrite", broken_imwrite)
    with pytest.raises(OSError, match="no space"):
        write_image(target, 255 - rgb)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["tile.tif"]


# --------------------------------------------------------------------------------------------- label TIFFs


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32, np.uint32])
def test_label_tiff_round_trip_keeps_dtype(tmp_path: Path, dtype: type) -> None:
    info = np.iinfo(dtype)
    labels = np.zeros((17, 29), dtype=dtype)
    labels[2:6, 3:9] = 1
    labels[8:, 10:] = info.max  # the extreme id survives
    labels[0, 0] = info.max // 2 + 1
    back = read_label_tiff(write_label_tiff(tmp_path / "labels.tif", labels))
    assert back.dtype == labels.dtype
    np.testing.assert_array_equal(back, labels)


def test_label_tiff_int32_ids_above_65535_and_resolution(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 5_000_000, size=(40, 33)).astype(np.int32)
    labels[0, :3] = [65535, 65536, 2_000_000_000]
    path = write_label_tiff(tmp_path / "inst.tif", labels, mpp=0.25)
    back = read_label_tiff(path)
    assert back.dtype == np.int32
    np.testing.assert_array_equal(back, labels)
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        assert page.compression == tifffile.COMPRESSION.ADOBE_DEFLATE
        assert page.tags["ResolutionUnit"].value == tifffile.RESUNIT.CENTIMETER
        numerator, denominator = page.tags["XResolution"].value
        assert numerator / denominator == pytest.approx(40_000)  # 0.25 um/px -> 4 px/um -> 40000 px/cm


def test_label_tiff_int64_is_narrowed_when_it_fits(tmp_path: Path) -> None:
    labels = np.arange(12, dtype=np.int64).reshape(3, 4) * 100_000
    back = read_label_tiff(write_label_tiff(tmp_path / "l.tif", labels))
    assert back.dtype == np.int32
    np.testing.assert_array_equal(back, labels)
    with pytest.raises(ValueError, match="do not fit"):
        write_label_tiff(tmp_path / "big.tif", np.array([[2**40]], np.int64))


def test_label_tiff_rejects_bad_input(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        write_label_tiff(tmp_path / "l.tif", np.zeros((3, 4, 2), np.int32))
    with pytest.raises(ValueError):
        write_label_tiff(tmp_path / "l.tif", np.zeros((3, 4), np.float32))
    tifffile.imwrite(tmp_path / "rgb.tif", np.zeros((3, 4, 3), np.uint8), photometric="rgb")
    with pytest.raises(InputError, match=r"rgb\.tif.*2-D"):
        read_label_tiff(tmp_path / "rgb.tif")
    (tmp_path / "junk.tif").write_bytes(b"junk")
    with pytest.raises(InputError, match=r"junk\.tif"):
        read_label_tiff(tmp_path / "junk.tif")
    with pytest.raises(InputError, match=r"missing\.tif"):
        read_label_tiff(tmp_path / "missing.tif")


# -------------------------------------------------------------------------------------------------- listing


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def test_list_images_sorted_filtered_case_insensitive(tmp_path: Path) -> None:
    for name in ["b.png", "a.TIF", "C.jpeg", "d.JPG", "e.bmp", "f.tiff", "notes.txt", ".hidden.png"]:
        _touch(tmp_path / name)
    _touch(tmp_path / ".tile.png.123.tmp.png")  # an interrupted atomic write
    _touch(tmp_path / "sub" / "deep.png")
    (tmp_path / "folder.png").mkdir()  # a directory with an image-like name is not an image
    names = [p.name for p in list_images(tmp_path)]
    assert names == ["C.jpeg", "a.TIF", "b.png", "d.JPG", "e.bmp", "f.tiff"]  # plain code-point order: 'C' < 'a'
    assert all(p.parent == tmp_path for p in list_images(tmp_path))


def test_list_images_recursive_orders_by_relative_posix_path(tmp_path: Path) -> None:
    for rel in ["z.png", "a/y.png", "a/b/x.png", "a-b/w.png", ".git/objects/o.png", "c/.cache/v.png", "c/u.png"]:
        _touch(tmp_path / rel)
    relative = [p.relative_to(tmp_path).as_posix() for p in list_images(tmp_path, recursive=True)]
    # '-' (0x2d) sorts before '/' (0x2f): 'a-b/...' comes before 'a/...'
    assert relative == ["a-b/w.png", "a/b/x.png", "a/y.png", "c/u.png", "z.png"]


def test_list_images_single_file(tmp_path: Path) -> None:
    path = _touch(tmp_path / "one.PNG")
    assert list_images(path) == [path]
    text = _touch(tmp_path / "one.txt")
    with pytest.raises(InputError, match=r"one\.txt") as info:
        list_images(text)
    assert ".png" in (info.value.hint or "")


def test_list_images_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        list_images(tmp_path / "missing")
    _touch(tmp_path / "readme.md")
    _touch(tmp_path / "sub" / "deep.png")
    with pytest.raises(InputError, match="no images") as info:
        list_images(tmp_path)
    for suffix in IMAGE_EXTENSIONS:
        assert suffix in (info.value.hint or "")
    assert list_images(tmp_path, recursive=True) == [tmp_path / "sub" / "deep.png"]


def test_listing_is_independent_of_directory_order(tmp_path: Path) -> None:
    names = [f"t{i:03d}.png" for i in range(50)]
    rng = np.random.default_rng(0)
    for name in rng.permutation(names):
        _touch(tmp_path / str(name))
    assert [p.name for p in list_images(tmp_path)] == sorted(names)


def test_label_pages_keep_each_dtype_name_and_scale(tmp_path: Path) -> None:
    instances = np.arange(20, dtype=np.int32).reshape(4, 5) * 100_000
    types = (np.arange(20) % 6).astype(np.uint8).reshape(4, 5)
    path = images.write_label_pages(tmp_path / "maps.tif", [("instance", instances), ("type", types)], mpp=0.5)
    pages = images.read_label_pages(path)
    assert list(pages) == ["instance", "type"]
    assert pages["instance"].dtype == np.int32 and pages["type"].dtype == np.uint8
    np.testing.assert_array_equal(pages["instance"], instances)
    np.testing.assert_array_equal(pages["type"], types)
    # Page 0 is what every single-map reader sees; key=1 is the type map.
    np.testing.assert_array_equal(read_label_tiff(path), instances)
    np.testing.assert_array_equal(tifffile.imread(path), instances)
    np.testing.assert_array_equal(tifffile.imread(path, key=1), types)
    with tifffile.TiffFile(path) as tif:
        for page in tif.pages:
            assert page.compression == tifffile.COMPRESSION.ADOBE_DEFLATE
            numerator, denominator = page.tags["XResolution"].value
            assert numerator / denominator == pytest.approx(20_000)


def test_label_pages_refuse_bad_input_and_name_unnamed_pages(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least one page"):
        images.write_label_pages(tmp_path / "a.tif", [])
    with pytest.raises(ValueError, match="one shape"):
        images.write_label_pages(
            tmp_path / "a.tif", [("a", np.zeros((2, 2), np.int32)), ("b", np.zeros((3, 2), np.int32))]
        )
    with pytest.raises(ValueError, match="integer label array"):
        images.write_label_pages(tmp_path / "a.tif", [("a", np.zeros((2, 2), np.float32))])
    assert not (tmp_path / "a.tif").exists()
    with tifffile.TiffWriter(tmp_path / "plain.tif") as tif:
        tif.write(np.ones((2, 2), np.uint16), photometric="minisblack", metadata=None)
        tif.write(np.zeros((2, 2), np.uint8), photometric="minisblack", metadata=None)
    assert list(images.read_label_pages(tmp_path / "plain.tif")) == ["page0", "page1"]
    tifffile.imwrite(tmp_path / "rgb.tif", np.zeros((3, 4, 3), np.uint8), photometric="rgb")
    with pytest.raises(InputError, match="2-D"):
        images.read_label_pages(tmp_path / "rgb.tif")
