"""What every layout writer shares: the per-tile plan, the writer interface and a streaming .npy writer."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
