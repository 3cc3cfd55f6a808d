"""Tiled pyramidal OME-TIFF in bounded memory: what `translate` writes for a whole slide.

A slide-sized image never exists as one array here. Its pixels live in *raster files*: raw ``H x W x 3``
uint8 files on disk (:class:`RasterFile`), written and read by rows with ``os.pwrite``/``os.pread`` (no
``mmap``: mapped pages would count in the process's resident memory as it walks the file). Whoever produces
the pixels writes them into the level-0 raster piece by piece; :func:`build_levels` then makes each
sub-resolution from the one above, band by band (2x area average, odd last rows/columns dropped, as
``cv2.INTER_AREA`` with an exact factor of 2), into further raster files; :func:`write_ome_pyramid` feeds
tifffile one tile at a time from them. Memory is a band of tiles (a few MB) whatever the slide's size.

The layout is the one QuPath (Bio-Formats), tifffile and histostain's own ``open_slide`` read as a pyramid:
level 0 as the first IFD with the OME-XML (``PhysicalSizeX/Y`` in µm), the sub-resolutions as its SubIFDs
(``NewSubfileType = 1``), halving until the longer side is at most ~1,024 px; 512 x 512 tiles, RGB; JPEG
(quality 90, what scanners use) or lossless zlib with a horizontal predictor. BigTIFF past 2 GB of pixels.

The bytes are deterministic: the OME UUID is derived from what the caller passes as ``identity`` (not from
the clock), no date is written, and tiles are encoded in order.
"""

from __future__ import annotations

import contextlib
import math
import os
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from histostain.errors import ConfigError
from histostain.runtime.progress import ProgressTask, progress_task

TILE = 512  # tile side of every level (a multiple of 16, as TIFF requires)
MAX_TOP_SIDE = 1024  # sub-resolutions halve until the longer side is at most this
JPEG_QUALITY = 90
COMPRESSIONS = ("jpeg", "zlib")
DEFAULT_COMPRESSION = "jpeg"
BAND_BYTES = 8 * 2**20  # pixels read at once when encoding tiles or building a level (a band of tiles)
BIGTIFF_BYTES = 2**31  # uncompressed level-0 size above which the file is written as BigTIFF
ENCODE_BUFFER_BYTES = 32 * 2**20  # raw tiles tifffile may hold while its threads encode them
_UUID_NAMESPACE = uuid.UUID("6f0e3f4c-2a8e-4d0b-9f1e-5c1b7a0d2e15")  # histostain OME-TIFF outputs


def check_compression(compression: str) -> str:
    """``jpeg`` or ``zlib`` (case-insensitive), else a one-line ConfigError."""
    value = str(compression).strip().lower()
    if value not in COMPRESSIONS:
        raise ConfigError(
            f"--compression {compression}: unknown",
            hint="use jpeg (quality 90, as scanners do) or zlib (lossless, larger files)",
        )
    return value


class RasterFile:
    """A raw ``height x width x 3`` uint8 image in a file, row-major, read and written by positional I/O.

    Created sparse (``ftruncate``) when missing or of another size; an existing file of the right size is
    opened as it is (a resumed run keeps the pixels written before). Regions outside the image are refused.
    """

    def __init__(self, path: str | os.PathLike[str], height: int, width: int) -> None:
        self.path = Path(path)
        self.height, self.width = int(height), int(width)
        if self.height < 1 or self.width < 1:
            raise ValueError(f"raster size must be positive, got {self.height} x {self.width}")
        self.row_bytes = self.width * 3
        self.nbytes = self.height * self.row_bytes
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        if os.fstat(self._fd).st_size != self.nbytes:
            os.ftruncate(self._fd, 0)
            os.ftruncate(self._fd, self.nbytes)

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.height, self.width, 3

    def _check(self, y: int, x: int, h: int, w: int) -> None:
        if y < 0 or x < 0 or h < 0 or w < 0 or y + h > self.height or x + w > self.width:
            raise ValueError(f"region {x},{y} {w}x{h} outside the {self.width} x {self.height} raster {self.path}")

    def write(self, y: int, x: int, pixels: np.ndarray) -> None:
        """Store ``pixels`` (``h x w x 3`` uint8) with its top-left corner at row ``y``, column ``x``."""
        pixels = np.ascontiguousarray(pixels, dtype=np.uint8)
        h, w = pixels.shape[:2]
        self._check(y, x, h, w)
        if w == self.width:  # whole rows: one contiguous run of the file
            self._pwrite(memoryview(pixels).cast("B"), y * self.row_bytes)
            return
        for r in range(h):
            self._pwrite(memoryview(pixels[r]).cast("B"), (y + r) * self.row_bytes + x * 3)

    def read(self, y: int, x: int, h: int, w: int) -> np.ndarray:
        """The ``h x w x 3`` pixels at row ``y``, column ``x`` (a new array)."""
        self._check(y, x, h, w)
        out = np.empty((h, w, 3), dtype=np.uint8)
        if w == self.width:
            self._pread(memoryview(out).cast("B"), y * self.row_bytes)
            return out
        for r in range(h):
            self._pread(memoryview(out[r]).cast("B"), (y + r) * self.row_bytes + x * 3)
        return out

    def _pwrite(self, data: memoryview, offset: int) -> None:
        while len(data):
            written = os.pwrite(self._fd, data, offset)
            data, offset = data[written:], offset + written

    def _pread(self, buffer: memoryview, offset: int) -> None:
        while len(buffer):
            got = os.preadv(self._fd, [buffer], offset)
            if got <= 0:
                raise OSError(f"{self.path}: unexpected end of file at byte {offset}")
            buffer, offset = buffer[got:], offset + got

    def flush(self) -> None:
        """Force the pixels written so far to the disk (called before a chunk is recorded as done)."""
        os.fdatasync(self._fd)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> RasterFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:  # a dropped raster must not leak its descriptor
        with contextlib.suppress(Exception):  # interpreter shutdown
            self.close()


def pyramid_shapes(height: int, width: int, max_side: int = MAX_TOP_SIDE) -> list[tuple[int, int]]:
    """``(height, width)`` of level 0 and of each 2x sub-resolution until the longer side is <= ``max_side``."""
    shapes = [(int(height), int(width))]
    while max(shapes[-1]) > max_side and min(shapes[-1]) >= 2:
        h, w = shapes[-1]
        shapes.append((h // 2, w // 2))
    return shapes


def downscale2(pixels: np.ndarray) -> np.ndarray:
    """2x area average of ``pixels`` (odd last row/column dropped); each output is ``(a + b + c + d + 2) // 4``.

    ``cv2.INTER_AREA`` with an exact factor of 2 computes exactly this, and fast; the tests check it against
    the formula.
    """
    h, w = pixels.shape[0] // 2, pixels.shape[1] // 2
    even = np.ascontiguousarray(pixels[: 2 * h, : 2 * w])
    return cv2.resize(even, (w, h), interpolation=cv2.INTER_AREA)


def _band_width(rows: int, width: int, multiple: int) -> int:
    """Columns read at once for ``rows`` rows so a band stays near BAND_BYTES (a multiple of ``multiple``)."""
    cols = max(multiple, (BAND_BYTES // max(1, rows * 3)) // multiple * multiple)
    return min(width, cols)


def build_levels(
    level0: RasterFile, folder: str | os.PathLike[str], max_side: int = MAX_TOP_SIDE, *, progress: bool = True
) -> list[RasterFile]:
    """Level 0 and its 2x sub-resolutions as raster files (``folder/level<i>.raw``), built band by band."""
    shapes = pyramid_shapes(level0.height, level0.width, max_side)
    levels = [level0]
    total = sum(math.ceil(h / TILE) for h, _ in shapes[1:])
    with progress_task("downsampling", total=total, unit="band") if progress else _null_task() as task:
        for index, (h, w) in enumerate(shapes[1:], start=1):
            source = levels[-1]
            target = RasterFile(Path(folder) / f"level{index}.raw", h, w)
            band = _band_width(2 * TILE, w, TILE)
            for y in range(0, h, TILE):
                rows = min(TILE, h - y)
                for x in range(0, w, band):
                    cols = min(band, w - x)
                    target.write(y, x, downscale2(source.read(2 * y, 2 * x, 2 * rows, 2 * cols)))
                task.advance()
            levels.append(target)
    return levels


class _NullTask:
    """A progress task that shows nothing (``progress=False``)."""

    def advance(self, n: int = 1, status: str | None = None) -> None:
        pass


def _null_task() -> contextlib.AbstractContextManager[_NullTask]:
    return contextlib.nullcontext(_NullTask())


def iter_tiles(
    raster: RasterFile, tile: int = TILE, task: ProgressTask | _NullTask | None = None
) -> Iterator[np.ndarray]:
    """The raster's ``tile x tile`` tiles in row-major order, edge tiles padded by repeating the edge pixels
    (so JPEG blocks across the image border do not ring), reading one band of tiles at a time."""
    band = _band_width(tile, raster.width, tile)
    for ty in range(0, raster.height, tile):
        rows = min(tile, raster.height - ty)
        for bx in range(0, raster.width, band):
            pixels = raster.read(ty, bx, rows, min(band, raster.width - bx))
            for tx in range(0, pixels.shape[1], tile):
                part = pixels[:, tx : tx + tile]
                if part.shape[:2] != (tile, tile):
                    part = np.pad(part, ((0, tile - part.shape[0]), (0, tile - part.shape[1]), (0, 0)), mode="edge")
                if task is not None:
                    task.advance()  # before the yield: tifffile never asks past a level's last tile
                yield part


def _ome_metadata(mpp: float | None, name: str, identity: str) -> dict[str, Any]:
    from histostain import __version__

    metadata: dict[str, Any] = {
        "axes": "YXS",
        "Name": name,
        "Creator": f"histostain {__version__}",
        "UUID": f"urn:uuid:{uuid.uuid5(_UUID_NAMESPACE, identity)}",
    }
    if mpp is not None:
        metadata.update(
            PhysicalSizeX=float(mpp), PhysicalSizeY=float(mpp), PhysicalSizeXUnit="µm", PhysicalSizeYUnit="µm"
        )
    return metadata


def write_ome_pyramid(
    path: str | os.PathLike[str],
    levels: Sequence[RasterFile],
    *,
    mpp: float | None,
    compression: str = DEFAULT_COMPRESSION,
    quality: int = JPEG_QUALITY,
    name: str = "image",
    identity: str = "",
    progress: bool = True,
) -> Path:
    """Write ``levels`` (level 0 first, each half the previous) as a tiled pyramidal OME-TIFF at ``path``.

    ``mpp``: level 0's um/px (None: no physical size); ``identity``: text the OME UUID is derived from (the
    same input must give the same bytes). ``path`` is written directly: callers wrap it in ``atomic_path``.
    """
    import tifffile

    compression = check_compression(compression)
    if not 1 <= int(quality) <= 100:
        raise ConfigError(f"JPEG quality {quality}: must be 1-100", hint=f"the default is {JPEG_QUALITY}")
    codec: dict[str, Any]
    if compression == "jpeg":
        codec = {"compression": "jpeg", "compressionargs": {"level": int(quality)}}
    else:
        codec = {"compression": "zlib", "compressionargs": {"level": 6}, "predictor": True}
    base = levels[0]
    bigtiff = base.nbytes > BIGTIFF_BYTES
    total = sum(math.ceil(lv.height / TILE) * math.ceil(lv.width / TILE) for lv in levels)
    workers = max(1, min(4, os.cpu_count() or 1))
    common: dict[str, Any] = {
        "photometric": "rgb",
        "tile": (TILE, TILE),
        "dtype": np.uint8,
        "resolutionunit": "CENTIMETER",
        "maxworkers": workers,
        "buffersize": ENCODE_BUFFER_BYTES,
        **codec,
    }
    with (
        progress_task("writing pyramid", total=total, unit="tile") if progress else _null_task() as task,
        tifffile.TiffWriter(path, bigtiff=bigtiff, ome=True) as tw,
    ):
        for index, level in enumerate(levels):
            options = dict(common)
            if mpp is not None:
                per_cm = 1e4 / (mpp * base.width / level.width)
                options["resolution"] = (per_cm, per_cm)
            if index == 0:
                options.update(subifds=len(levels) - 1, metadata=_ome_metadata(mpp, name, identity))
            else:
                options.update(subfiletype=1, metadata=None)
            tw.write(iter_tiles(level, TILE, task), shape=level.shape, **options)
    return Path(path)


def write_array_pyramid(
    path: str | os.PathLike[str],
    rgb: np.ndarray,
    scratch: str | os.PathLike[str],
    *,
    mpp: float | None,
    compression: str = DEFAULT_COMPRESSION,
    quality: int = JPEG_QUALITY,
    name: str = "image",
    identity: str = "",
    progress: bool = False,
) -> Path:
    """Convenience for images that do fit in memory (tests, small outputs): through raster files in ``scratch``."""
    folder = Path(scratch)
    folder.mkdir(parents=True, exist_ok=True)
    base = RasterFile(folder / "level0.raw", rgb.shape[0], rgb.shape[1])
    levels: list[RasterFile] = []
    try:
        base.write(0, 0, rgb)
        levels = build_levels(base, folder, progress=progress)
        return write_ome_pyramid(
            path,
            levels,
            mpp=mpp,
            compression=compression,
            quality=quality,
            name=name,
            identity=identity,
            progress=progress,
        )
    finally:
        for level in levels or [base]:
            level.close()


__all__ = [
    "COMPRESSIONS",
    "DEFAULT_COMPRESSION",
    "JPEG_QUALITY",
    "MAX_TOP_SIDE",
    "TILE",
    "RasterFile",
    "build_levels",
    "check_compression",
    "downscale2",
    "iter_tiles",
    "pyramid_shapes",
    "write_array_pyramid",
    "write_ome_pyramid",
]
