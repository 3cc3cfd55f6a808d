"""The ``segment`` command's service: images in, nuclei out in every exchange format, on the batch engine.

Per input ``<key>`` the outputs (``--formats``, default all) are written by ``segmentation.outputs`` beside
one ``<key>.summary.jsonl``: that image's row of ``summary.csv``. The row is an output like the others, so an
image counts as done only when its row exists, and ``summary.csv`` is rebuilt from every row in the folder at
the end of each run: a resumed or sharded run still ends with the summary of every image.
"""

from __future__ import annotations

import json
import logging
import os
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from histostain.errors import ConfigError, InputError
from histostain.io.atomic import atomic_write_text
from histostain.io.batch import BatchItem, BatchReport, ImageStep, Sink, outputs_with, run_batch
from histostain.io.sharding import shard_device
from histostain.provenance import Provenance, plain
from histostain.runtime.device import DeviceManager
from histostain.segmentation.chunks import DEFAULT_CHUNK, check_chunk
from histostain.segmentation.inference import COMPILE_CHOICES
from histostain.segmentation.nuclei import Nuclei
from histostain.segmentation.outputs import ROW_SUFFIX
from histostain.segmentation.segment import Segmenter, build_segmenter, segment_at_scale
from histostain.segmentation.slide_segment import segment_slide

if TYPE_CHECKING:
    from histostain.io.inputs import OutputNames
    from histostain.settings import ResolvedSettings, Settings

log = logging.getLogger(__name__)

COMMAND = "segment"
SUMMARY_NAME = "summary.csv"


@dataclass
class SegmentReport:
    """What a ``segment`` run did (the CLI's summary table and ``--json``)."""

    inputs: int = 0
    segmented: int = 0
    skipped: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    nuclei: int = 0
    seconds: float = 0.0
    model: str = ""
    weights_model: str | None = None  # the registry name (or run) the weights came from
    licence: str | None = None  # the model card's licence, shown wherever the model is used
    out_dir: str = ""
    record: str = ""
    summary: str = ""
    shard: dict[str, Any] = field(default_factory=dict)
    totals: dict[str, Any] = field(default_factory=dict)
    slides: list[dict[str, Any]] = field(default_factory=list)  # one SlideSegmentReport per whole slide

    @property
    def images_per_second(self) -> float:
        return self.segmented / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["failed"] = [{"path": path, "error": error} for path, error in self.failed]
        data["images_per_second"] = self.images_per_second
        return data


class SegmentStep(ImageStep[np.ndarray, tuple[Nuclei, np.ndarray]]):
    """One image: segment at the model's scale, then write every format and the summary row.

    A segmenter with post-processing workers (``HoVerNetSegmenter.overlapping``) gets image ``i``'s nuclei from a
    worker while its network computes image ``i + 1``; results still reach the writers in input order.
    """

    def __init__(self, segmenter: Segmenter, formats: Sequence[str], input_mpp: float | None) -> None:
        self.segmenter = segmenter
        self.formats = tuple(formats)
        self.input_mpp = input_mpp
        self.nuclei = 0

    def settings(self) -> dict[str, Any]:
        return {**self.segmenter.settings(), "formats": list(self.formats), "mpp": self.input_mpp}

    def describe(self) -> dict[str, Any]:
        return self.segmenter.describe()

    def run(self, item: BatchItem, image: np.ndarray) -> tuple[Nuclei, np.ndarray]:
        nuclei = segment_at_scale(self.segmenter, image, self.input_mpp)
        self.nuclei += len(nuclei)
        return nuclei, image

    def process(self, work: Iterable[tuple[BatchItem, np.ndarray]], sink: Sink[tuple[Nuclei, np.ndarray]]) -> None:
        overlapping = getattr(self.segmenter, "overlapping", None)
        if overlapping is None:
            super().process(work, sink)
            return
        with overlapping() as pool:
            if pool is None:
                super().process(work, sink)
                return
            pending: deque[tuple[BatchItem, np.ndarray, Callable[[], Nuclei]]] = deque()

            def finish_oldest() -> None:
                item, image, finish = pending.popleft()
                try:
                    nuclei = finish()
                except InputError as error:
                    sink.failed(item, error)
                    return
                self.nuclei += len(nuclei)
                sink.done(item, (nuclei, image))

            for item, image in work:
                try:
                    finish = self.segmenter.start(image, self.input_mpp)  # type: ignore[attr-defined]
                except InputError as error:
                    sink.failed(item, error)
                    continue
                pending.append((item, image, finish))
                while len(pending) > 1:  # the previous image was post-processed while this one was inferred
                    finish_oldest()
            while pending:
                finish_oldest()

    def write(self, item: BatchItem, result: tuple[Nuclei, np.ndarray]) -> None:
        from histostain.segmentation.outputs import summary_row, write_outputs

        nuclei, image = result
        *targets, row_path = item.targets
        write_outputs(nuclei, targets, image=image, image_name=item.source.name, formats=self.formats)
        row = summary_row(str(item.key), nuclei)
        atomic_write_text(row_path, json.dumps(plain(row)) + "\n")


def collect_summary(out_dir: Path, keys: Sequence[Any]) -> list[dict[str, Any]]:
    """The summary rows of ``keys`` found in ``out_dir`` (images whose row is missing are left out)."""
    rows = []
    for key in sorted(str(key) for key in keys):
        path = out_dir / f"{key}{ROW_SUFFIX}"
        if path.is_file():
            try:
                rows.append(json.loads(path.read_text(encoding="utf-8")))
            except ValueError as exc:
                raise InputError(f"{path} is damaged ({exc})", hint="delete it and run the command again") from exc
    return rows


def _image_size(path: Path) -> tuple[int, int] | None:
    """``(height, width)`` from the file's header (no decoding), or None when it cannot be told cheaply."""
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            with tifffile.TiffFile(path) as tif:
                page = tif.pages[0]
                return int(page.imagelength), int(page.imagewidth)  # type: ignore[union-attr]
        from PIL import Image

        with Image.open(path) as image:
            return int(image.height), int(image.width)
    except Exception:  # a guess only: the engine reports unreadable files properly
        return None


def announce_run(segmenter: Segmenter, items: Sequence[BatchItem], input_mpp: float | None) -> None:
    """Tell a segmenter that plans for its whole run (``expect``: HoVer-Net's compile decision) the image sizes
    to come, read from the file headers."""
    expect = getattr(segmenter, "expect", None)
    if expect is None:
        return
    for item in items:
        size = _image_size(item.source)
        if size is not None:
            expect(*size, input_mpp)


def segment_paths(
    inputs: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    *,
    model: str = "classical",
    weights: str | os.PathLike[str] | None = None,
    device: DeviceManager | None = None,
    stain: str = "auto",
    mpp: float | None = None,
    formats: Sequence[str] | None = None,
    positivity: tuple[float, float, float] | None = None,
    batch_size: int = 8,
    chunk: int | None = None,
    recursive: bool = False,
    overwrite: bool = False,
    num_parts: int | None = None,
    part_id: int | None = None,
    provenance: Provenance | None = None,
    compile: str = "auto",
    postprocess_workers: int | None = None,
    dab: str = "nuclear",
    settings: Settings | ResolvedSettings | None = None,
    segmenter: Segmenter | None = None,
    roi: str | None = None,
    tissue_mask: str | None = "auto",
    gzip_geojson: bool = True,
) -> SegmentReport:
    """The ``segment`` command: check inputs and options, build the segmenter, run the batch engine, summarise.

    ``weights``: a HoVer-Net file, a ``train hovernet`` run folder or a registry name (``settings`` gives the
    registry and the cache; default: the loaded settings). ``dab``: where the classical model expects DAB
    (``nuclear`` for ER/PR/Ki-67, ``membrane`` for HER2).
    ``compile`` and ``postprocess_workers`` are HoVer-Net speed options (``HoVerNetSegmenter``). A library caller
    that segments several folders with one model may pass a ready ``segmenter`` (its network stays compiled);
    ``model``, ``weights``, ``device`` and the options that build one are then not used.

    Whole-slide inputs (``io.slide_inputs``: the rule ``translate`` and ``pipeline`` share) are segmented one by one by
    ``segmentation.slide_segment`` (``roi``, ``tissue_mask`` and ``gzip_geojson`` apply to them; ``mpp`` is then
    the slides' level-0 um/px, overriding their metadata); every other input goes through the batch engine.
    """
    from histostain.io.slide_inputs import prepare_inputs
    from histostain.io.slide_regions import parse_roi
    from histostain.segmentation.outputs import FORMATS, output_suffixes, write_summary_csv
    from histostain.segmentation.slide_segment import DEFAULT_SLIDE_FORMATS, SLIDE_FORMATS, slide_outputs

    known = (*FORMATS, *[name for name in SLIDE_FORMATS if name not in FORMATS])
    unknown = [name for name in formats or () if name not in known]
    if unknown:
        raise InputError(f"--formats {','.join(unknown)}: unknown format", hint=f"use some of {','.join(known)}")
    if mpp is not None and not mpp > 0:
        raise InputError(f"--mpp {mpp}: must be a positive number of micrometres per pixel")
    if chunk is not None:
        check_chunk(chunk)
    if compile not in COMPILE_CHOICES:
        raise ConfigError(f"--compile {compile}: unknown choice", hint=f"use one of {', '.join(COMPILE_CHOICES)}")
    if postprocess_workers is not None and postprocess_workers < 0:
        raise ConfigError(f"--postprocess-workers {postprocess_workers}: must be 0 or more")
    region = parse_roi(roi)
    chosen = tuple(name for name in formats if name in FORMATS) if formats else FORMATS
    slide_formats = tuple(name for name in formats if name in SLIDE_FORMATS) if formats else DEFAULT_SLIDE_FORMATS

    def image_outputs() -> OutputNames:
        if not chosen:
            raise InputError(f"--formats {','.join(formats or ())}: none of them is an image output")
        return outputs_with(*output_suffixes(chosen), ROW_SUFFIX)

    batch = prepare_inputs(
        inputs, out_dir, command=COMMAND, image_outputs=image_outputs,
        slide_outputs=lambda slide: slide_outputs(slide.key, slide_formats, gzip_geojson),
        recursive=recursive, num_parts=num_parts, part_id=part_id,
    )  # fmt: skip
    if not batch.any_slides and (region is not None or tissue_mask not in (None, "auto")):
        raise InputError("--roi and --tissue-mask apply to whole slides only, and no input is a slide")
    if batch.plan is None and not slide_formats:
        raise InputError(f"--formats {','.join(formats or ())}: none of them is a slide output")
    plan, shard, out = batch.plan, batch.shard, batch.out_dir
    if segmenter is None:
        manager = shard_device(device if device is not None else DeviceManager.create(), shard)
        segmenter = build_segmenter(
            model, weights=weights, device=manager, stain=stain, mpp=mpp, batch_size=batch_size, chunk=chunk,
            positivity=positivity, compile=compile, postprocess_workers=postprocess_workers, dab=dab,
            settings=settings,
        )  # fmt: skip
    chunk = chunk if chunk is not None else int(getattr(segmenter, "chunk", DEFAULT_CHUNK))  # the model's own
    report = SegmentReport(
        model=segmenter.kind,
        weights_model=(getattr(segmenter, "model_record", None) or {}).get("name"),
        licence=getattr(segmenter, "licence", None),
        shard=shard.to_dict(),
    )
    keys: list[str] = []
    if plan is not None and batch.runs_images:
        announce_run(segmenter, [item for item in plan.items if overwrite or not item.done()], mpp)
        step = SegmentStep(segmenter, chosen, mpp)
        done_images: BatchReport = run_batch(plan, step, overwrite=overwrite, provenance=provenance)
        keys += [str(item.key) for item in plan.items]
        report.inputs, report.segmented, report.skipped = done_images.inputs, done_images.done, done_images.skipped
        report.failed, report.nuclei, report.seconds = list(done_images.failed), step.nuclei, done_images.seconds
        report.out_dir, report.record = done_images.out_dir, done_images.record
    for slide in batch.slides:
        report.inputs += 1
        try:
            done = segment_slide(
                slide.source, out, segmenter, mpp=mpp, roi=region, tissue=tissue_mask, chunk=chunk,
                formats=slide_formats, gzip_geojson=gzip_geojson, overwrite=overwrite, provenance=provenance,
                key=slide.key,
            )  # fmt: skip
        except InputError as error:
            report.failed.append((str(slide.source), str(error)))
            log.error("%s: %s", slide.source, error)
            continue
        keys.append(slide.key)
        report.slides.append(done.to_dict())
        report.skipped += int(done.skipped)
        report.segmented += int(not done.skipped)
        report.nuclei += done.nuclei
        report.seconds += done.seconds
    report.out_dir = report.out_dir or str(out.resolve())
    rows = collect_summary(out, keys)
    name = SUMMARY_NAME if shard.num_parts == 1 else f"summary.part-{shard.part_id}-of-{shard.num_parts}.csv"
    summary_path = out / name
    write_summary_csv(rows, summary_path)
    report.summary = str(summary_path)
    report.totals = _totals(rows)
    return report


def _totals(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Nuclei over every image of the folder, and the mean positive % / H-score where IHC was scored."""
    totals: dict[str, Any] = {"images": len(rows), "nuclei": int(sum(int(row.get("nuclei", 0)) for row in rows))}
    for key in ("positive_percent", "h_score"):
        values = [float(row[key]) for row in rows if row.get(key) is not None]
        if values:
            totals[f"mean_{key}"] = float(np.mean(values))
    return totals


__all__ = [
    "COMMAND",
    "ROW_SUFFIX",
    "SegmentReport",
    "SegmentStep",
    "announce_run",
    "collect_summary",
    "segment_paths",
]
