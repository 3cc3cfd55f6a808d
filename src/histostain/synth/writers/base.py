"""What every layout writer shares: the per-tile plan, the writer interface and a streaming .npy writer."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from histostain.synth.generate import DEFAULT_MPP, SynthTile


@dataclass
class TileSpec:
    """How to generate and where to put tile ``index`` of a run."""

    index: int
    size: int = 256
    mpp: float = DEFAULT_MPP
    her2: int | None = None
    kind: str | None = None
    empty: bool = False
    inflammation: float = 1.0
    marker: str = "her2"
    extra: dict[str, Any] = field(default_factory=dict)


class LayoutWriter(ABC):
    """Base class: ``plan()`` the tiles, ``add()`` each generated tile, ``close()`` at the end."""

    name = ""

    def __init__(self, root: Path, n: int, size: int | None, seed: int, quirks: bool, **options: Any) -> None:
        self.root = root
        self.n = n
        self.size = size
        self.seed = seed
        self.quirks = quirks
        self.options = options
        self.files_written = 0
        self.quirk_records: list[dict[str, Any]] = []

    @staticmethod  # noqa: B027 (an optional hook: the default accepts everything)
    def validate(n: int, size: int | None, quirks: bool, **options: Any) -> None:
        """Raise ConfigError for option combinations this layout cannot write."""

    @abstractmethod
    def plan(self) -> list[TileSpec]:
        """The tiles to generate, in order (seed, size, kind, HER2 score, ...)."""

    @abstractmethod
    def add(self, spec: TileSpec, tile: SynthTile) -> None:
        """Write one generated tile in this layout."""

    def close(self) -> None:  # noqa: B027 (optional hook)
        """Write whatever is written once at the end (lists, headers, readmes)."""

    def abort(self) -> None:  # noqa: B027 (optional hook)
        """Release open files after a failure (the staging folder is then removed)."""

    def write_text(self, relative: str, text: str) -> Path:
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        self.files_written += 1
        return path


class NpyStream:
    """Write a C-order .npy file of known shape tile by tile, so memory stays flat whatever the count."""

    def __init__(self, path: Path, dtype: np.dtype | type, shape: tuple[int, ...]) -> None:
        self.path = path
        self.dtype = np.dtype(dtype)
        self.shape = shape
        self.written = 0
        path.parent.mkdir(parents=True, exist_ok=True)
        self._handle: IO[bytes] | None = path.open("wb")
        header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False, "shape": shape}
        np.lib.format.write_array_header_1_0(self._handle, header)

    def append(self, item: np.ndarray) -> None:
        if self._handle is None:
            raise ValueError(f"{self.path} is closed")
        if item.shape != self.shape[1:]:
            raise ValueError(f"expected an item of shape {self.shape[1:]}, got {item.shape}")
        if self.written >= self.shape[0]:
            raise ValueError(f"{self.path} already holds {self.shape[0]} items")
        self._handle.write(np.ascontiguousarray(item, dtype=self.dtype).tobytes())
        self.written += 1

    def close(self) -> None:
        if self._handle is None:
            return
        handle, self._handle = self._handle, None
        handle.close()
        if self.written != self.shape[0]:
            raise ValueError(f"{self.path}: wrote {self.written} of {self.shape[0]} items")
