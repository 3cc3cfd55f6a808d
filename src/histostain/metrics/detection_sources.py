"""Annotation files as points, one side of a cell-detection evaluation: folders, hover_net output, prepared EndoNuke.

Everything here finds and reads inputs, and nothing scores: :func:`resolve_side` turns a path into the side's
annotation files by stem (and what it knows about them: resolution, class names), :func:`read_points` turns one
file into :class:`~histostain.metrics.detection.ImagePoints`. Problems with the files are
:class:`~histostain.errors.InputError` naming the file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from histostain.errors import DatasetLayoutError, InputError
from histostain.metrics.detection import ImagePoints
from histostain.metrics.splits import SplitChoice, check_split_applies, choose_split
from histostain.vocabulary import ENDONUKE_CLASS_NAMES

# Annotation extensions, in the order that wins when one folder holds the same stem twice.
ANNOTATION_SUFFIXES = (".json", ".geojson", ".txt", ".csv")


@dataclass
class AnnotationSide:
    """One side's annotation files by stem (sorted), where they came from, and what to tell the user."""

    files: dict[str, Path]
    source: str
    kind: str  # "files", "hovernet-json-subfolder", "prepared-endonuke", "file"
    mpp: float | None = None
    class_names: dict[int, str] | None = None
    split: SplitChoice | None = None  # prepared data: the split(s) read


# Files histostain writes beside annotations that are not annotations: run records and segment summaries.
RUN_FILES = re.compile(r"(segment|pipeline|translate)(\.part-\d+-of-\d+)?\.json|summary(\.part-\d+-of-\d+)?\.csv")


def _annotation_files(folder: Path, warnings: list[str]) -> dict[str, Path]:
    """Annotation files directly in ``folder`` by stem; a stem present twice keeps the preferred extension.

    A ``segment`` output folder holds each image's nuclei as .json, .geojson and .txt (the same nuclei): one
    warning says which one is read, not one per image. Run records and summaries are not annotations.
    """
    by_stem: dict[str, list[Path]] = {}
    for path in sorted(folder.iterdir()):
        suffix = path.suffix.lower()
        if path.name.startswith(".") or suffix not in ANNOTATION_SUFFIXES or not path.is_file():
            continue
        if RUN_FILES.fullmatch(path.name):
            continue
        by_stem.setdefault(path.stem, []).append(path)
    found: dict[str, Path] = {}
    repeated: dict[tuple[str, ...], list[str]] = {}
    for stem, paths in sorted(by_stem.items()):
        paths.sort(key=lambda p: ANNOTATION_SUFFIXES.index(p.suffix.lower()))
        found[stem] = paths[0]
        if len(paths) > 1:
            repeated.setdefault(tuple(p.suffix.lower() for p in paths), []).append(stem)
    for suffixes, stems in repeated.items():
        example = ", ".join(f"{stems[0]}{suffix}" for suffix in suffixes)
        warnings.append(
            f"{folder}: {len(stems)} image(s) have their annotations in {len(suffixes)} formats (e.g. {example}); "
            f"reading the {suffixes[0]} file of each"
        )
    return found


def resolve_side(path: Path, role: str, split: str | None, warnings: list[str]) -> AnnotationSide:
    """Find the annotation files of one side: a file, a folder, its ``json/`` subfolder or a prepared EndoNuke.

    ``split`` picks the split of a prepared folder (:func:`~histostain.metrics.splits.choose_split`: default
    test, ``"all"`` pools); given for anything else it is refused. Notes about the inputs (a stem present
    twice, an ignored ``json/`` subfolder) are appended to ``warnings``.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{role} annotations not found: {path}", hint="check the path")
    if role == "true" and path.is_dir() and (path / "manifest.json").is_file():
        return _prepared_endonuke(path, split)
    check_split_applies(split, path)
    if path.is_file():
        if path.suffix.lower() not in ANNOTATION_SUFFIXES:
            raise InputError(
                f"{path}: not an annotation file (extension {path.suffix or '(none)'!r})",
                hint=f"use {', '.join(ANNOTATION_SUFFIXES)} files or a folder of them",
            )
        return AnnotationSide({path.stem: path}, str(path), "file")
    files = _annotation_files(path, warnings)
    json_dir = path / "json"
    if json_dir.is_dir():
        nested = _annotation_files(json_dir, warnings)
        if nested and not files:
            return AnnotationSide(nested, str(json_dir), "hovernet-json-subfolder")
        if nested:
            warnings.append(f"{path}: using its own files; the json/ subfolder is ignored")
    if not files:
        raise InputError(
            f"no annotation files ({', '.join(ANNOTATION_SUFFIXES)}) in {path}",
            hint="pass the folder that holds the files (hover_net: its output folder or json/ subfolder)",
        )
    return AnnotationSide(files, str(path), "files")


def _prepared_endonuke(folder: Path, split: str | None) -> AnnotationSide:
    from histostain.datasets.prepared import load_prepared

    manifest = load_prepared(folder)
    if manifest.dataset != "endonuke":
        raise InputError(
            f"{folder} holds prepared {manifest.dataset!r} data; celldet reads prepared EndoNuke ground truth",
            hint="pass a prepared EndoNuke folder or a folder of annotation files",
        )
    choice = choose_split(folder, list(manifest.splits), split)
    files: dict[str, Path] = {}
    for sample in manifest.samples:
        if sample["split"] not in choice.splits:
            continue
        label = folder / sample["split"] / "labels" / f"{sample['id']}.txt"
        if not label.is_file():
            raise DatasetLayoutError(f"{label}: listed in {folder / 'manifest.json'} but missing")
        if str(sample["id"]) in files:  # pooled splits pair by id: an id in two splits would be ambiguous
            raise DatasetLayoutError(f"{folder / 'manifest.json'}: sample id {sample['id']!r} is listed twice")
        files[str(sample["id"])] = label
    mpp = manifest.options.get("mpp")
    return AnnotationSide(
        dict(sorted(files.items())),
        f"{folder} ({choice.label})",
        "prepared-endonuke",
        float(mpp) if mpp else None,
        dict(ENDONUKE_CLASS_NAMES),
        choice,
    )


def read_points(path: Path) -> ImagePoints:
    """The centroids of one annotation file, with their classes (-1 where a nucleus has none) and scores."""
    from histostain.io.annotations import read_annotations

    nuclei = read_annotations(path)
    xy = np.array([n.centroid for n in nuclei], dtype=np.float64).reshape(-1, 2)
    labels = np.array([-1 if n.type is None else n.type for n in nuclei], dtype=np.int64)
    has_scores = any(n.score is not None for n in nuclei)
    scores = np.array([1.0 if n.score is None else n.score for n in nuclei]) if has_scores else None
    return ImagePoints(xy, labels, scores)


__all__ = ["ANNOTATION_SUFFIXES", "AnnotationSide", "read_points", "resolve_side"]
