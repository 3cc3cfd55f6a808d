"""Nuclei of a whole slide, chunk by chunk, in memory that does not grow with the slide, resumable after a kill.

The slide is cut by ``io.slide_regions.plan_slide`` into the same chunks (cores + margins, at the model's
scale) that ``segmentation.chunks`` cuts an image into, so a slide and the same pixels saved as one image are
segmented region by region identically. For every chunk that holds tissue:

1. its extended region is read (the best pyramid level, resampled only by the difference) and, for
   ``pipeline``, passed through ``transform`` (IHC -> H&E);
2. the segmenter finds the region's nuclei whole (no further chunking);
3. the nuclei whose centroid lies in the core are kept (each nucleus has exactly one core; the margin is wider
   than a nucleus, so none is cut), moved to level-0 slide pixels and saved as one small ``.npz`` record in the
   work folder ``<out>/<stem>.partial/``. The record is the chunk's done-mark: a killed run resumes at the
   first chunk without one, and a resumed run equals an uninterrupted one.

When every chunk is recorded, the records are streamed, in plan order, into the outputs (each written to a
temporary name and renamed): ``<stem>.geojson.gz`` (QuPath detections, uuid5 ids from the slide name and the
nucleus number, so re-runs write identical bytes), ``<stem>.nuclei.csv.gz`` (one row per nucleus),
``<stem>.json`` (hover_net's JSON, on request), ``<stem>_overview.png`` (the slide's thumbnail with every
nucleus as a dot in its class colour), ``<stem>.slide.json`` (how it was made) and last the summary row
``<stem>.summary.jsonl`` that marks the slide done. Nothing holds a slide-sized array: the working set is one
extended region plus a few numbers per nucleus.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from histostain.errors import ConfigError, InputError
from histostain.io.atomic import atomic_write, atomic_write_text
from histostain.io.slide_regions import Roi, SlidePlan, plan_slide
from histostain.provenance import Provenance, plain
from histostain.runtime.progress import progress_task
from histostain.segmentation.chunks import DEFAULT_CHUNK, DEFAULT_MARGIN, Chunk, iter_kept
from histostain.segmentation.nuclei import Nuclei

log = logging.getLogger(__name__)

SLIDE_FORMATS: tuple[str, ...] = ("geojson", "csv", "json", "png")
DEFAULT_SLIDE_FORMATS: tuple[str, ...] = ("geojson", "csv", "png")
WORK_SUFFIX = ".partial"
PLAN_NAME = "plan.json"
RECORD_VERSION = 1
CLASSICAL_SLIDE_MPP = 0.5  # the classical model's slide scale: where it was validated (docs/classical.md)
TISSUE_CHOICES = ("auto", "none")

Region = Callable[[np.ndarray], Nuclei]


def slide_suffixes(formats: Sequence[str], gzip_geojson: bool = True) -> dict[str, str]:
    """Output file endings of the chosen slide formats, by format."""
    names = {
        "geojson": ".geojson.gz" if gzip_geojson else ".geojson",
        "csv": ".nuclei.csv.gz",
        "json": ".json",
        "png": "_overview.png",
    }
    return {name: names[name] for name in SLIDE_FORMATS if name in formats}


def slide_outputs(
    key: str, formats: Sequence[str] = DEFAULT_SLIDE_FORMATS, gzip_geojson: bool = True
) -> tuple[Path, ...]:
    """Every path one slide's run writes, relative to the output folder: the chosen formats, ``<key>.slide.json``,
    the summary row ``<key>.summary.jsonl`` (the done-mark, last) and the work folder ``<key>.partial``.

    ``key`` may hold sub-folders (``a/b``): the outputs then go to ``a/`` under the output folder.
    """
    from histostain.segmentation.outputs import ROW_SUFFIX

    suffixes = [*slide_suffixes(formats, gzip_geojson).values(), ".slide.json", ROW_SUFFIX, WORK_SUFFIX]
    return tuple(Path(f"{key}{suffix}") for suffix in suffixes)


@dataclass
class SlideSegmentReport:
    """What one slide's run did (a row of the CLI summary and of ``--json``)."""

    path: str
    outputs: list[str] = field(default_factory=list)
    skipped: bool = False  # every output already existed
    size: tuple[int, int] = (0, 0)  # level-0 (width, height)
    level: int = 0
    mpp: float | None = None  # um per processing pixel
    chunks: int = 0
    resumed: int = 0  # chunks already recorded by an earlier, interrupted run
    glass: int = 0  # chunks skipped: no tissue in their core
    segmented: int = 0  # chunks segmented by this run
    nuclei: int = 0
    tissue_fraction: float | None = None
    seconds: float = 0.0
    megapixels: float = 0.0  # processing pixels segmented by this run (cores)

    @property
    def megapixels_per_second(self) -> float:
        return self.megapixels / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["megapixels_per_second"] = self.megapixels_per_second
        return data


# --------------------------------------------------------------------------------------------- the segmenter


def region_segmenter(segmenter: Any, plan: SlidePlan) -> Region:
    """The function that segments one extended region whole, at the plan's scale.

    HoVer-Net runs as it is (the plan is at its scale); the classical model is re-targeted to the plan's um/px,
    because its size limits are physical.
    """
    kind = getattr(segmenter, "kind", "")
    if kind == "hovernet":
        return segmenter.segment_region  # type: ignore[no-any-return]
    if kind == "classical":
        inner = copy.copy(segmenter.inner)
        if plan.mpp is not None:
            inner.mpp = float(plan.mpp)
        return inner.segment  # type: ignore[no-any-return]
    region = getattr(segmenter, "segment_region", None)
    if region is None:
        raise ConfigError(f"segmenter {kind or type(segmenter).__name__} cannot segment slides")
    return region  # type: ignore[no-any-return]


def target_mpp(segmenter: Any, slide_mpp: float | None) -> float | None:
    """The scale a slide is processed at: the model's; the classical model's validated 0.5 um/px, or the slide's
    own when it is coarser (a slide is never upsampled for it)."""
    if getattr(segmenter, "kind", "") == "classical":
        if slide_mpp is None:
            return CLASSICAL_SLIDE_MPP  # best_level will ask for --mpp
        return max(CLASSICAL_SLIDE_MPP, float(slide_mpp))
    return getattr(segmenter, "mpp", None)


# ------------------------------------------------------------------------------------------- chunk records


def _record_path(work: Path, index: int) -> Path:
    return work / f"chunk-{index:06d}.npz"


def kept_nuclei(part: Chunk, found: Nuclei, plan: SlidePlan) -> dict[str, np.ndarray]:
    """The region's nuclei whose centroid lies in the core, as level-0 arrays for a chunk record."""
    kept = list(iter_kept(part, found))
    rows = {int(v): i for i, v in enumerate(found.ids.tolist())}
    index = np.array([rows[rid] for rid, _, _ in kept], dtype=np.int64)
    offset = np.array([part.ex0, part.ey0], dtype=np.float64)
    integral = plan.scale == 1.0
    centroids = plan.to_level0(found.centroids[index] + offset) if len(index) else np.zeros((0, 2))
    boxes = found.bboxes[index].astype(np.float64).reshape(-1, 2, 2) + offset
    low, high = plan.to_level0(boxes[:, 0]), plan.to_level0(boxes[:, 1])
    bboxes = np.concatenate([np.floor(low), np.ceil(high)], axis=1).astype(np.int64).reshape(-1, 4)
    contours = [plan.to_level0(np.asarray(found.contours[i], dtype=np.float64) + offset) for i in index.tolist()]
    lengths = np.array([len(c) for c in contours], dtype=np.int64)
    points = np.concatenate(contours) if contours else np.zeros((0, 2))
    record: dict[str, np.ndarray] = {
        "version": np.array(RECORD_VERSION),
        "centroids": centroids.astype(np.float64),
        "bboxes": bboxes,
        "areas": found.areas[index].astype(np.float64) * plan.scale**2,  # level-0 pixels
        "contour_points": np.rint(points).astype(np.int32) if integral else points.astype(np.float32),
        "contour_lengths": lengths,
    }
    if found.point_radius is not None:  # a detector's points (no contours): the disk radius at level 0
        record["point_radius"] = np.array(found.point_radius * plan.scale, dtype=np.float64)
    if found.types is not None:
        record["types"] = np.asarray(found.types)[index].astype(np.int64)
    if found.type_probs is not None:
        record["type_probs"] = np.asarray(found.type_probs)[index].astype(np.float64)
    for name, column in found.measurements.items():
        record[f"m:{name}"] = np.asarray(column, dtype=np.float64)[index]
    if found.type_names is not None:
        record["type_names"] = np.array(json.dumps({str(k): v for k, v in found.type_names.items()}))
    return record


def _save_record(path: Path, record: dict[str, np.ndarray]) -> None:
    atomic_write(path, lambda handle: np.savez(handle, **record))


def _load_record(path: Path, first_id: int, mpp: float | None) -> Nuclei:
    """A chunk record as :class:`Nuclei` without maps (level-0 coordinates; ids numbered from ``first_id``)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
    except (OSError, ValueError, KeyError) as exc:
        raise InputError(f"{path} is damaged ({exc})", hint="delete it and run the command again") from exc
    n = len(arrays["centroids"])
    points, lengths = arrays["contour_points"], arrays["contour_lengths"]
    contours = np.split(points, np.cumsum(lengths)[:-1]) if n else []
    names = None
    if "type_names" in arrays:
        names = {int(k): str(v) for k, v in json.loads(str(arrays["type_names"])).items()}
    return Nuclei(
        inst_map=np.zeros((0, 0), np.int32),
        type_map=None,
        ids=np.arange(first_id, first_id + n, dtype=np.int64),
        centroids=arrays["centroids"],
        bboxes=arrays["bboxes"],
        contours=list(contours),
        areas=arrays["areas"],
        types=arrays.get("types"),
        type_probs=arrays.get("type_probs"),
        measurements={name[2:]: arrays[name] for name in arrays if name.startswith("m:")},
        type_names=names,
        mpp=mpp,
        point_radius=float(arrays["point_radius"]) if "point_radius" in arrays else None,
    )


# ------------------------------------------------------------------------------------------- writing


# ------------------------------------------------------------------------------------------- the service


def _tissue(slide: Any, tissue: str | os.PathLike[str] | None) -> tuple[Any, str]:
    """The tissue mask (None: process every chunk) and how it was chosen, for the plan record."""
    from histostain.io.tissue import load_tissue_mask, tissue_mask

    choice = "auto" if tissue is None else str(tissue)
    if choice.lower() == "none":
        return None, "none"
    if choice.lower() == "auto":
        return tissue_mask(slide), "auto"
    from histostain.runtime.checkpoint import sha256_file

    path = Path(choice)
    if not path.is_file():
        raise InputError(f"--tissue-mask {choice}: no such file", hint="give a PNG (nonzero = tissue), auto or none")
    return load_tissue_mask(path, slide), f"png:{sha256_file(path)}"


def _check_plan_record(work: Path, record: dict[str, Any]) -> None:
    """A resumed run must have been started with the same chunks, model and settings."""
    path = work / PLAN_NAME
    if not path.is_file():
        atomic_write_text(path, json.dumps(record, indent=1, sort_keys=True) + "\n")
        return
    try:
        earlier = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        earlier = None
    if earlier != record:
        changed = sorted(key for key in set(record) | set(earlier or {}) if (earlier or {}).get(key) != record.get(key))
        raise InputError(
            f"{work} holds an interrupted run with other settings ({', '.join(changed) or 'unreadable record'})",
            hint="re-run with the same options to resume it, or add --overwrite to start again",
        )


def segment_slide(
    path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    segmenter: Any,
    *,
    mpp: float | None = None,
    roi: Roi | None = None,
    tissue: str | os.PathLike[str] | None = "auto",
    chunk: int = DEFAULT_CHUNK,
    margin: int = DEFAULT_MARGIN,
    formats: Sequence[str] = DEFAULT_SLIDE_FORMATS,
    gzip_geojson: bool = True,
    overwrite: bool = False,
    transform: Callable[[np.ndarray], np.ndarray] | None = None,
    transform_settings: dict[str, Any] | None = None,
    key: str | None = None,
    provenance: Provenance | None = None,
) -> SlideSegmentReport:
    """Segment one slide into ``out_dir`` (module docstring); ``mpp`` overrides the slide's level-0 um/px.

    ``transform`` (with ``transform_settings``, recorded for resume checks) changes each extended region before
    it is segmented: the pipeline's IHC -> H&E translation. ``key`` names the outputs (default: the file stem).
    """
    from histostain.io.slides import open_slide

    unknown = [name for name in formats if name not in SLIDE_FORMATS]
    if unknown:
        raise ConfigError(
            f"slide output format(s) {', '.join(unknown)}: unknown", hint=f"use {','.join(SLIDE_FORMATS)}"
        )
    source = Path(path)
    out = Path(out_dir)
    stem = key or source.name.split(".")[0]
    *written, sidecar, row_path, work = (out / name for name in slide_outputs(stem, formats, gzip_geojson))
    targets = dict(zip(slide_suffixes(formats, gzip_geojson), written, strict=True))
    every = [*targets.values(), sidecar, row_path]
    report = SlideSegmentReport(path=str(source), outputs=[str(p) for p in every])
    if not overwrite and all(p.exists() for p in every):
        report.skipped = True
        return report
    started = time.perf_counter()
    with open_slide(source, mpp=mpp) as slide:
        plan = plan_slide(slide, target_mpp(segmenter, slide.mpp), roi=roi, chunk=chunk, margin=margin)
        mask, tissue_choice = _tissue(slide, tissue)
        if overwrite and work.exists():
            shutil.rmtree(work)
        work.mkdir(parents=True, exist_ok=True)
        settings = plain(segmenter.settings())
        settings.pop("chunk", None)  # the slide plan's chunk decides
        _check_plan_record(
            work,
            {
                "version": RECORD_VERSION,
                "plan": plain(plan.describe()),
                "segmenter": settings,
                "tissue": tissue_choice,
                "transform": plain(transform_settings or {}),
            },
        )
        expect = getattr(segmenter, "expect", None)
        if expect is not None:
            expect(*plan.shape)
        region = region_segmenter(segmenter, plan)
        report.size = (slide.dimensions[1], slide.dimensions[0])
        report.level, report.mpp, report.chunks = plan.level, plan.mpp, len(plan.chunks)
        report.tissue_fraction = None if mask is None else round(mask.fraction, 4)
        with progress_task(f"chunks of {source.name}", total=len(plan.chunks), unit="chunk") as task:
            for index, part in enumerate(plan.chunks):
                record_path = _record_path(work, index)
                if not plan.in_tissue(part, mask):
                    report.glass += 1
                elif record_path.exists():
                    report.resumed += 1
                else:
                    pixels = plan.read(part)
                    if transform is not None:
                        translated = transform(pixels)
                        glass = plan.glass_pixels(part, mask)
                        if glass is not None:  # the translator must not paint glass (it would be segmented)
                            translated[glass] = pixels[glass]
                        pixels = translated
                    found = region(pixels)
                    _save_record(record_path, kept_nuclei(part, found, plan))
                    report.segmented += 1
                    report.megapixels += (part.y1 - part.y0) * (part.x1 - part.x0) / 1e6
                task.advance()
        row = _finish(plan, mask, work, targets, stem, source.name)
        report.nuclei = int(row["nuclei"])
        details = {
            "slide": str(source.resolve()),
            "format": slide.format,
            "levels": [[w, h] for h, w in slide.levels],
            "slide_mpp": slide.mpp,
            "plan": plan.describe(),
            "tissue": tissue_choice,
            "tissue_fraction": report.tissue_fraction,
            "segmenter": plain(segmenter.describe()),
            "settings": settings,
            "transform": plain(transform_settings or {}),
            "provenance": provenance.to_dict() if provenance is not None else None,
        }
    report.seconds = time.perf_counter() - started
    details["seconds"] = round(report.seconds, 3)
    atomic_write_text(sidecar, json.dumps(plain(details), indent=1) + "\n")
    atomic_write_text(row_path, json.dumps(plain(row)) + "\n")
    shutil.rmtree(work, ignore_errors=True)
    return report


def _finish(
    plan: SlidePlan,
    mask: Any,
    work: Path,
    targets: dict[str, Path],
    key: str,
    image_name: str,
) -> dict[str, Any]:
    """Stream every chunk record, in plan order, into the outputs and the overview; return the summary row."""
    from histostain.io.images import write_image
    from histostain.segmentation.slide_outputs import SlideOverview, SlideTally, SlideWriters

    tally = SlideTally()
    overview = SlideOverview(plan) if "png" in targets else None
    size = (plan.slide.dimensions[1], plan.slide.dimensions[0])
    records = [_record_path(work, index) for index, part in enumerate(plan.chunks) if plan.in_tissue(part, mask)]
    with contextlib.ExitStack() as stack:
        writers = SlideWriters(stack, targets, image_name, size)
        with progress_task(f"writing {key}", total=len(records), unit="chunk") as task:
            for record_path in records:
                nuclei = _load_record(record_path, tally.nuclei + 1, plan.slide.mpp)
                writers.add(nuclei)
                tally.add(nuclei)
                if overview is not None:
                    overview.add(nuclei)
                task.advance()
        writers.close(plan.slide.mpp)
    if overview is not None:
        write_image(targets["png"], overview.render())
    return tally.row(key, plan.slide.mpp)


__all__ = [
    "CLASSICAL_SLIDE_MPP",
    "DEFAULT_SLIDE_FORMATS",
    "SLIDE_FORMATS",
    "SlideSegmentReport",
    "kept_nuclei",
    "region_segmenter",
    "segment_slide",
    "slide_outputs",
    "slide_suffixes",
    "target_mpp",
]
