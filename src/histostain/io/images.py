"""Reading and writing images at the io boundary.

Everything histostain reads becomes a ``uint8`` array ``H x W x 3`` in RGB order, whatever the file held, so
models and metrics never see a surprise layout. The conversions are explicit (see docs/images-and-tiling.md):

==========================  =================================================================================
input                       conversion
==========================  =================================================================================
grayscale (1 channel)       replicated to 3 channels
gray + alpha (LA)           alpha dropped, gray replicated
RGBA                        alpha dropped, **not** composited: EndoNuke RGBA tiles carry alpha 255 everywhere and
                            whole-slide exports use alpha only as a tissue mask, so compositing on white would
                            change real pixels for no benefit
palette (PNG mode ``P``,    mapped to RGB through the palette
TIFF palette)
1-bit                       0 -> 0, 1 -> 255
16-bit unsigned             ``round(v / 257)``: the full-range mapping (65535 -> 255, 257 -> 1), never min-max
                            stretching, so intensities stay comparable between files
float                       NaN -> 0; if the largest value is <= 1.0 the data is taken as [0, 1] and multiplied
                            by 255, otherwise as [0, 255]; then clipped to [0, 255] and rounded
TIFF ``MINISWHITE``         inverted so that 0 is black
TIFF CMYK (``SEPARATED``)   naive ink inversion R = (1 - C)(1 - K), no colour profile (like Pillow)
TIFF planar (``3 x H x W``) channels moved last
multi-page / pyramid TIFF   first page of the first series (level 0)
==========================  =================================================================================

Other layouts (signed or 32-bit integer samples, more than 4 channels) raise :class:`InputError` rather than
being guessed. 16-bit *RGB* PNGs are reduced to 8 bits by Pillow itself (high byte, at most one level away
from the ``/257`` rule); 16-bit TIFFs and 16-bit grayscale PNGs follow the rule exactly.

Any file that cannot be decoded (missing, a folder, empty, truncated, not an image, zero width or height)
raises :class:`InputError` naming the file.
"""

from __future__ import annotations

import logging
import os
import struct
import threading
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import numpy as np
import tifffile
from PIL import Image

from histostain.errors import InputError
from histostain.io.atomic import atomic_write

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"})
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF, both byte orders
_UNSUPPORTED_PHOTOMETRIC = frozenset(
    int(getattr(tifffile.PHOTOMETRIC, name))
    for name in ("CIELAB", "ICCLAB", "ITULAB", "CFA", "LOGL", "LOGLUV", "LINEAR_RAW")
    if hasattr(tifffile.PHOTOMETRIC, name)
)
_LABEL_DTYPES = (np.uint8, np.uint16, np.int32, np.uint32)

# Whole-slide-sized PNGs (tens of thousands of pixels a side) are legitimate inputs here, while Pillow's
# default limit (~89 Mpx, error at twice that) is meant for untrusted web uploads. 2**31 pixels (about
# 46k x 46k, 6.4 GB as RGB) still stops a real decompression bomb from exhausting memory.
MAX_IMAGE_PIXELS = 2**31
_pixel_limit_lock = threading.Lock()
_pixel_limit_depth = 0
_pixel_limit_saved: int | None = None


@contextmanager
def _raised_pixel_limit() -> Iterator[None]:
    """Raise Pillow's decompression-bomb limit while we decode, then restore the caller's global setting.

    A depth counter (not a lock held during decoding) keeps concurrent readers in threads parallel and makes
    sure the original value is restored exactly once, by the last reader to leave.
    """
    global _pixel_limit_depth, _pixel_limit_saved
    with _pixel_limit_lock:
        if _pixel_limit_depth == 0:
            _pixel_limit_saved = Image.MAX_IMAGE_PIXELS
            if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < MAX_IMAGE_PIXELS:
                Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
        _pixel_limit_depth += 1
    try:
        yield
    finally:
        with _pixel_limit_lock:
            _pixel_limit_depth -= 1
            if _pixel_limit_depth == 0:
                Image.MAX_IMAGE_PIXELS = _pixel_limit_saved


# --------------------------------------------------------------------------------------------------- reading


def _cannot_read(path: Path, reason: str, hint: str | None = None) -> InputError:
    return InputError(f"cannot read image {path}: {reason}", hint=hint)


def _check_file(path: Path) -> None:
    """Turn the common file-system problems into one clear message before any decoder sees the file."""
    if not path.exists():
        raise _cannot_read(path, "file does not exist", hint="check the path and its spelling")
    if path.is_dir():
        raise _cannot_read(path, "it is a directory, not a file", hint="pass an image file, or a folder to a command")
    if path.stat().st_size == 0:
        raise _cannot_read(path, "file is empty (0 bytes)", hint="the file was probably not fully copied")


def _is_tiff(path: Path) -> bool:
    """Sniff the TIFF signature, so a TIFF with a wrong extension still goes to tifffile."""
    try:
        with path.open("rb") as handle:
            head = handle.read(4)
    except OSError as exc:
        raise _cannot_read(path, f"{exc.strerror or exc}") from exc
    return head in _TIFF_MAGIC


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Read any supported image file as ``uint8`` RGB ``H x W x 3`` (conversions in the module docstring)."""
    path = Path(path)
    _check_file(path)
    array = _read_tiff(path) if _is_tiff(path) else _read_pillow(path)
    rgb = _to_rgb_uint8(array, path)
    if rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise _cannot_read(path, f"image has zero width or height ({rgb.shape[0]} x {rgb.shape[1]})")
    return rgb


_PILLOW_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    struct.error,
    zlib.error,
    IndexError,
    Image.DecompressionBombError,
)


def _read_pillow(path: Path) -> np.ndarray:
    """Decode with Pillow; ``.load()`` runs inside the ``try`` so truncated data is caught here."""
    try:
        with _raised_pixel_limit(), Image.open(path) as image:
            image.load()
            return _pillow_to_array(image)
    except Image.UnidentifiedImageError as exc:
        raise _cannot_read(path, "not a recognised image format", hint=_accepted_hint()) from exc
    except Image.DecompressionBombError as exc:
        raise _cannot_read(path, f"image is too large (limit {MAX_IMAGE_PIXELS} pixels)") from exc
    except _PILLOW_ERRORS as exc:
        raise _cannot_read(path, _reason(exc)) from exc


def _reason(exc: BaseException) -> str:
    """A short lowercase reason from a decoder exception (Pillow says 'image file is truncated ...')."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    if "truncated" in text.lower():
        return "file is truncated"
    return f"{text[0].lower()}{text[1:]}" if text else type(exc).__name__


def _pillow_to_array(image: Image.Image) -> np.ndarray:
    """Pillow image -> numpy array with the mode's natural dtype; palettes and exotic modes resolved here."""
    mode = image.mode
    if mode == "1":
        return np.asarray(image.convert("L"))  # Pillow maps 1-bit to 0/255
    if mode in ("P", "PA"):
        has_alpha = mode == "PA" or "transparency" in image.info
        return np.asarray(image.convert("RGBA" if has_alpha else "RGB"))
    if mode in ("L", "LA", "RGB", "RGBA", "F"):
        return np.asarray(image)
    if mode == "RGBX":
        return np.asarray(image)[..., :3]
    if mode.startswith("I;16"):
        return np.asarray(image).astype(np.uint16)
    if mode == "I":
        # Pillow opens 16-bit grayscale (e.g. some PNGs) as 32-bit 'I'; accept it when the values fit 16 bits.
        values = np.asarray(image)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise ValueError("32-bit integer samples outside 0..65535 are not supported")
        return values.astype(np.uint16)
    return np.asarray(image.convert("RGB"))  # CMYK, YCbCr, LAB, HSV: Pillow's own conversion


def _read_tiff(path: Path) -> np.ndarray:
    """Decode the first page of the first series with tifffile, channels last."""
    try:
        with tifffile.TiffFile(path) as tif:
            if not tif.series:
                raise ValueError("no image data in file")
            series = tif.series[0]
            page = series.keyframe if series.keyframe is not None else tif.pages[0]
            if 0 in tuple(page.shape) or 0 in tuple(series.shape):
                raise _cannot_read(path, f"image has zero width or height (shape {tuple(series.shape)})")
            if series.axes == "CYX" and series.shape[0] in (3, 4) and "S" not in page.axes:
                # One colour channel per page (some OME-TIFF writers): read the C x H x W series.
                data = np.moveaxis(np.asarray(series.asarray()), 0, -1)
            else:
                data = _page_channels_last(page)
            photometric = page.photometric
            if photometric == tifffile.PHOTOMETRIC.PALETTE and page.colormap is not None:
                data = _apply_colormap(data, page.colormap)
            elif photometric == tifffile.PHOTOMETRIC.MINISWHITE:
                data = _invert(data, page.bitspersample)
            elif photometric == tifffile.PHOTOMETRIC.SEPARATED and data.ndim == 3 and data.shape[-1] >= 4:
                data = _cmyk_to_rgb(data[..., :4])
            elif photometric in _UNSUPPORTED_PHOTOMETRIC:
                raise _cannot_read(
                    path,
                    f"unsupported TIFF colour space {tifffile.PHOTOMETRIC(photometric).name}",
                    hint="export the image as RGB",
                )
            if page.bitspersample == 1 and data.dtype != np.bool_:
                data = data.astype(bool)
            return data
    except InputError:
        raise
    except MemoryError:
        raise
    except Exception as exc:  # any decoder failure on a user file is an input problem, reported with its cause
        hint = None
        if "imagecodecs" in str(exc):
            hint = "this TIFF compression needs the optional 'imagecodecs' package: pip install imagecodecs"
        raise _cannot_read(path, _reason(exc), hint=hint) from exc


def _page_channels_last(page: Any) -> np.ndarray:
    """Read one TIFF page and move the samples axis (planar ``S x H x W`` or contiguous) to the end."""
    data = np.asarray(page.asarray())
    axes = page.axes
    if len(axes) != data.ndim:  # tifffile squeezes; fall back to shape-based layout detection
        axes = "YX" if data.ndim == 2 else "YXS"
    if "S" in axes and axes.index("S") != data.ndim - 1:
        data = np.moveaxis(data, axes.index("S"), -1)
    return data


def _apply_colormap(indices: np.ndarray, colormap: np.ndarray) -> np.ndarray:
    """TIFF palette: 16-bit colour map entries (3 x 2**bits) -> 8-bit RGB by the same /257 rule."""
    cmap = np.asarray(colormap)
    if cmap.max() > 255:  # colour maps are 16-bit by the standard; a few writers store 8-bit values
        cmap = (cmap.astype(np.uint32) + 128) // 257
    table = np.moveaxis(cmap, 0, -1).astype(np.uint8)
    if indices.ndim == 3:
        indices = indices[..., 0]
    return table[np.clip(indices.astype(np.int64), 0, len(table) - 1)]


def _cmyk_to_rgb(cmyk: np.ndarray) -> np.ndarray:
    """Naive ink inversion (no colour profile): R = (1 - C)(1 - K), the same as Pillow's CMYK -> RGB."""
    if cmyk.dtype == np.uint8:
        values = cmyk.astype(np.float64) / 255.0
    elif cmyk.dtype == np.uint16:
        values = cmyk.astype(np.float64) / 65535.0
    else:
        values = np.clip(np.nan_to_num(cmyk.astype(np.float64)), 0.0, 1.0)
    rgb = (1.0 - values[..., :3]) * (1.0 - values[..., 3:4])
    return np.rint(rgb * 255.0).astype(np.uint8)


def _invert(data: np.ndarray, bits: int) -> np.ndarray:
    """MINISWHITE stores 0 as white; flip to the usual 0-is-black convention."""
    if data.dtype == np.bool_:
        return ~data
    if np.issubdtype(data.dtype, np.integer):
        return (np.iinfo(data.dtype).max if bits >= 8 else (1 << bits) - 1) - data
    return data.max() - data


def _to_rgb_uint8(array: np.ndarray, path: Path) -> np.ndarray:
    """Apply the documented channel and dtype conversions; unsupported layouts raise InputError."""
    data = np.asarray(array)
    if data.ndim == 3 and data.shape[-1] in (1, 2, 3, 4):
        data = data[..., :1] if data.shape[-1] in (1, 2) else data[..., :3]  # LA -> L, RGBA -> RGB
    elif data.ndim != 2:
        raise _cannot_read(
            path,
            f"unsupported layout {data.shape} (expected H x W or H x W x 1..4)",
            hint="histostain reads grayscale, RGB and RGBA images",
        )
    data = _to_uint8(data, path)
    if data.ndim == 2:
        data = data[..., None]
    if data.shape[-1] == 1:
        data = np.repeat(data, 3, axis=-1)
    return np.ascontiguousarray(data)


def _to_uint8(data: np.ndarray, path: Path) -> np.ndarray:
    """Scale sample values to uint8 by fixed rules (never by the image's own min/max)."""
    if data.dtype == np.bool_:
        return data.astype(np.uint8) * np.uint8(255)
    if data.dtype == np.uint8:
        return data
    if data.dtype == np.uint16:
        return ((data.astype(np.uint32) + 128) // 257).astype(np.uint8)  # round(v / 257), exact in integers
    if np.issubdtype(data.dtype, np.floating):
        values = np.nan_to_num(data.astype(np.float64), nan=0.0, posinf=np.inf, neginf=-np.inf)
        peak = float(values.max()) if values.size else 0.0
        if peak <= 1.0:
            values = values * 255.0
        return np.rint(np.clip(values, 0.0, 255.0)).astype(np.uint8)
    raise _cannot_read(
        path,
        f"unsupported sample type {data.dtype}",
        hint="convert the image to 8- or 16-bit unsigned or floating point",
    )


# --------------------------------------------------------------------------------------------------- writing


def _check_image(image: np.ndarray) -> None:
    """Writers accept exactly the io-boundary layouts; anything else is a bug in the caller."""
    if not isinstance(image, np.ndarray):
        raise ValueError(f"write_image expects a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ValueError(f"write_image expects dtype uint8, got {image.dtype}")
    if not (image.ndim == 2 or (image.ndim == 3 and image.shape[-1] in (3, 4))):
        raise ValueError(f"write_image expects an H x W, H x W x 3 or H x W x 4 array, got shape {image.shape}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"write_image cannot write an empty image of shape {image.shape}")


PNG_COMPRESS_LEVEL = 1  # zlib level 1: ~3.5x faster than Pillow's default 6 for ~8% larger tissue tiles


def _encode_png(handle: IO[bytes], image: np.ndarray) -> None:
    Image.fromarray(image).save(handle, format="PNG", compress_level=PNG_COMPRESS_LEVEL)


def _encode_jpeg(handle: IO[bytes], image: np.ndarray) -> None:
    Image.fromarray(image).save(handle, format="JPEG", quality=95)


def _encode_tiff(handle: IO[bytes], image: np.ndarray) -> None:
    extra: dict[str, Any] = {}
    if image.ndim == 2:
        photometric = "minisblack"
    else:
        photometric = "rgb"
        if image.shape[-1] == 4:
            extra["extrasamples"] = ["unassalpha"]  # straight (not premultiplied) alpha
    tifffile.imwrite(handle, image, photometric=photometric, compression="zlib", metadata=None, **extra)


_ENCODERS: dict[str, Callable[[IO[bytes], np.ndarray], None]] = {
    ".png": _encode_png,
    ".jpg": _encode_jpeg,
    ".jpeg": _encode_jpeg,
    ".tif": _encode_tiff,
    ".tiff": _encode_tiff,
}


def write_image(path: str | os.PathLike[str], image: np.ndarray) -> Path:
    """Write a ``uint8`` H x W, H x W x 3 or H x W x 4 array atomically; the format follows the extension.

    PNG and JPEG (quality 95) go through Pillow, TIFF through tifffile with zlib compression and an explicit
    photometric tag. An interrupted write leaves neither a partial file nor a temp file behind.
    """
    target = Path(path)
    suffix = target.suffix.lower()
    encoder = _ENCODERS.get(suffix)
    if encoder is None:
        raise InputError(
            f"cannot write image {target}: unsupported extension {target.suffix!r}",
            hint=f"use one of {', '.join(sorted(_ENCODERS))}",
        )
    _check_image(image)
    if encoder is _encode_jpeg and image.ndim == 3 and image.shape[-1] == 4:
        raise InputError(
            f"cannot write image {target}: JPEG cannot store an alpha channel", hint="use .png or .tif instead"
        )
    atomic_write(target, lambda handle: _ENCODERS[suffix](handle, np.ascontiguousarray(image)))
    log.debug("wrote image %s %s", target, image.shape)
    return target


def _label_array(labels: np.ndarray, writer: str) -> np.ndarray:
    """A 2-D label map in a dtype TIFF readers handle: 64-bit ids narrowed to 32 bits when they fit."""
    array = np.asarray(labels)
    if array.ndim != 2:
        raise ValueError(f"{writer} expects a 2-D label array, got shape {array.shape}")
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    elif array.dtype in (np.int64, np.uint64, np.int16, np.int8):
        narrow = np.int32 if array.dtype.kind == "i" else np.uint32
        info = np.iinfo(narrow)
        if array.size and (array.min() < info.min or array.max() > info.max):
            raise ValueError(f"label values {array.min()}..{array.max()} do not fit {np.dtype(narrow)}")
        array = array.astype(narrow)
    if array.dtype not in _LABEL_DTYPES:
        raise ValueError(f"{writer} expects an integer label array, got dtype {array.dtype}")
    return np.ascontiguousarray(array)


def _resolution_tags(mpp: float | None) -> dict[str, Any]:
    """TIFF resolution tags for ``mpp`` micrometres per pixel, so viewers show the right scale."""
    if mpp is None:
        return {}
    if not mpp > 0:
        raise ValueError(f"mpp must be positive, got {mpp}")
    pixels_per_cm = 1e4 / mpp  # 1 cm = 10^4 micrometres
    return {"resolution": (pixels_per_cm, pixels_per_cm), "resolutionunit": "CENTIMETER"}


def write_label_tiff(path: str | os.PathLike[str], labels: np.ndarray, mpp: float | None = None) -> Path:
    """Write a 2-D integer label map (instance ids or types) as a lossless zlib TIFF, atomically.

    uint8, uint16, int32 and uint32 are stored unchanged; int64/uint64 (what scikit-image returns) are narrowed
    to int32/uint32 when the values fit, because TIFF readers handle 64-bit samples poorly. With ``mpp``
    (microns per pixel) the resolution tags are set so viewers show the right scale.
    """
    target = Path(path)
    array = _label_array(labels, "write_label_tiff")
    extra = _resolution_tags(mpp)

    def _write(handle: IO[bytes]) -> None:
        tifffile.imwrite(handle, array, photometric="minisblack", compression="zlib", metadata=None, **extra)

    atomic_write(target, _write)
    return target


_PAGE_NAME_TAG = 285  # TIFF PageName (ASCII)


def write_label_pages(
    path: str | os.PathLike[str], pages: Sequence[tuple[str, np.ndarray]], mpp: float | None = None
) -> Path:
    """Write several named 2-D label maps of one image as the pages of one lossless TIFF, atomically.

    Each map keeps its own dtype (e.g. int32 instance ids and uint8 types), which is why they are pages and not
    channels of one array: a multi-channel TIFF has one sample type. Every page carries its name in the TIFF
    ``PageName`` tag and, with ``mpp``, the resolution tags. Page 0 is what :func:`read_label_tiff` and
    ``tifffile.imread(path)`` return; ``tifffile.imread(path, key=i)`` reads page ``i``.
    """
    if not pages:
        raise ValueError("write_label_pages needs at least one page")
    arrays = [(str(name), _label_array(labels, "write_label_pages")) for name, labels in pages]
    shapes = {array.shape for _, array in arrays}
    if len(shapes) != 1:
        raise ValueError(f"label pages of one image must have one shape, got {sorted(shapes)}")
    extra = _resolution_tags(mpp)

    def _write(handle: IO[bytes]) -> None:
        with tifffile.TiffWriter(handle) as tiff:
            for name, array in arrays:
                tag = (_PAGE_NAME_TAG, "s", 0, name, True)
                tiff.write(array, photometric="minisblack", compression="zlib", metadata=None, extratags=[tag], **extra)

    atomic_write(Path(path), _write)
    return Path(path)


def read_label_tiff(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a label TIFF written by :func:`write_label_tiff` (or any 2-D integer TIFF) without conversion.

    For a file of :func:`write_label_pages` this is its first page (the instance map of ``segment`` output).
    """
    target = Path(path)
    _check_file(target)
    try:
        with tifffile.TiffFile(target) as tif:
            data = np.asarray(tif.pages[0].asarray())
    except MemoryError:
        raise
    except Exception as exc:  # decoder failures on a user file are input problems
        raise InputError(f"cannot read label image {target}: {_reason(exc)}") from exc
    _check_labels(target, data)
    return data


def _check_labels(target: Path, data: np.ndarray) -> None:
    if data.ndim != 2:
        raise InputError(
            f"cannot read label image {target}: expected a 2-D label map, got shape {data.shape}",
            hint="label TIFFs hold one integer id per pixel, not colours",
        )
    if not (np.issubdtype(data.dtype, np.integer) or data.dtype == np.bool_):
        raise InputError(f"cannot read label image {target}: expected integer labels, got dtype {data.dtype}")


def read_label_pages(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Every page of a label TIFF by name (its ``PageName`` tag, else ``page<i>``), dtypes unchanged."""
    target = Path(path)
    _check_file(target)
    pages: dict[str, np.ndarray] = {}
    try:
        with tifffile.TiffFile(target) as tif:
            for index, page in enumerate(tif.pages):
                tag = page.tags.get("PageName")
                name = str(tag.value) if tag is not None else f"page{index}"
                pages[name if name not in pages else f"page{index}"] = np.asarray(page.asarray())
    except MemoryError:
        raise
    except Exception as exc:  # decoder failures on a user file are input problems
        raise InputError(f"cannot read label image {target}: {_reason(exc)}") from exc
    for data in pages.values():
        _check_labels(target, data)
    return pages


# --------------------------------------------------------------------------------------------------- listing


def _accepted_hint() -> str:
    return f"accepted extensions: {', '.join(sorted(IMAGE_EXTENSIONS))}"


def list_images(path: str | os.PathLike[str], recursive: bool = False) -> list[Path]:
    """The image files a command should process, in an order that is the same on every machine.

    A file is returned as is (if it has an image extension). In a folder, names starting with ``.`` (hidden
    files, histostain's own temp files, hidden folders when recursive) are skipped, extensions match
    case-insensitively, and the result is sorted by POSIX relative path.
    """
    root = Path(path)
    if not root.exists():
        raise InputError(f"input {root} does not exist", hint="check the path and its spelling")
    if root.is_file():
        if root.suffix.lower() not in IMAGE_EXTENSIONS:
            raise InputError(f"input {root} is not an image file (extension {root.suffix!r})", hint=_accepted_hint())
        return [root]
    candidates = root.rglob("*") if recursive else root.iterdir()
    found: list[tuple[str, Path]] = []
    for candidate in candidates:
        relative = candidate.relative_to(root)
        if any(part.startswith(".") for part in relative.parts):
            continue
        if candidate.suffix.lower() in IMAGE_EXTENSIONS and candidate.is_file():
            found.append((relative.as_posix(), candidate))
    if not found:
        where = "or its subfolders " if recursive else ""
        hint = _accepted_hint() + ("" if recursive else "; use --recursive to include subfolders")
        raise InputError(f"no images found in {root} {where}".rstrip(), hint=hint)
    found.sort(key=lambda item: item[0])
    return [candidate for _, candidate in found]


__all__ = [
    "IMAGE_EXTENSIONS",
    "MAX_IMAGE_PIXELS",
    "list_images",
    "read_image",
    "read_label_pages",
    "read_label_tiff",
    "write_image",
    "write_label_pages",
    "write_label_tiff",
]
