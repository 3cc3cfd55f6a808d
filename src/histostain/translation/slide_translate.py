"""Translate a whole slide chunk by chunk into a tiled pyramidal OME-TIFF, resumably, in bounded memory.

The slide is cut by ``io.slide_regions.plan_slide`` into square cores (``chunk`` pixels, default 2048) at the
translator's scale, each read with a ``margin`` of real pixels around it. Each extended region goes through
:meth:`Translator.translate` (tiled with raised-cosine blending inside, exactly as an image file of that size
would be), and only the core is kept, so neighbouring chunks meet where both saw ``margin`` pixels of context
and no seam shows. Cores that hold no tissue (``--tissue-mask``: detected, given as a PNG, or ``none``) keep
the scanner's pixels without running the network, and so do the glass pixels of tissue chunks
(``SlidePlan.glass_pixels``): on near-uniform glass the CycleGAN's instance norm amplifies noise into textured
blocks that follow its tiles.

Cores go into a raw level-0 raster file (``io.ome_writer.RasterFile``) in the work folder
``<out>/<stem>.partial/``, beside ``plan.json`` (the plan's ``describe()`` and every setting that changes the
pixels) and ``done/<index>.json``, one small record per finished chunk, written only after its pixels are on
disk (``fdatasync``). A killed run (even ``kill -9``) re-run with the same settings skips the done chunks
and redoes only the one in flight, so the result equals an uninterrupted run byte for byte; other settings
are refused unless ``--overwrite``. When every chunk is done the sub-resolutions are built and the OME-TIFF
is written to a temporary name and renamed to ``<out>/<stem>.ome.tif``; then the work folder is removed. A
finished output is skipped on re-run unless ``--overwrite``.

Memory: about two extended regions (the one translated, the next one read ahead) plus the translator's tiles
and a band of output tiles; disk: the raster files (``3 x W x H`` bytes at level 0, a third more for the
sub-resolutions) until the output is written.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from histostain.errors import ConfigError, InputError
from histostain.io.atomic import atomic_path, atomic_write_text, remove_stale_temp_files
from histostain.io.ome_writer import (
    DEFAULT_COMPRESSION,
    JPEG_QUALITY,
    RasterFile,
    build_levels,
    check_compression,
    write_ome_pyramid,
)
from histostain.io.run_record import differences
from histostain.io.slide_regions import Roi, SlidePlan, parse_roi, plan_slide
from histostain.runtime.checkpoint import sha256_file
from histostain.runtime.progress import progress_task
from histostain.segmentation.chunks import DEFAULT_CHUNK, DEFAULT_MARGIN, Chunk, check_chunk

if TYPE_CHECKING:
    from histostain.io.tiling import TilePlan
    from histostain.io.tissue import TissueMask


class Translator(Protocol):
    """What a slide needs of its translator (``translation.translate.Translator`` is one; naming it here would
    make the two modules import each other): the settings that decide the pixels, its tiling and the pixels."""

    tile: int
    overlap: int
    direction: str | None
    mpp: float | None  # the scale the translator works at (None: the slide's level 0)

    def weights_sha256(self) -> str: ...

    def plan(self, height: int, width: int) -> TilePlan: ...

    def translate(self, rgb: np.ndarray) -> np.ndarray: ...


log = logging.getLogger(__name__)

OUTPUT_SUFFIX = ".ome.tif"
WORK_SUFFIX = ".partial"
PLAN_NAME = "plan.json"
DONE_FOLDER = "done"
FORMAT_VERSION = 1  # of the work folder; a different one is never resumed
TISSUE_CHOICES = ("auto", "none")


@dataclass
class SlideTranslation:
    """What translating one slide did (one row of the CLI summary, one entry of ``TranslateReport.slides``)."""

    path: str
    output: str
    status: str = "translated"  # translated | skipped (output existed) | failed
    size: list[int] = field(default_factory=list)  # output level-0 [width, height]
    level: int = 0  # slide level read
    mpp: float | None = None  # um/px of the output's level 0
    roi: list[int] = field(default_factory=list)  # [x, y, width, height] in the slide's level-0 pixels
    levels: int = 0  # pyramid levels written
    chunks: int = 0
    done: int = 0  # chunks translated by this run
    resumed: int = 0  # chunks found done by an earlier, interrupted run
    glass: int = 0  # chunks of this run copied from the slide without the network (no tissue)
    network_tiles: int = 0  # generator tiles run by this run
    computed_megapixels: float = 0.0  # pixels the generator computed (extended regions, tile overlaps)
    megapixels: float = 0.0  # output level-0 megapixels
    seconds: float = 0.0

    @property
    def megapixels_per_second(self) -> float:
        return self.megapixels / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "megapixels_per_second": self.megapixels_per_second}


def output_name(stem: str) -> str:
    """``<stem>.ome.tif`` (a stem that already ends in ``.ome`` does not get it twice)."""
    return (stem[: -len(".ome")] if stem.lower().endswith(".ome") else stem) + OUTPUT_SUFFIX


def slide_output(path: str | os.PathLike[str], out_dir: str | os.PathLike[str], key: str | None = None) -> Path:
    """Where the translation of the slide ``path`` goes: ``<out>/<key or stem>.ome.tif``."""
    stem = key if key is not None else Path(path).stem
    target = Path(out_dir) / stem
    return target.with_name(output_name(target.name))


def work_folder(output: Path) -> Path:
    """``<out>/<stem>.partial`` beside the output ``<out>/<stem>.ome.tif``."""
    return output.with_name(output.name[: -len(OUTPUT_SUFFIX)] + WORK_SUFFIX)


def check_tissue_option(tissue: str | os.PathLike[str] | None) -> str | Path | None:
    """``auto`` / ``none`` / an existing mask image path (checked before any slide is read)."""
    if tissue is None:
        return None
    text = str(tissue).strip()
    if text.lower() in TISSUE_CHOICES:
        return text.lower()
    path = Path(text)
    if not path.is_file():
        raise InputError(
            f"--tissue-mask {text}: no such file",
            hint="give a mask image (nonzero = tissue, any size, the slide's proportions), auto or none",
        )
    return path


def _roi(roi: Roi | str | None) -> Roi | None:
    return roi if isinstance(roi, Roi) or roi is None else parse_roi(roi)


def _tissue_mask(choice: str | Path | None, slide: Any) -> tuple[TissueMask | None, Any]:
    """The mask and what it was (recorded with the run: a resumed run must skip the same chunks)."""
    from histostain.io.tissue import load_tissue_mask, tissue_mask

    if choice is None or choice == "none":
        return None, "none"
    if choice == "auto":
        return tissue_mask(slide), "auto"
    path = Path(choice)
    return load_tissue_mask(path, slide), {"mask": path.name, "sha256": sha256_file(path)}


def _settings(plan: SlidePlan, translator: Translator, tissue: Any, compression: str, quality: int) -> dict[str, Any]:
    """Everything that decides the output's bytes (compared when a run resumes)."""
    extra = {"norm_mode": translator.norm_mode} if getattr(translator, "batch_norms", None) else {}
    return {
        **extra,
        "format_version": FORMAT_VERSION,
        **plan.describe(),
        "slide_bytes": plan.slide.path.stat().st_size if plan.slide.path.is_file() else None,
        "weights_sha256": translator.weights_sha256(),
        "direction": translator.direction,
        "tile": translator.tile,
        "overlap": translator.overlap,
        "tissue": tissue,
        "compression": compression,
        "quality": quality if compression == "jpeg" else None,
    }


class _WorkFolder:
    """``<stem>.partial/``: the plan, the level-0 raster and one done-record per finished chunk."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.done_dir = folder / DONE_FOLDER

    def open(self, settings: dict[str, Any], output: Path, overwrite: bool) -> None:
        """Resume an interrupted run with these settings, else start afresh (other settings: only with overwrite).

        A work folder of the same settings is resumed even with ``overwrite`` (its pixels are the ones a fresh
        run would compute), so a killed ``--overwrite`` run re-run as it was still resumes.
        """
        plan_file = self.folder / PLAN_NAME
        if self.folder.exists():
            earlier = self._earlier(plan_file)
            if earlier is not None and earlier != settings and not overwrite:
                changed = differences(earlier, settings) or ["the work folder's format"]
                raise ConfigError(
                    f"{self.folder} holds an interrupted translation with other settings ({'; '.join(changed)})",
                    hint=f"re-run with the earlier settings to resume, or add --overwrite to start {output.name} again",
                )
            if earlier != settings:  # other settings (overwrite) or killed before its plan was written
                shutil.rmtree(self.folder)
        self.done_dir.mkdir(parents=True, exist_ok=True)
        if not plan_file.exists():
            record = {"settings": settings, "output": output.name}
            atomic_write_text(plan_file, json.dumps(record, indent=2, sort_keys=True) + "\n")
        remove_stale_temp_files([plan_file, output])  # a killed run's half-written plan or OME-TIFF

    @staticmethod
    def _earlier(plan_file: Path) -> dict[str, Any] | None:
        try:
            return dict(json.loads(plan_file.read_text())["settings"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def done(self) -> dict[int, dict[str, Any]]:
        """The chunks recorded as finished: index -> record (temp files of a killed write are ignored)."""
        found: dict[int, dict[str, Any]] = {}
        for entry in self.done_dir.iterdir():
            if entry.name.startswith(".") or entry.suffix != ".json":
                continue
            try:
                found[int(entry.stem)] = json.loads(entry.read_text())
            except (OSError, ValueError):
                continue  # not written by us: the chunk is redone
        return found

    def mark_done(self, index: int, part: Chunk, glass: bool) -> None:
        record = {"chunk": index, "core": [part.x0, part.y0, part.x1 - part.x0, part.y1 - part.y0], "glass": glass}
        atomic_write_text(self.done_dir / f"{index:06d}.json", json.dumps(record) + "\n")


def _core(part: Chunk, translated: np.ndarray) -> np.ndarray:
    """The core of a translated extended region."""
    return translated[part.y0 - part.ey0 : part.y1 - part.ey0, part.x0 - part.ex0 : part.x1 - part.ex0]


def _read_ahead(plan: SlidePlan, todo: list[tuple[int, Chunk, bool]]) -> Iterator[tuple[int, Chunk, np.ndarray | None]]:
    """The todo chunks with their extended regions (None for glass), the next tissue region read in a thread
    while the current one is translated (decoding JPEG tiles overlaps the network)."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="slide-read") as pool:
        pending: Future[np.ndarray] | None = None
        tissue = [(i, part) for i, part, is_tissue in todo if is_tissue]
        next_read = 0

        def submit() -> Future[np.ndarray] | None:
            nonlocal next_read
            if next_read >= len(tissue):
                return None
            part = tissue[next_read][1]
            next_read += 1
            return pool.submit(plan.read, part)

        pending = submit()
        for index, part, is_tissue in todo:
            if not is_tissue:
                yield index, part, None  # glass: the caller copies the scanner's pixels, no network
                continue
            assert pending is not None
            region = pending.result()
            pending = submit()
            yield index, part, region


def check_slide(
    path: str | os.PathLike[str],
    *,
    mpp: float | None = None,
    roi: Roi | str | None = None,
    tissue: str | os.PathLike[str] | None = "auto",
) -> None:
    """What can be checked without the model: the slide opens, the ROI starts inside it, a mask PNG fits it.

    Cheap (the slide's header, the mask image): run for every slide before the weights are loaded, so a bad
    option fails at once in one line instead of after hours of other slides.
    """
    from histostain.io.slides import open_slide
    from histostain.io.tissue import load_tissue_mask

    area = _roi(roi)
    choice = check_tissue_option(tissue)
    slide = open_slide(path, mpp=mpp)
    try:
        plan_slide(slide, None, roi=area, chunk=max(64, *slide.dimensions), margin=0)  # clips (or refuses) the ROI
        if isinstance(choice, Path):
            load_tissue_mask(choice, slide)
    finally:
        slide.close()


def translate_slide(
    path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    translator: Translator,
    *,
    mpp: float | None = None,
    roi: Roi | str | None = None,
    tissue: str | os.PathLike[str] | None = "auto",
    chunk: int = DEFAULT_CHUNK,
    margin: int = DEFAULT_MARGIN,
    overwrite: bool = False,
    compression: str = DEFAULT_COMPRESSION,
    quality: int = JPEG_QUALITY,
    key: str | None = None,
) -> SlideTranslation:
    """Translate the slide at ``path`` (or its ``roi``) into ``<out_dir>/<key or stem>.ome.tif``.

    ``mpp`` overrides the slide's own um/px; the translator's scale (``translator.mpp``, from its model card or
    weights) picks the level read, else level 0 is translated as it is. ``tissue``: ``auto`` (detected),
    ``none`` (every chunk) or a mask image. See the module docstring for the work folder and resume.
    """
    from histostain.io.slides import open_slide

    start = time.perf_counter()
    compression = check_compression(compression)
    check_chunk(chunk, margin)
    area = _roi(roi)
    choice = check_tissue_option(tissue)
    output = slide_output(path, out_dir, key)
    report = SlideTranslation(path=str(path), output=str(output))
    slide = open_slide(path, mpp=mpp)
    try:
        plan = plan_slide(slide, getattr(translator, "mpp", None), roi=area, chunk=chunk, margin=margin)
        height, width = plan.shape
        report.size, report.level, report.mpp = [width, height], plan.level, plan.mpp
        report.roi, report.chunks = plan.roi.to_list(), len(plan.chunks)
        report.megapixels = height * width / 1e6
        if output.exists() and not overwrite:
            report.status = "skipped"
            log.info("%s: %s exists, skipped (use --overwrite to redo it)", Path(path).name, output)
            return report
        mask, tissue_record = _tissue_mask(choice, slide)
        settings = _settings(plan, translator, tissue_record, compression, quality)
        work = _WorkFolder(work_folder(output))
        work.open(settings, output, overwrite)
        _translate_chunks(plan, translator, mask, work, report)
        _write_output(plan, work, output, settings, compression, quality, report)
    finally:
        slide.close()
    report.seconds = time.perf_counter() - start
    log.info(
        "%s -> %s: %d x %d px, %d chunks (%d translated, %d resumed, %d glass), %.1f s",
        Path(path).name,
        output.name,
        report.size[0],
        report.size[1],
        report.chunks,
        report.done,
        report.resumed,
        report.glass,
        report.seconds,
    )
    return report


def _translate_chunks(
    plan: SlidePlan, translator: Translator, mask: TissueMask | None, work: _WorkFolder, report: SlideTranslation
) -> None:
    height, width = plan.shape
    finished = work.done()
    report.resumed = sum(1 for index in range(len(plan.chunks)) if index in finished)
    todo = [(i, part, plan.in_tissue(part, mask)) for i, part in enumerate(plan.chunks) if i not in finished]
    raster = RasterFile(work.folder / "level0.raw", height, width)
    try:
        with progress_task(f"translating {plan.slide.path.name}", total=len(plan.chunks), unit="chunk") as task:
            if report.resumed:
                task.advance(report.resumed, status=f"{report.resumed} done before")
            for index, part, region in _read_ahead(plan, todo):
                if region is None:  # glass is the scanner's glass (white would show as boxes beside real glass)
                    raster.write(part.y0, part.x0, plan.read_box(part.y0, part.x0, part.y1, part.x1))
                    report.glass += 1
                else:
                    tiles = translator.plan(*region.shape[:2])
                    report.network_tiles += tiles.tiles
                    report.computed_megapixels += tiles.computed_pixels / 1e6
                    translated = translator.translate(region)
                    glass = plan.glass_pixels(part, mask)
                    if glass is not None:  # glass stays the scanner's glass, never the network's texture
                        translated[glass] = region[glass]
                    raster.write(part.y0, part.x0, _core(part, translated))
                raster.flush()  # the pixels are on disk before the chunk counts as done
                work.mark_done(index, part, glass=region is None)
                report.done += 1
                task.advance(status="glass" if region is None else "")
    finally:
        raster.close()


def _write_output(
    plan: SlidePlan,
    work: _WorkFolder,
    output: Path,
    settings: dict[str, Any],
    compression: str,
    quality: int,
    report: SlideTranslation,
) -> None:
    height, width = plan.shape
    base = RasterFile(work.folder / "level0.raw", height, width)
    levels = [base]
    try:
        levels = build_levels(base, work.folder)
        report.levels = len(levels)
        identity = json.dumps(settings, sort_keys=True)
        with atomic_path(output) as tmp:
            write_ome_pyramid(
                tmp,
                levels,
                mpp=plan.mpp,
                compression=compression,
                quality=quality,
                name=output.name[: -len(OUTPUT_SUFFIX)],
                identity=identity,
            )
    finally:
        for level in levels:
            level.close()
    shutil.rmtree(work.folder, ignore_errors=True)


__all__ = [
    "OUTPUT_SUFFIX",
    "SlideTranslation",
    "check_slide",
    "check_tissue_option",
    "output_name",
    "slide_output",
    "translate_slide",
    "work_folder",
]
