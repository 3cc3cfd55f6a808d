"""Stream rows of large ``.npy`` files in and out with plain file reads and writes, so memory stays flat.

PanNuke ships about 8 GB of float64 masks per fold. A memory map would do, except that every touched page counts
towards the process' resident size; page-cache pages read with ``readinto`` do not. So readers here fill one
reused buffer a chunk of rows at a time, and :class:`NpyWriter` writes the header first and appends rows.
Errors name the file; the error class is the caller's (a damaged dataset and a damaged metrics input are
different user errors).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from histostain.errors import HistostainError, InputError


@dataclass(frozen=True)
class NpyInfo:
    """Shape, dtype and data offset of a C-order ``.npy`` file, read from its header."""

    path: Path
    shape: tuple[int, ...]
    dtype: np.dtype
    offset: int

    @property
    def row_bytes(self) -> int:
        return int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize


def inspect_npy(path: Path, label: str, error: type[HistostainError] = InputError, hint: str | None = None) -> NpyInfo:
    """Read the header of ``path`` without reading its data; a bad file raises ``error`` naming ``label``.

    Object (pickled) arrays, truncated files and Fortran-order arrays are refused.
    """
    try:
        mapped = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as exc:
        text = str(exc)
        if "pickle" in text.lower() or "object" in text.lower():
            reason = "holds Python objects (a pickled object array); expected a plain numeric/unicode array"
        elif "mmap length" in text or "larger than" in text or "cannot reshape" in text:
            reason = "is truncated (the file is shorter than its header says)"
        else:
            reason = f"is not a readable .npy file ({text.splitlines()[0] if text else type(exc).__name__})"
        raise error(f"{label}: {reason}", hint=hint) from exc
    except (OSError, EOFError) as exc:
        raise error(f"{label}: is not a readable .npy file ({exc})", hint=hint) from exc
    if not isinstance(mapped, np.memmap):  # zero-size arrays are not mapped
        return NpyInfo(Path(path), tuple(mapped.shape), mapped.dtype, 0)
    if mapped.ndim > 1 and not mapped.flags.c_contiguous:
        raise error(
            f"{label}: stored in Fortran order; expected C order",
            hint="re-save it with numpy.save(path, numpy.ascontiguousarray(array))",
        )
    info = NpyInfo(Path(path), tuple(mapped.shape), mapped.dtype, int(mapped.offset))
    del mapped
    return info


class NpyChunkReader:
    """Read rows ``[start, stop)`` of a C-order ``.npy`` file into one reused buffer of ``rows`` rows.

    The returned array is a view of the buffer: valid until the next :meth:`read`.
    """

    def __init__(
        self, info: NpyInfo, label: str, rows: int, error: type[HistostainError] = InputError, hint: str | None = None
    ) -> None:
        self.info = info
        self.label = label
        self.error = error
        self.hint = hint
        self.buffer: np.ndarray | None = np.empty((max(rows, 1), *info.shape[1:]), dtype=info.dtype)
        self.handle: IO[bytes] = info.path.open("rb")

    def read(self, start: int, stop: int) -> np.ndarray:
        assert self.buffer is not None, "read after close"
        count = stop - start
        if count > self.buffer.shape[0]:
            raise ValueError(f"{count} rows asked of a {self.buffer.shape[0]}-row buffer")
        view = self.buffer[:count]
        self.handle.seek(self.info.offset + start * self.info.row_bytes)
        got = self.handle.readinto(memoryview(view.reshape(-1).view(np.uint8)))
        if got != count * self.info.row_bytes:
            raise self.error(f"{self.label}: truncated at row {start}", hint=self.hint)
        return view

    def close(self) -> None:
        self.handle.close()
        self.buffer = None  # release the memory now, not when the last reference goes

    def __enter__(self) -> NpyChunkReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class NpyWriter:
    """Write a C-order ``.npy`` file of known shape by appending rows (header first), so memory stays flat."""

    def __init__(self, path: Path, dtype: Any, shape: tuple[int, ...]) -> None:
        self.path = path
        self.dtype = np.dtype(dtype)
        self.shape = shape
        self.written = 0
        path.parent.mkdir(parents=True, exist_ok=True)
        self.handle: IO[bytes] = path.open("wb")
        header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False, "shape": shape}
        np.lib.format.write_array_header_1_0(self.handle, header)

    def append(self, rows: Any) -> None:
        rows = np.ascontiguousarray(rows, dtype=self.dtype)
        if rows.shape[1:] != self.shape[1:] or self.written + rows.shape[0] > self.shape[0]:
            raise ValueError(f"{self.path}: rows of shape {rows.shape} do not fit {self.shape} at {self.written}")
        self.handle.write(memoryview(rows.reshape(-1).view(np.uint8)))
        self.written += rows.shape[0]

    def close(self) -> None:
        """Finish the file; fewer rows than the header promised is an error (the file would be unreadable)."""
        if self.handle.closed:
            return
        self.handle.close()
        if self.written != self.shape[0]:
            raise ValueError(f"{self.path}: wrote {self.written} of {self.shape[0]} rows")

    def abort(self) -> None:
        """Close without the row check (the caller is discarding the file, e.g. after an error)."""
        self.handle.close()


class NpyRows:
    """Rows (axis 0) of a C-order ``.npy`` file as a read-only sequence: ``len``, ``shape``, ``dtype``, ``ndim``
    and ``rows[i]`` (a fresh copy), read a chunk at a time on first need, so memory stays at one chunk."""

    def __init__(self, path: Path, what: str, chunk: int = 16) -> None:
        if not Path(path).is_file():
            raise InputError(f"{what} not found: {path}")
        self.info = inspect_npy(Path(path), str(path), hint="expected a plain numeric .npy array")
        if not self.info.shape:
            raise InputError(f"{path}: holds a scalar; expected an array of images")
        self.path = self.info.path
        self.shape = self.info.shape
        self.dtype = self.info.dtype
        self.ndim = len(self.shape)
        self._chunk = max(1, chunk)
        self._reader: NpyChunkReader | None = None
        self._start = self._stop = 0
        self._rows: np.ndarray | None = None

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: int) -> np.ndarray:
        if not 0 <= index < self.shape[0]:
            raise IndexError(f"row {index} of {self.shape[0]}")
        if self._rows is None or not self._start <= index < self._stop:
            if self._reader is None:
                self._reader = NpyChunkReader(self.info, str(self.path), self._chunk)
            stop = min(index + self._chunk, self.shape[0])
            self._rows = self._reader.read(index, stop)
            self._start, self._stop = index, stop
        return self._rows[index - self._start].copy()

    def close(self) -> None:
        if getattr(self, "_reader", None) is not None:  # also safe on an object whose __init__ raised
            self._reader.close()
            self._reader = None
        self._rows = None
        self._start = self._stop = 0

    def __del__(self) -> None:
        self.close()


__all__ = ["NpyChunkReader", "NpyInfo", "NpyRows", "NpyWriter", "inspect_npy"]
