"""Whole-slide images: lazy, tile-by-tile reading of pyramidal slides in memory that does not grow with them.

A slide is tens of thousands of pixels a side and never fits in memory as one array, so nothing here ever
decodes a whole level: :meth:`Slide.read_region` finds the TIFF tiles (or strips) a rectangle touches, reads
their bytes from the file, decodes just those, and keeps a small LRU cache of decoded tiles so neighbouring
reads do not decode the same tile twice.

Formats:

- **TIFF family through tifffile** (a core dependency, with ``imagecodecs`` for JPEG / JPEG 2000 tiles):
  Aperio SVS (``format == "aperio"``; levels are the tiled pages of the main series, thumbnail, label and
  macro pages are left out; ``MPP = ...`` from the description), OME-TIFF (``"ome"``; pyramid levels as
  SubIFDs, ``PhysicalSizeX`` from the OME-XML) and generic tiled pyramidal TIFF (``"tiff"``; SubIFDs or
  reduced pages grouped by tifffile, pixel size from the resolution tags).
- **Other vendor formats** (MIRAX, Hamamatsu, Leica, Ventana, Sakura, Philips TIFF that tifffile does not read
  as a pyramid) go through OpenSlide when ``openslide`` is importable (``format`` is then OpenSlide's vendor
  name). It is an optional extra, never a hard dependency: without it the user gets a one-line hint.

Coordinates follow OpenSlide: ``read_region(x, y, width, height, level)`` takes the top-left corner in
**level-0** pixels and the size in pixels **of the level read**; the result is always ``uint8`` RGB
``height x width x 3``, and any part outside the slide is white (like glass), so callers can cut a regular grid
without special-casing the right and bottom edges.
"""

from __future__ import annotations

import logging
import math
import os
import re
import threading
import xml.etree.ElementTree as ET
from collections import OrderedDict
from pathlib import Path
from types import ModuleType, TracebackType
from typing import Any

import cv2
import numpy as np
import tifffile

from histostain.errors import InputError

log = logging.getLogger(__name__)

OPENSLIDE_HINT = "pip install openslide-python openslide-bin"
IMAGECODECS_HINT = 'pip install "imagecodecs>=2024.1"'

# Extensions that are slides by name alone; the TIFF-container ones tifffile reads, the others need OpenSlide.
TIFF_SLIDE_EXTENSIONS: frozenset[str] = frozenset({".svs"})
OPENSLIDE_FORMATS: dict[str, str] = {
    ".mrxs": "MIRAX (.mrxs)",
    ".ndpi": "Hamamatsu (.ndpi)",
    ".vms": "Hamamatsu (.vms)",
    ".vmu": "Hamamatsu (.vmu)",
    ".scn": "Leica (.scn)",
    ".bif": "Ventana (.bif)",
    ".svslide": "Sakura (.svslide)",
    ".dcm": "DICOM",
}
SLIDE_EXTENSIONS: frozenset[str] = TIFF_SLIDE_EXTENSIONS | frozenset(OPENSLIDE_FORMATS)

IS_SLIDE_MIN_SIDE = 10_000  # a tiled pyramid TIFF bigger than this in a side is treated as a slide
TILE_CACHE_BYTES = 16 * 2**20  # decoded tiles kept for neighbouring reads (~85 tiles of 256 x 256 RGB)
SCALED_READ_CHUNK = 2048  # level pixels per side read at once when building thumbnails and tissue masks
_MPP_RANGE = (0.01, 100.0)  # plausible um/px; outside it a resolution tag is a screen DPI, not a pixel size
_LEVEL_TOLERANCE = 0.01  # a level up to 1% finer than the target counts as "at" the target


def _slide_error(path: Path, reason: str, hint: str | None = None) -> InputError:
    return InputError(f"cannot read slide {path}: {reason}", hint=hint)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:200]


# --------------------------------------------------------------------------------------------------- base


class Slide:
    """A pyramidal slide: level sizes, pixel size and lazy region reads (see the module docstring).

    Attributes: ``path``; ``format`` ("aperio", "ome", "tiff" or an OpenSlide vendor); ``levels`` as
    ``(height, width)`` from the largest; ``downsamples`` per level relative to level 0; ``mpp`` in um/px at
    level 0 (``None`` when neither the file nor the caller gives it).
    """

    path: Path
    format: str
    levels: list[tuple[int, int]]
    downsamples: list[float]
    mpp: float | None

    def __init__(
        self, path: Path, fmt: str, levels: list[tuple[int, int]], mpp_meta: float | None, mpp: float | None
    ) -> None:
        self.path = path
        self.format = fmt
        self.levels = levels
        h0, w0 = levels[0]
        self.downsamples = [(h0 / h + w0 / w) / 2.0 for h, w in levels]
        self.mpp = float(mpp) if mpp is not None else mpp_meta

    # -- backend hooks
    def _read(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        """Read an in-bounds window of ``level`` in that level's pixels as uint8 RGB."""
        raise NotImplementedError

    def close(self) -> None:
        """Release the file handle."""

    # -- public API
    @property
    def dimensions(self) -> tuple[int, int]:
        """Level-0 ``(height, width)``."""
        return self.levels[0]

    def level_mpp(self, level: int) -> float | None:
        """um/px of ``level`` (None when the slide's pixel size is unknown)."""
        return None if self.mpp is None else self.mpp * self.downsamples[level]

    def _check_level(self, level: int) -> int:
        if not 0 <= int(level) < len(self.levels):
            raise ValueError(f"level {level} out of range: {self.path} has {len(self.levels)} level(s)")
        return int(level)

    def read_region(self, x: int, y: int, width: int, height: int, level: int = 0) -> np.ndarray:
        """``height x width x 3`` uint8 RGB at ``level``, top-left ``(x, y)`` in level-0 pixels; white outside."""
        level = self._check_level(level)
        width, height = int(width), int(height)
        if width < 0 or height < 0:
            raise ValueError(f"region size must not be negative, got {width} x {height}")
        out = np.full((height, width, 3), 255, dtype=np.uint8)
        if width == 0 or height == 0:
            return out
        ds = self.downsamples[level]
        lx, ly = math.floor(x / ds), math.floor(y / ds)
        lh, lw = self.levels[level]
        x0, y0 = max(lx, 0), max(ly, 0)
        x1, y1 = min(lx + width, lw), min(ly + height, lh)
        if x1 <= x0 or y1 <= y0:
            return out
        out[y0 - ly : y1 - ly, x0 - lx : x1 - lx] = self._read(level, x0, y0, x1 - x0, y1 - y0)
        return out

    def best_level(self, target_mpp: float) -> tuple[int, float]:
        """The coarsest level that is not coarser than ``target_mpp``, and the factor left to shrink it by.

        Returns ``(level, residual)`` with ``residual = target_mpp / level_mpp``: 1.0 when a level matches,
        > 1 when the level must still be downsampled, < 1 only when the target is finer than level 0 (then
        level 0 has to be upsampled). Reading a finer level and shrinking keeps detail a coarser one has lost.
        """
        if not target_mpp > 0:
            raise ValueError(f"target mpp must be positive, got {target_mpp}")
        if self.mpp is None:
            raise InputError(
                f"{self.path}: the slide's pixel size (um/px) is not in its metadata",
                hint="pass --mpp with the scanner's micrometres per pixel (0.25 at 40x, 0.5 at 20x)",
            )
        best = 0
        for level in range(len(self.levels)):
            level_mpp = self.mpp * self.downsamples[level]
            if level_mpp <= target_mpp * (1.0 + _LEVEL_TOLERANCE):
                best = level
        residual = target_mpp / (self.mpp * self.downsamples[best])
        if abs(residual - 1.0) < 1e-6:
            residual = 1.0
        return best, residual

    def read_level_scaled(self, level: int, max_side: int) -> np.ndarray:
        """All of ``level`` shrunk to at most ``max_side`` a side (never enlarged), read chunk by chunk.

        Chunked so a single-level slide, whose smallest level is level 0, still never lands in memory whole.
        """
        level = self._check_level(level)
        if max_side < 1:
            raise ValueError(f"max_side must be at least 1, got {max_side}")
        lh, lw = self.levels[level]
        scale = min(1.0, max_side / max(lh, lw))
        if scale >= 1.0:
            return self._read(level, 0, 0, lw, lh)
        oh, ow = max(1, round(lh * scale)), max(1, round(lw * scale))
        out = np.empty((oh, ow, 3), dtype=np.uint8)
        for y0 in range(0, lh, SCALED_READ_CHUNK):
            y1 = min(y0 + SCALED_READ_CHUNK, lh)
            oy0, oy1 = round(y0 * oh / lh), round(y1 * oh / lh)
            if oy1 <= oy0:
                continue
            for x0 in range(0, lw, SCALED_READ_CHUNK):
                x1 = min(x0 + SCALED_READ_CHUNK, lw)
                ox0, ox1 = round(x0 * ow / lw), round(x1 * ow / lw)
                if ox1 <= ox0:
                    continue
                chunk = self._read(level, x0, y0, x1 - x0, y1 - y0)
                out[oy0:oy1, ox0:ox1] = cv2.resize(chunk, (ox1 - ox0, oy1 - oy0), interpolation=cv2.INTER_AREA)
        return out

    def thumbnail(self, max_side: int = 1024) -> np.ndarray:
        """An overview of the whole slide, at most ``max_side`` a side, from the smallest level."""
        return self.read_level_scaled(len(self.levels) - 1, max_side)

    def __enter__(self) -> Slide:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        h, w = self.levels[0]
        return (
            f"<{type(self).__name__} {self.path.name} {self.format} {w}x{h} levels={len(self.levels)} mpp={self.mpp}>"
        )


# --------------------------------------------------------------------------------------------------- tifffile


def _to_rgb(segment: np.ndarray) -> np.ndarray:
    """A decoded tile (length x width x samples, any unsigned depth) as uint8 RGB."""
    if segment.dtype == np.uint16:
        segment = ((segment.astype(np.uint32) + 128) // 257).astype(np.uint8)
    elif segment.dtype == np.bool_:
        segment = segment.astype(np.uint8) * np.uint8(255)
    elif segment.dtype != np.uint8:
        raise ValueError(f"unsupported sample type {segment.dtype}")
    samples = segment.shape[-1]
    if samples == 1 or samples == 2:
        return np.repeat(segment[..., :1], 3, axis=-1)
    return segment[..., :3]


class _Level:
    """One pyramid level's TIFF page: where its segments (tiles or strips) are and how to decode them."""

    def __init__(self, page: Any) -> None:
        self.page = page
        self.height = int(page.imagelength)
        self.width = int(page.imagewidth)
        if page.is_tiled:
            self.seg_h, self.seg_w = int(page.tilelength), int(page.tilewidth)
        else:
            self.seg_h, self.seg_w = min(int(page.rowsperstrip or self.height), self.height), self.width
        self.rows = -(-self.height // self.seg_h)
        self.cols = -(-self.width // self.seg_w)
        self.planes = int(page.samplesperpixel) if page.planarconfig == 2 else 1
        self.offsets = page.dataoffsets
        self.counts = page.databytecounts
        if len(self.offsets) < self.rows * self.cols * self.planes:
            raise ValueError(f"{len(self.offsets)} segments for a {self.rows} x {self.cols} grid")


class TiffSlide(Slide):
    """A slide read with tifffile, one tile at a time from the file offsets in each level's page."""

    def __init__(
        self, path: Path, tif: tifffile.TiffFile, fmt: str, pages: list[Any], mpp_meta: float | None, mpp: float | None
    ) -> None:
        self._tif = tif
        self._levels = [_Level(page) for page in pages]
        super().__init__(path, fmt, [(lv.height, lv.width) for lv in self._levels], mpp_meta, mpp)
        self._lock = threading.Lock()  # one file position shared by all reads
        self._cache_lock = threading.Lock()
        self._cache: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        self._cache_bytes = 0

    def close(self) -> None:
        self._cache.clear()
        self._cache_bytes = 0
        self._tif.close()

    def _segment_bytes(self, level: _Level, index: int) -> bytes | None:
        offset, count = int(level.offsets[index]), int(level.counts[index])
        if offset == 0 or count == 0:
            return None  # sparse segment: never written, shown as white like glass
        fh = self._tif.filehandle
        with self._lock:
            fh.seek(offset)
            data = fh.read(count)
        if len(data) < count:
            raise _slide_error(self.path, "file is truncated (a tile lies past the end of the file)")
        return data

    def _segment(self, li: int, index: int) -> np.ndarray:
        """Decoded segment ``index`` of level ``li`` (seg_h x seg_w x 3, edge segments cropped), cached."""
        key = (li, index)
        with self._cache_lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
                return cached
        level = self._levels[li]
        page = level.page
        n = level.rows * level.cols
        r, c = divmod(index, level.cols)
        h = min(level.seg_h, level.height - r * level.seg_h)
        w = min(level.seg_w, level.width - c * level.seg_w)
        planes = []
        for plane in range(level.planes):
            data = self._segment_bytes(level, plane * n + index)
            if data is None:
                planes = []
                break
            try:
                decoded, _, _ = page.decode(data, plane * n + index, jpegtables=page.jpegtables)
            except InputError:
                raise
            except Exception as exc:  # a corrupt tile or a codec imagecodecs lacks: the user's file, not a bug
                raise _slide_error(
                    self.path, f"tile {index} of level {li} cannot be decoded: {_one_line(exc)}"
                ) from exc
            decoded = np.asarray(decoded)
            decoded = decoded.reshape(decoded.shape[-3:])[:h, :w]
            planes.append(decoded)
        if not planes:
            tile = np.full((h, w, 3), 255, dtype=np.uint8)
        else:
            stacked = planes[0] if len(planes) == 1 else np.concatenate(planes, axis=-1)
            try:
                tile = np.ascontiguousarray(_to_rgb(stacked))
            except ValueError as exc:
                raise _slide_error(self.path, str(exc)) from exc
            if tile.shape[:2] != (h, w):
                raise _slide_error(self.path, f"tile {index} of level {li} decodes to {tile.shape[:2]}, not {(h, w)}")
        with self._cache_lock:  # decoding above runs unlocked, so threads decode different tiles in parallel
            if key not in self._cache:
                self._cache[key] = tile
                self._cache_bytes += tile.nbytes
            while self._cache_bytes > TILE_CACHE_BYTES and len(self._cache) > 1:
                _, old = self._cache.popitem(last=False)
                self._cache_bytes -= old.nbytes
        return tile

    def _read(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        lv = self._levels[level]
        out = np.empty((height, width, 3), dtype=np.uint8)
        for r in range(y // lv.seg_h, (y + height - 1) // lv.seg_h + 1):
            ty = r * lv.seg_h
            for c in range(x // lv.seg_w, (x + width - 1) // lv.seg_w + 1):
                tx = c * lv.seg_w
                tile = self._segment(level, r * lv.cols + c)
                sy0, sx0 = max(y, ty), max(x, tx)
                sy1, sx1 = min(y + height, ty + tile.shape[0]), min(x + width, tx + tile.shape[1])
                out[sy0 - y : sy1 - y, sx0 - x : sx1 - x] = tile[sy0 - ty : sy1 - ty, sx0 - tx : sx1 - tx]
        return out


def _plausible_mpp(value: float | None) -> float | None:
    if value is None or not math.isfinite(value) or not _MPP_RANGE[0] <= value <= _MPP_RANGE[1]:
        return None
    return float(value)


def _aperio_mpp(description: str) -> float | None:
    """``MPP = 0.2498`` from the pipe-separated key = value fields of an Aperio description."""
    match = re.search(r"\|\s*MPP\s*=\s*([0-9.eE+-]+)", description)
    if not match:
        return None
    try:
        return _plausible_mpp(float(match.group(1)))
    except ValueError:
        return None


_UNIT_TO_UM = {"µm": 1.0, "um": 1.0, "\u03bcm": 1.0, "nm": 1e-3, "mm": 1e3, "cm": 1e4, "m": 1e6, "pm": 1e-6}


def _ome_mpp(xml: str | None) -> float | None:
    """``PhysicalSizeX`` (and its unit, micrometres by default) of the first OME image."""
    if not xml:
        return None
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None
    for element in root.iter():
        if element.tag.rsplit("}", 1)[-1] != "Pixels":
            continue
        size = element.get("PhysicalSizeX") or element.get("PhysicalSizeY")
        if size is None:
            return None
        unit = element.get("PhysicalSizeXUnit", "µm")
        try:
            return _plausible_mpp(float(size) * _UNIT_TO_UM.get(unit, float("nan")))
        except ValueError:
            return None
    return None


def _resolution_mpp(page: Any) -> float | None:
    """um/px from XResolution / ResolutionUnit, if they describe a physical pixel (not a 72-dpi default)."""
    tag = page.tags.get(282)
    if tag is None:
        return None
    value = tag.value
    try:
        pixels_per_unit = value[0] / value[1] if isinstance(value, tuple) else float(value)
    except (TypeError, ZeroDivisionError, IndexError):
        return None
    if not pixels_per_unit > 0:
        return None
    unit = int(page.tags.valueof(296, 2))  # TIFF default unit: inch
    um_per_unit = {2: 25_400.0, 3: 10_000.0, 4: 1_000.0, 5: 1.0}.get(unit)  # 4, 5: mm, um (TIFF/EP)
    if um_per_unit is None:
        return None
    return _plausible_mpp(um_per_unit / pixels_per_unit)


def _level_pages(series: Any) -> list[Any]:
    """The first page of each level of a tifffile series, largest first."""
    levels = series.levels if series.levels else [series]
    pages = [lv.keyframe if lv.keyframe is not None else lv.pages[0] for lv in levels]
    return sorted(pages, key=lambda p: -int(p.imagelength) * int(p.imagewidth))


def _check_codecs(path: Path, pages: list[Any]) -> None:
    """Fail at open time, not mid-run, when a level's compression cannot be decoded here."""
    for page in pages:
        compression = int(page.compression)
        if compression == 1:
            continue
        try:
            tifffile.TIFF.DECOMPRESSORS[compression]
        except KeyError as exc:
            try:
                name = tifffile.COMPRESSION(compression).name
            except ValueError:
                name = f"compression {compression}"
            raise InputError(
                f"{path}: {name}-compressed tiles cannot be decoded ({_one_line(exc)})",
                hint=IMAGECODECS_HINT if "imagecodecs" in str(exc) else OPENSLIDE_HINT,
            ) from exc


def _open_tiff(path: Path, mpp: float | None) -> Slide:
    try:
        tif = tifffile.TiffFile(path)
    except Exception as exc:  # not a TIFF, truncated header, ...: one line naming the file
        raise _slide_error(path, _one_line(exc), hint="is the file complete and a TIFF-based slide?") from exc
    try:
        return _tiff_slide(path, tif, mpp)
    except _UseOpenSlide as exc:
        tif.close()
        return _open_openslide(path, exc.label, mpp)
    except BaseException:
        tif.close()
        raise


class _UseOpenSlide(Exception):
    """A TIFF that tifffile opens but cannot read as a pyramid (Philips): hand it to OpenSlide."""

    def __init__(self, label: str) -> None:
        super().__init__(label)
        self.label = label


def _tiff_slide(path: Path, tif: tifffile.TiffFile, mpp: float | None) -> Slide:
    try:
        series_list = tif.series
        if not series_list:
            raise ValueError("no image data in file")
        series = series_list[0]
        pages = _level_pages(series)
        axes = series.axes
    except InputError:
        raise
    except Exception as exc:
        raise _slide_error(path, _one_line(exc), hint="is the file complete and a TIFF-based slide?") from exc
    if tif.is_philips and len(pages) == 1:
        raise _UseOpenSlide("Philips TIFF")
    for axis in "C":
        if axis in axes and series.shape[axes.index(axis)] > 1:
            raise _slide_error(path, f"a multichannel image (axes {axes}) is not a brightfield slide")
    first = pages[0]
    if first.samplesperpixel not in (1, 2, 3, 4) or getattr(first, "imagedepth", 1) > 1:
        raise _slide_error(path, f"unsupported layout ({first.samplesperpixel} samples per pixel, axes {axes})")
    _check_codecs(path, pages)
    if tif.is_svs:
        fmt, mpp_meta = "aperio", _aperio_mpp(first.description or tif.pages.first.description or "")
    elif tif.is_ome:
        fmt, mpp_meta = "ome", _ome_mpp(tif.ome_metadata)
    else:
        fmt, mpp_meta = "tiff", _resolution_mpp(first)
    if mpp_meta is None and fmt != "tiff":
        mpp_meta = _resolution_mpp(first)
    try:
        slide = TiffSlide(path, tif, fmt, pages, mpp_meta, mpp)
    except ValueError as exc:
        raise _slide_error(path, _one_line(exc)) from exc
    log.debug("opened %r", slide)
    return slide


# --------------------------------------------------------------------------------------------------- OpenSlide


def _import_openslide() -> ModuleType | None:
    """``openslide`` if installed (it is optional), else None; a function so tests can pretend it is absent."""
    try:
        import openslide  # type: ignore[import-not-found]
    except (ImportError, OSError):  # OSError: the Python package without its shared library
        return None
    return openslide


def _needs_openslide(path: Path, label: str) -> InputError:
    return InputError(f"{path}: {label} slides need OpenSlide", hint=OPENSLIDE_HINT)


class OpenSlideSlide(Slide):
    """A slide read through OpenSlide, for the vendor formats tifffile does not cover."""

    def __init__(self, path: Path, handle: Any, mpp: float | None) -> None:
        self._osr = handle
        levels = [(int(h), int(w)) for w, h in handle.level_dimensions]
        props = handle.properties
        try:
            mpp_meta = _plausible_mpp(float(props.get("openslide.mpp-x")))
        except (TypeError, ValueError):
            mpp_meta = None
        super().__init__(path, str(props.get("openslide.vendor") or "openslide"), levels, mpp_meta, mpp)
        self.downsamples = [float(d) for d in handle.level_downsamples]

    def close(self) -> None:
        self._osr.close()

    def _read(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        ds = self.downsamples[level]
        try:
            image = self._osr.read_region((round(x * ds), round(y * ds)), level, (width, height))
        except Exception as exc:
            raise _slide_error(self.path, _one_line(exc)) from exc
        rgba = np.asarray(image, dtype=np.float32)
        alpha = rgba[..., 3:4] / 255.0  # OpenSlide returns straight alpha; transparent = no data, shown white
        return np.rint(rgba[..., :3] * alpha + 255.0 * (1.0 - alpha)).astype(np.uint8)


def _open_openslide(path: Path, label: str, mpp: float | None) -> Slide:
    module = _import_openslide()
    if module is None:
        raise _needs_openslide(path, label)
    try:
        handle = module.OpenSlide(str(path))
    except Exception as exc:
        raise _slide_error(path, _one_line(exc)) from exc
    return OpenSlideSlide(path, handle, mpp)


# --------------------------------------------------------------------------------------------------- entry points


def _check_path(path: Path) -> None:
    if not path.exists():
        raise _slide_error(path, "file does not exist", hint="check the path and its spelling")
    if path.is_dir() and path.suffix.lower() != ".mrxs":
        raise _slide_error(path, "it is a directory, not a slide file")
    if path.is_file() and path.stat().st_size == 0:
        raise _slide_error(path, "file is empty (0 bytes)", hint="the file was probably not fully copied")


def open_slide(path: str | os.PathLike[str], *, mpp: float | None = None) -> Slide:
    """Open a whole-slide image for lazy reading; ``mpp`` (um/px at level 0) overrides the file's own value."""
    path = Path(path)
    if mpp is not None and not (math.isfinite(mpp) and mpp > 0):
        raise InputError(f"--mpp must be a positive number of micrometres per pixel, got {mpp}")
    _check_path(path)
    label = OPENSLIDE_FORMATS.get(path.suffix.lower())
    if label is not None:
        return _open_openslide(path, label, mpp)
    return _open_tiff(path, mpp)


def _tiff_levels(path: Path) -> tuple[bool, list[tuple[int, int]], bool] | None:
    """(tiled, level sizes, is Aperio) of a TIFF's first series; None if it is not a readable TIFF."""
    try:
        with tifffile.TiffFile(path) as tif:
            pages = _level_pages(tif.series[0])
            sizes = [(int(p.imagelength), int(p.imagewidth)) for p in pages]
            return bool(pages[0].is_tiled), sizes, bool(tif.is_svs)
    except Exception:  # anything unreadable is simply not a slide here; open_slide reports the details
        return None


def is_slide(path: str | os.PathLike[str]) -> bool:
    """Cheap routing check: a slide extension, an Aperio TIFF, or a big tiled pyramid (IFDs only, no pixels)."""
    path = Path(path)
    if path.suffix.lower() in SLIDE_EXTENSIONS:
        return True
    if not path.is_file():
        return False
    try:
        with path.open("rb") as handle:
            if handle.read(4) not in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
                return False
    except OSError:
        return False
    info = _tiff_levels(path)
    if info is None:
        return False
    tiled, sizes, aperio = info
    return aperio or (tiled and len(sizes) > 1 and max(sizes[0]) > IS_SLIDE_MIN_SIDE)


__all__ = [
    "OPENSLIDE_HINT",
    "SLIDE_EXTENSIONS",
    "OpenSlideSlide",
    "Slide",
    "TiffSlide",
    "is_slide",
    "open_slide",
]
