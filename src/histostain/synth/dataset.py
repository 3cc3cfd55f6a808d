"""``write_dataset``: generate N tiles and write them in one of the published layouts, atomically.

The dataset is built in a hidden sibling folder and renamed onto ``out`` only when every file is written, so an
interrupted run never leaves a folder that looks complete. ``out/synth.json`` records the options, the
histostain version, the counts and where every ``--quirks`` irregularity was injected.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from histostain.errors import ConfigError
from histostain.io.atomic import atomic_directory
from histostain.io.writable import check_output_folder
from histostain.provenance import Provenance, record_or_capture
from histostain.runtime.progress import track
from histostain.synth.constants import MAX_SIZE, MIN_SIZE, NUCLEUS_TYPES
from histostain.synth.generate import generate_tile, tile_seeds
from histostain.synth.writers import WRITERS
from histostain.vocabulary import ENDONUKE_CLASS_NAMES

log = logging.getLogger(__name__)

LAYOUTS: tuple[str, ...] = tuple(WRITERS)
MANIFEST = "synth.json"


@dataclass
class SynthSummary:
    """What a run wrote: counts, files, timing and the injected quirks."""

    layout: str
    out: str
    tiles: int
    size: int | None
    seed: int
    quirks: bool
    nuclei: dict[str, int]
    files_written: int
    seconds: float
    tiles_per_second: float
    quirk_records: list[dict[str, Any]] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def total_nuclei(self) -> int:
        return sum(self.nuclei.values())

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _check_out(out: Path, overwrite: bool) -> bool:
    """Validate the output folder (writable, before any tile is made); True if a non-empty folder is replaced."""
    check_output_folder(out, "--out")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise ConfigError(
                f"output folder {out} is not empty", hint="pass --overwrite to replace it, or choose another folder"
            )
        return True
    return False


@contextmanager
def _replacing_directory(out: Path) -> Iterator[Path]:
    """Like ``atomic_directory`` but replaces a non-empty folder (old one removed only after success)."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        yield tmp
        trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
        os.replace(out, trash / "old")
        os.replace(tmp, out)
        shutil.rmtree(trash, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def validate_options(layout: str, n: int, size: int | None, seed: int, quirks: bool, **options: Any) -> None:
    """Raise ConfigError with a one-line message for an invalid combination of options."""
    if layout not in WRITERS:
        raise ConfigError(f"unknown layout {layout!r}", hint=f"choose one of {', '.join(LAYOUTS)}")
    if n < 1:
        raise ConfigError(f"--n must be at least 1, got {n}")
    if size is not None and not MIN_SIZE <= size <= MAX_SIZE:
        raise ConfigError(f"--size must be between {MIN_SIZE} and {MAX_SIZE} pixels, got {size}")
    if seed < 0:
        raise ConfigError(f"--seed must be a non-negative integer, got {seed}")
    WRITERS[layout].validate(n, size, quirks, **options)


def write_dataset(
    layout: str,
    out: str | os.PathLike[str],
    n: int,
    size: int | None = None,
    seed: int = 0,
    *,
    quirks: bool = False,
    overwrite: bool = False,
    folds: int = 3,
    provenance: Provenance | None = None,
) -> SynthSummary:
    """Generate ``n`` tiles from ``seed`` and write them in ``layout`` under ``out``; return the summary.

    ``size`` defaults to the layout's published size (``DEFAULT_SIZES``: BCI 1024, PanNuke and tiles 256, EndoNuke a
    mix of 200 and 400); ``folds`` applies to PanNuke. The same seed and
    options give byte-identical files.
    """
    options: dict[str, Any] = {"folds": folds} if layout == "pannuke" else {}
    validate_options(layout, n, size, seed, quirks, **options)
    out = Path(out)
    replace = _check_out(out, overwrite)
    record = record_or_capture(
        provenance, layout=layout, out=out, n=n, size=size, seed=seed, quirks=quirks, overwrite=overwrite, **options
    )
    started = time.perf_counter()
    # the classes the layout's labels carry: EndoNuke's keypoint files have stroma/epithelium/other
    classes = "endonuke" if layout == "endonuke" else "pannuke"
    counts = dict.fromkeys(ENDONUKE_CLASS_NAMES.values() if classes == "endonuke" else NUCLEUS_TYPES.values(), 0)
    staging = _replacing_directory(out) if replace else atomic_directory(out)
    with staging as root:
        writer = WRITERS[layout](root, n, size, seed, quirks, **options)
        specs = writer.plan()
        seeds = tile_seeds(seed, n)
        try:
            for spec in track(specs, f"Synthesising {layout}", total=len(specs), unit="tile"):
                tile = generate_tile(
                    seeds[spec.index],
                    spec.size,
                    mpp=spec.mpp,
                    her2=spec.her2,
                    kind=spec.kind,
                    empty=spec.empty,
                    inflammation=spec.inflammation,
                    marker=spec.marker,
                )
                writer.add(spec, tile)
                for name, count in tile.counts(classes).items():
                    counts[name] += count
            writer.close()
        except BaseException:
            writer.abort()
            raise
        seconds = time.perf_counter() - started
        summary = SynthSummary(
            layout=layout,
            out=str(out),
            tiles=n,
            size=size,
            seed=seed,
            quirks=quirks,
            nuclei=counts,
            files_written=writer.files_written + 1,
            seconds=round(seconds, 3),
            tiles_per_second=round(n / seconds, 2) if seconds > 0 else 0.0,
            quirk_records=writer.quirk_records,
            options=options,
        )
        manifest = {
            "generator": "histostain synth",
            "provenance": record.to_dict(),
            "layout": layout,
            "n": n,
            "size": size,
            "seed": seed,
            "quirks": quirks,
            "options": options,
            "nuclei": counts,
            "quirk_records": writer.quirk_records,
        }
        # No timings here: the same seed and options give byte-identical data files (only the provenance record,
        # with its command line and creation time, differs between two runs).
        (root / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    log.info("wrote %d %s tiles to %s in %.1fs", n, layout, out, seconds)
    return summary


def read_manifest(out: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``synth.json`` of a dataset written by :func:`write_dataset`."""
    return json.loads((Path(out) / MANIFEST).read_text(encoding="utf-8"))
