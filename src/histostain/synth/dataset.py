"""``write_dataset``: generate N tiles and write them in one of the published layouts, atomically.

The dataset is built in a hidden sibling folder and renamed onto ``out`` only when every file is written, so an
interrupted run never leaves a folder that looks complete. ``out/synth.json`` records the options, the
histostain version, the renderer, the counts and where every ``--quirks`` irregularity was injected.

Renderers (``renderer``): ``beer-lambert`` (default) renders H&E and IHC procedurally; ``pix2pix`` renders the
H&E of every tile with a label-map -> H&E generator (``weights``) from the tile's encoded label map
(:mod:`histostain.synth.label_maps`), while the layout, the ground truth and the IHC stay exactly those of the
Beer-Lambert run with the same seed (the IHC has no learned renderer: a BCI pair is generator H&E + Beer-Lambert
IHC of one layout, still pixel-aligned). A layout that writes no H&E (EndoNuke: IHC images only) is refused with
``pix2pix``, since the generator would change nothing written.
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
from typing import TYPE_CHECKING, Any

from histostain.errors import ConfigError
from histostain.io.atomic import atomic_directory
from histostain.io.writable import check_output_folder
from histostain.provenance import Provenance, record_or_capture
from histostain.runtime.progress import track
from histostain.synth.constants import MAX_SIZE, MIN_SIZE, NUCLEUS_TYPES
from histostain.synth.generate import generate_tile, tile_seeds
from histostain.synth.writers import WRITERS
from histostain.vocabulary import ENDONUKE_CLASS_NAMES

if TYPE_CHECKING:
    from histostain.runtime.device import DeviceManager
    from histostain.settings import ResolvedSettings, Settings

log = logging.getLogger(__name__)

LAYOUTS: tuple[str, ...] = tuple(WRITERS)
MANIFEST = "synth.json"
RENDERERS: tuple[str, ...] = ("beer-lambert", "pix2pix")
HE_LAYOUTS: tuple[str, ...] = ("bci", "pannuke", "tiles")  # the layouts that write H&E images
BEER_LAMBERT_RECORD: dict[str, str] = {"he": "beer-lambert", "ihc": "beer-lambert"}


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
    renderer: dict[str, Any] = field(default_factory=lambda: dict(BEER_LAMBERT_RECORD))

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


def check_renderer(layout: str, renderer: str, weights: str | os.PathLike[str] | None) -> None:
    """Raise ConfigError for a renderer the layout cannot use, or ``--weights`` given or missing wrongly."""
    if renderer not in RENDERERS:
        raise ConfigError(f"unknown renderer {renderer!r}", hint=f"choose one of {', '.join(RENDERERS)}")
    if renderer == "pix2pix" and weights is None:
        raise ConfigError(
            "--renderer pix2pix needs --weights",
            hint="pass a label-map -> H&E generator (train pix2pix --source labels)",
        )
    if renderer != "pix2pix" and weights is not None:
        raise ConfigError("--weights is only used with --renderer pix2pix", hint="add --renderer pix2pix, or drop it")
    if renderer == "pix2pix" and layout in WRITERS and layout not in HE_LAYOUTS:
        raise ConfigError(
            f"--renderer pix2pix renders H&E, and the {layout} layout writes IHC images only",
            hint=f"use it with {', '.join(HE_LAYOUTS)}; {layout} is rendered with beer-lambert",
        )


def validate_options(
    layout: str,
    n: int,
    size: int | None,
    seed: int,
    quirks: bool,
    *,
    renderer: str = "beer-lambert",
    weights: str | os.PathLike[str] | None = None,
    **options: Any,
) -> None:
    """Raise ConfigError with a one-line message for an invalid combination of options."""
    if layout not in WRITERS:
        raise ConfigError(f"unknown layout {layout!r}", hint=f"choose one of {', '.join(LAYOUTS)}")
    check_renderer(layout, renderer, weights)
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
    renderer: str = "beer-lambert",
    weights: str | os.PathLike[str] | None = None,
    device: DeviceManager | None = None,
    settings: Settings | ResolvedSettings | None = None,
) -> SynthSummary:
    """Generate ``n`` tiles from ``seed`` and write them in ``layout`` under ``out``; return the summary.

    ``size`` defaults to the layout's published size (``DEFAULT_SIZES``: BCI 1024, PanNuke and tiles 256, EndoNuke a
    mix of 200 and 400); ``folds`` applies to PanNuke. The same seed and
    options give byte-identical files.

    ``renderer="pix2pix"`` renders the H&E with the generator ``weights`` (see the module docstring), loaded once
    before anything is written, on ``device`` (default: the CPU/GPU ``DeviceManager.create`` picks); ``settings``
    is read only to resolve a run folder or registry name.
    """
    options: dict[str, Any] = {"folds": folds} if layout == "pannuke" else {}
    validate_options(layout, n, size, seed, quirks, renderer=renderer, weights=weights, **options)
    out = Path(out)
    replace = _check_out(out, overwrite)
    record = record_or_capture(
        provenance, layout=layout, out=out, n=n, size=size, seed=seed, quirks=quirks, overwrite=overwrite,
        renderer=renderer, weights=None if weights is None else str(weights), **options,
    )  # fmt: skip
    painter = None
    if renderer == "pix2pix":
        assert weights is not None
        from histostain.synth.label_maps import LabelMapRenderer  # loads torch

        painter = LabelMapRenderer(weights, device, settings=settings)
    rendered = dict(BEER_LAMBERT_RECORD) if painter is None else painter.record()
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
                if painter is not None:  # same layout and ground truth, generated H&E
                    tile.he = painter.render(tile)
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
            renderer=rendered,
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
            "renderer": rendered,
        }
        # No timings here: the same seed and options give byte-identical data files (only the provenance record,
        # with its command line and creation time, differs between two runs).
        (root / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    log.info("wrote %d %s tiles to %s in %.1fs", n, layout, out, seconds)
    return summary


def read_manifest(out: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``synth.json`` of a dataset written by :func:`write_dataset`."""
    return json.loads((Path(out) / MANIFEST).read_text(encoding="utf-8"))
