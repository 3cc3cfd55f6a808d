"""The prepared-dataset contract: a folder with ``manifest.json`` and one subfolder per split.

``prepare`` is idempotent: the manifest records the source's fingerprint and every option, so a re-run with
the same inputs is a no-op, and a re-run with different options is refused (naming what differs) unless
``--overwrite``. The folder is built under a temporary name and renamed when complete, with the manifest
written last, so a killed run never leaves a folder that looks prepared.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from histostain.errors import ConfigError, DatasetLayoutError, InputError
from histostain.io.atomic import atomic_directory, atomic_write_text, remove_stale_partials
from histostain.io.writable import check_output_folder
from histostain.provenance import Provenance, record_or_capture

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
PREPARED_FORMAT = "histostain-prepared"
PREPARED_VERSION = 2  # 2: provenance in one "provenance" record (version 1 kept it in three top-level fields)
_LEGACY_PROVENANCE_FIELDS = ("histostain_version", "created", "command")
SPLIT_NAMES = ("train", "val", "test")


class SourceInfo(BaseModel):
    """Where a prepared dataset came from, with a cheap fingerprint of its contents."""

    model_config = ConfigDict(extra="forbid")

    path: str
    kind: Literal["folder", "zip"]
    file_count: int
    total_bytes: int
    fingerprint: str


class Manifest(BaseModel):
    """``manifest.json`` of a prepared dataset (documented in docs/formats.md)."""

    model_config = ConfigDict(extra="forbid")

    format: Literal["histostain-prepared"] = PREPARED_FORMAT
    format_version: int = PREPARED_VERSION
    dataset: str
    source: SourceInfo
    options: dict[str, Any]
    splits: dict[str, int]
    counters: dict[str, int] = Field(default_factory=dict)
    samples: list[dict[str, Any]] = Field(default_factory=list)
    provenance: dict[str, Any] = Field(default_factory=lambda: Provenance.capture().to_dict())

    @model_validator(mode="before")
    @classmethod
    def _read_version_1(cls, data: Any) -> Any:
        """Version-1 manifests kept the provenance in top-level fields: read them into the one record."""
        if isinstance(data, dict) and any(name in data for name in _LEGACY_PROVENANCE_FIELDS):
            data = dict(data)
            legacy = {name: data.pop(name) for name in _LEGACY_PROVENANCE_FIELDS if name in data}
            data.setdefault("provenance", Provenance.from_dict(legacy).to_dict())
        return data

    @property
    def created(self) -> str:
        """When the dataset was prepared (UTC)."""
        return str(self.provenance.get("created", ""))


def fingerprint_source(source: Path) -> SourceInfo:
    """Fingerprint a folder (relative paths and sizes) or a zip (member names, sizes and CRCs).

    Sizes rather than full hashes keep re-runs fast on tens of GB; a changed file of equal size in an
    unpacked folder is the one case it misses.
    """
    digest = hashlib.sha256()
    count = 0
    total = 0
    if source.is_file() and zipfile.is_zipfile(source):
        with zipfile.ZipFile(source) as handle:
            for info in sorted(handle.infolist(), key=lambda item: item.filename):
                if info.is_dir():
                    continue
                digest.update(f"{info.filename}\0{info.file_size}\0{info.CRC}\n".encode())
                count += 1
                total += info.file_size
        kind: Literal["folder", "zip"] = "zip"
    elif source.is_dir():
        for root, dirs, files in os.walk(source):
            dirs.sort()
            for name in sorted(files):
                path = Path(root) / name
                size = path.stat().st_size
                digest.update(f"{path.relative_to(source).as_posix()}\0{size}\n".encode())
                count += 1
                total += size
        kind = "folder"
    elif source.exists():
        raise InputError(f"{source} is neither a folder nor a zip archive", hint="pass the unpacked folder or the zip")
    else:
        raise InputError(f"source not found: {source}")
    return SourceInfo(
        path=str(source.resolve()), kind=kind, file_count=count, total_bytes=total, fingerprint=digest.hexdigest()
    )


def read_manifest(folder: Path) -> Manifest | None:
    """The manifest of a prepared folder, or None when there is none; a damaged one is an error."""
    path = folder / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        return Manifest.model_validate_json(path.read_text(encoding="utf-8"))
    except (ValidationError, ValueError) as exc:
        raise DatasetLayoutError(
            f"{path} is not a valid histostain manifest ({str(exc).splitlines()[0]})",
            hint="re-run `histostain prepare` with --overwrite",
        ) from exc


def load_prepared(folder: Path, dataset: str | None = None) -> Manifest:
    """Open a prepared dataset for reading (train/evaluate); errors say how to create one."""
    manifest = read_manifest(folder) if folder.is_dir() else None
    if manifest is None:
        raise DatasetLayoutError(
            f"{folder} is not a prepared dataset (no {MANIFEST_NAME})",
            hint="create it with `histostain prepare <dataset> SOURCE --out DIR`",
        )
    if dataset is not None and manifest.dataset != dataset:
        raise DatasetLayoutError(f"{folder} holds prepared {manifest.dataset!r} data, expected {dataset!r}")
    return manifest


def _normalise(value: Any) -> Any:
    """Options as they appear after a JSON round trip, so fresh and stored options compare equal."""
    return json.loads(json.dumps(value, default=str))


def option_differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Human-readable list of options that differ, e.g. ``["size 256 -> 0"]``."""
    old_n, new_n = _normalise(dict(old)), _normalise(dict(new))
    return [
        f"{key} {old_n.get(key, '(unset)')} -> {new_n.get(key, '(unset)')}"
        for key in sorted(set(old_n) | set(new_n))
        if old_n.get(key) != new_n.get(key)
    ]


def check_existing(
    out: Path, dataset: str, source: SourceInfo, options: Mapping[str, Any], overwrite: bool
) -> Manifest | None:
    """Decide what to do with an existing output folder.

    Returns the existing manifest when ``out`` already holds exactly this preparation (the caller then does
    nothing). Returns None when the caller should build. Raises when ``out`` holds something else and
    ``overwrite`` is false.
    """
    if not out.exists():
        return None
    if not out.is_dir():
        raise ConfigError(f"--out {out} exists and is not a folder")
    manifest = read_manifest(out) if not overwrite else None
    if overwrite:
        return None
    if manifest is None:
        if any(out.iterdir()):
            raise ConfigError(
                f"--out {out} is not empty and is not a prepared dataset; refusing to write into it",
                hint="choose another folder or pass --overwrite",
            )
        return None
    differences: list[str] = []
    if manifest.dataset != dataset:
        differences.append(f"dataset {manifest.dataset} -> {dataset}")
    if manifest.source.fingerprint != source.fingerprint:
        differences.append(f"source {manifest.source.path} ({manifest.source.file_count} files) -> {source.path}")
    differences += option_differences(manifest.options, options)
    if not differences:
        return manifest
    raise ConfigError(
        f"{out} was prepared differently: {'; '.join(differences)}",
        hint="pass --overwrite to replace it, or choose another --out",
    )


@contextmanager
def build_prepared(out: Path, overwrite: bool) -> Iterator[Path]:
    """Build a prepared dataset in a temporary sibling folder; it takes the name ``out`` when complete.

    Write the manifest last with :func:`write_manifest`. Leftovers of interrupted runs are removed first.
    """
    remove_stale_partials(out)
    with atomic_directory(out, replace=overwrite) as tmp:
        yield tmp


def write_manifest(folder: Path, manifest: Manifest) -> Path:
    """Write ``manifest.json`` atomically (last step of a preparation)."""
    return atomic_write_text(folder / MANIFEST_NAME, manifest.model_dump_json(indent=2) + "\n")


@dataclass
class PrepareSummary:
    """What a ``prepare`` run did; rendered as the closing table and as ``--json``."""

    dataset: str
    out: Path
    skipped: bool  # True when the folder already held exactly this preparation (no-op)
    splits: dict[str, int]
    counters: dict[str, int] = field(default_factory=dict)
    source_files: int = 0
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "out": str(self.out),
            "skipped": self.skipped,
            "splits": dict(self.splits),
            "counters": dict(self.counters),
            "source_files": self.source_files,
            "seconds": round(self.seconds, 3),
        }

    @classmethod
    def from_manifest(cls, out: Path, manifest: Manifest, skipped: bool, seconds: float) -> PrepareSummary:
        return cls(
            dataset=manifest.dataset,
            out=out,
            skipped=skipped,
            splits=dict(manifest.splits),
            counters=dict(manifest.counters),
            source_files=manifest.source.file_count,
            seconds=seconds,
        )


@dataclass
class PreparedContent:
    """What a dataset's conversion wrote into the new folder: one record per sample and its counters."""

    samples: list[dict[str, Any]]
    counters: Mapping[str, int] = field(default_factory=dict)


def prepare_dataset(
    dataset: str,
    source: Path,
    out: Path,
    options: Mapping[str, Any],
    build: Callable[[Path, Path, SourceInfo], PreparedContent],
    *,
    overwrite: bool = False,
    provenance: Provenance | None = None,
) -> PrepareSummary:
    """The one preparation skeleton: fingerprint, no-op or refusal, build in a temporary folder, manifest last.

    ``build(root, folder, source_info)`` reads the dataset under ``root`` (the source folder, or a zip extracted
    safely into scratch space) and writes the splits into ``folder``; the manifest is written after it returns,
    and the folder takes the name ``out`` only then. ``options`` are the output-defining options recorded and
    compared on re-runs; ``provenance`` is the CLI's record (library callers get one made from ``options``).
    """
    started = time.perf_counter()
    check_output_folder(out, "--out")  # before the source is fingerprinted or extracted
    info = fingerprint_source(source)
    existing = check_existing(out, dataset, info, options, overwrite)
    if existing is not None:
        log.info("%s already holds this %s preparation; nothing to do", out, dataset)
        return PrepareSummary.from_manifest(out, existing, skipped=True, seconds=time.perf_counter() - started)
    with open_source(source, out.parent) as root, build_prepared(out, overwrite) as folder:
        content = build(root, folder, info)
        splits = {name: n for name in SPLIT_NAMES if (n := sum(s["split"] == name for s in content.samples))}
        manifest = Manifest(
            dataset=dataset,
            source=info,
            options=dict(options),
            splits=splits,
            counters=dict(content.counters),
            samples=content.samples,
            provenance=record_or_capture(provenance, **options).to_dict(),
        )
        write_manifest(folder, manifest)
    seconds = time.perf_counter() - started
    log.info("prepared %d %s samples into %s in %.1fs", len(content.samples), dataset, out, seconds)
    return PrepareSummary.from_manifest(out, manifest, skipped=False, seconds=seconds)


def parse_fractions(text: str | Sequence[float], names: Sequence[str] = SPLIT_NAMES) -> dict[str, float]:
    """``"0.6,0.2,0.2"`` -> ``{"train": 0.6, "val": 0.2, "test": 0.2}``; must be >= 0 and sum to 1."""
    try:
        values = [float(v) for v in (text.split(",") if isinstance(text, str) else text)]
    except ValueError as exc:
        raise ConfigError(f"--fractions {text!r} is not a comma-separated list of numbers") from exc
    if len(values) != len(names) or any(v < 0 for v in values) or abs(sum(values) - 1.0) > 1e-6:
        raise ConfigError(
            f"--fractions {text!r} must be {len(names)} non-negative numbers ({', '.join(names)}) summing to 1"
        )
    return dict(zip(names, values, strict=True))


def split_groups(groups: Iterable[str], fractions: Mapping[str, float], seed: int) -> dict[str, str]:
    """Assign whole groups (source images) to splits, so no group's samples land in two splits.

    Groups are sorted, shuffled with ``seed``, and cut into consecutive runs whose sizes are the fractions
    rounded (largest-remainder rounding, so the counts add up exactly). Deterministic for a given group set.
    """
    unique = sorted(set(groups))
    order = np.random.default_rng(seed).permutation(len(unique))
    shuffled = [unique[i] for i in order]
    names = list(fractions)
    exact = [fractions[name] * len(unique) for name in names]
    counts = [int(np.floor(value)) for value in exact]
    remainders = sorted(range(len(names)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in remainders[: len(unique) - sum(counts)]:
        counts[i] += 1
    assignment: dict[str, str] = {}
    start = 0
    for name, count in zip(names, counts, strict=True):
        for group in shuffled[start : start + count]:
            assignment[group] = name
        start += count
    return assignment


@contextmanager
def open_source(source: Path, scratch_parent: Path) -> Iterator[Path]:
    """Yield a folder holding the dataset: ``source`` itself, or a zip extracted safely into scratch space.

    The extraction goes into a temporary folder under ``scratch_parent`` (next to the output, so on the same
    disk) and is deleted afterwards, whatever happens.
    """
    if source.is_dir():
        yield source
        return
    if not source.exists():
        raise InputError(f"source not found: {source}")
    if not zipfile.is_zipfile(source):
        raise InputError(f"{source} is neither a folder nor a zip archive", hint="pass the unpacked folder or the zip")
    from histostain.io.archives import extract_zip

    scratch_parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".histostain-extract-", dir=scratch_parent) as scratch:
        yield extract_zip(source, Path(scratch) / "source")
