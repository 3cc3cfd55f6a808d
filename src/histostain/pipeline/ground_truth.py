"""Ground-truth nuclei of the pipeline's images: a folder of annotation files or a prepared EndoNuke dataset.

The same sources as ``evaluate celldet`` (``metrics.detection_sources.resolve_side``), looked up per image by
its key as the batch engine names it (``sub/tile_01``), else by its file stem (``tile_01``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from histostain.metrics.detection import ImagePoints
from histostain.metrics.detection_sources import read_points, resolve_side


@dataclass
class GroundTruth:
    """Annotation files by stem, where they came from and their um/px when the dataset says it."""

    files: dict[str, Path]
    source: str
    mpp: float | None = None
    warnings: list[str] = field(default_factory=list)

    @classmethod
    def open(cls, path: Path, split: str | None = None) -> GroundTruth:
        """The annotations at ``path`` (a prepared EndoNuke folder: ``split``, default test, ``all`` pools)."""
        warnings: list[str] = []
        side = resolve_side(Path(path), "true", split, warnings)
        return cls(dict(side.files), side.source, side.mpp, warnings)

    def file_for(self, key: PurePosixPath | str) -> Path | None:
        key = PurePosixPath(str(key))
        return self.files.get(str(key)) or self.files.get(key.name)

    def points(self, key: PurePosixPath | str) -> ImagePoints | None:
        """The true centroids of one image, or None when it has no annotation file."""
        path = self.file_for(key)
        return None if path is None else read_points(path)


__all__ = ["GroundTruth"]
