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
import csv
import gzip
import io
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from histostain.errors import ConfigError, InputError
from histostain.io.atomic import atomic_path, atomic_write, atomic_write_text
from histostain.io.slide_regions import Roi, SlidePlan, plan_slide
from histostain.provenance import Provenance, plain
from histostain.runtime.progress import progress_task
from histostain.segmentation.chunks import DEFAULT_CHUNK, DEFAULT_MARGIN, Chunk, iter_kept
from histostain.segmentation.nuclei import Nuclei
from histostain.segmentation.output_classes import NO_CLASS, OutputClasses

log = logging.getLogger(__name__)

SLIDE_FORMATS: tuple[str, ...] = ("geojson", "csv", "json", "png")
DEFAULT_SLIDE_FORMATS: tuple[str, ...] = ("geojson", "csv", "png")
WORK_SUFFIX = ".partial"
PLAN_NAME = "plan.json"
RECORD_VERSION = 1
CLASSICAL_SLIDE_MPP = 0.5  # the classical model's slide scale: where it was validated (docs/classical.md)
OVERVIEW_SIDE = 2048
TISSUE_CHOICES = ("auto", "none")

Region = Callable[[np.ndarray], Nuclei]


@dataclass(frozen=True)
class _TalliedClasses(OutputClasses):
    """Output classes whose counts were added up over the chunks (the legend of the overview)."""

    tally: dict[int, int] = field(default_factory=dict)

    def counts(self) -> dict[int, int]:
        named = {code: self.tally.get(code, 0) for code in self.names}
        rest = {code: n for code, n in self.tally.items() if code not in named and code != NO_CLASS}
        last = {NO_CLASS: self.tally[NO_CLASS]} if self.tally.get(NO_CLASS) else {}
        return {**named, **rest, **last}


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
    )


# ------------------------------------------------------------------------------------------- writing


class _Tally:
    """The summary row of a slide, added up chunk by chunk (a few numbers, whatever the number of nuclei)."""

    def __init__(self) -> None:
        self.nuclei = 0
        self.area_sum = 0.0
        self.types: dict[str, int] = {}
        self.scores: dict[int, int] | None = None

    def add(self, nuclei: Nuclei) -> None:
        from histostain.segmentation.output_classes import ihc_counts
        from histostain.segmentation.outputs import type_counts

        self.nuclei += len(nuclei)
        self.area_sum += float(np.sum(nuclei.areas, dtype=np.float64))
        for name, count in type_counts(nuclei).items():
            self.types[name] = self.types.get(name, 0) + count
        counts = ihc_counts(nuclei)
        if counts is not None:
            self.scores = self.scores or {}
            for code, count in counts.items():
                self.scores[code] = self.scores.get(code, 0) + count

    def row(self, key: str, mpp: float | None) -> dict[str, Any]:
        from histostain.segmentation.outputs import summary_row_from

        return summary_row_from(key, self.nuclei, self.types, self.area_sum, mpp, self.scores)


def _csv_rows(nuclei: Nuclei) -> Iterator[list[Any]]:
    from histostain.segmentation.output_classes import output_classes, type_names_of

    classes = output_classes(nuclei)
    names = type_names_of(nuclei)
    area = nuclei.areas * nuclei.mpp**2 if nuclei.mpp is not None else nuclei.areas
    for i, nucleus_id in enumerate(nuclei.ids.tolist()):
        code = None if nuclei.types is None else int(nuclei.types[i])
        row = [
            nucleus_id,
            round(float(nuclei.centroids[i, 0]), 2),
            round(float(nuclei.centroids[i, 1]), 2),
            round(float(area[i]), 3),
            classes.name(int(classes.codes[i])) or "",
            "" if code is None else code,
            "" if code is None else names.get(code, str(code)),
            "" if nuclei.type_probs is None else round(float(nuclei.type_probs[i]), 4),
        ]
        row += [_number(nuclei.measurements[name][i]) for name in sorted(nuclei.measurements)]
        yield row


def _number(value: Any) -> Any:
    value = float(value)
    if not np.isfinite(value):
        return ""
    return int(value) if value.is_integer() else round(value, 5)


def _csv_header(sample: Nuclei, mpp: float | None) -> list[str]:
    area = "area_um2" if mpp is not None else "area_px"
    return ["id", "x", "y", area, "class", "type", "type_name", "type_prob", *sorted(sample.measurements)]


@contextlib.contextmanager
def _gzip_text(handle: IO[bytes]) -> Iterator[io.TextIOWrapper]:
    """A text stream gzipped into ``handle`` with no time stamp and no name, so the bytes are reproducible."""
    with gzip.GzipFile(filename="", mode="wb", fileobj=handle, mtime=0, compresslevel=6) as packed:
        text = io.TextIOWrapper(packed, encoding="utf-8", newline="")
        yield text
        text.flush()
        text.detach()


class _Writers:
    """Every streamed output of one slide, open at once, so the records are read one time."""

    def __init__(self, stack: contextlib.ExitStack, targets: dict[str, Path], image_name: str, size: tuple[int, int]):
        self.image_name, self.size = image_name, size
        self.streams: dict[str, io.TextIOWrapper] = {}
        self.csv_writer: Any = None
        self.first = {"geojson": True, "json": True}
        for name in ("geojson", "csv", "json"):
            if name not in targets:
                continue
            tmp = stack.enter_context(atomic_path(targets[name]))
            handle = stack.enter_context(tmp.open("wb"))
            if name == "json" or targets[name].suffix != ".gz":
                stream = stack.enter_context(io.TextIOWrapper(handle, encoding="utf-8", newline=""))
            else:
                stream = stack.enter_context(_gzip_text(handle))
            self.streams[name] = stream
        if "geojson" in self.streams:
            self.streams["geojson"].write('{"type":"FeatureCollection","features":[')
        if "json" in self.streams:
            self.streams["json"].write('{"mag":null,"nuc":{')

    def add(self, nuclei: Nuclei) -> None:
        if not len(nuclei):
            return
        from histostain.io.annotations._shared import _dump_json
        from histostain.io.annotations.geojson import _feature_texts
        from histostain.io.annotations.hovernet_json import hovernet_dict
        from histostain.segmentation.outputs import _geojson_records

        records = nuclei.to_annotations()
        if "geojson" in self.streams:
            shown, names, colours = _geojson_records(nuclei, records)
            texts = _feature_texts(shown, "detection", names, colours, self.image_name, self.size)
            self._write_joined("geojson", texts)
        if "csv" in self.streams:
            if self.csv_writer is None:
                self.csv_writer = csv.writer(self.streams["csv"], lineterminator="\n")
                self.csv_writer.writerow(_csv_header(nuclei, nuclei.mpp))
            self.csv_writer.writerows(_csv_rows(nuclei))
        if "json" in self.streams:
            nuc = hovernet_dict(records)["nuc"]
            self._write_joined("json", (f"{json.dumps(k)}:{_dump_json(v).rstrip()}" for k, v in nuc.items()))

    def _write_joined(self, name: str, texts: Iterator[str]) -> None:
        stream = self.streams[name]
        for text in texts:
            if not self.first[name]:
                stream.write(",")
            self.first[name] = False
            stream.write(text)

    def close(self, mpp: float | None) -> None:
        if "geojson" in self.streams:
            self.streams["geojson"].write("]}\n")
        if "json" in self.streams:
            self.streams["json"].write("}}\n")
        if "csv" in self.streams and self.csv_writer is None:  # a slide without nuclei: the header alone
            empty = Nuclei.empty(0, 0)
            csv.writer(self.streams["csv"], lineterminator="\n").writerow(_csv_header(empty, mpp))


class _Overview:
    """The slide's thumbnail with every nucleus drawn as a dot in its class colour as the chunks stream by, the
    ROI outlined, and a legend with the counts per class."""

    def __init__(self, plan: SlidePlan) -> None:
        slide = plan.slide
        level = max([0] + [i for i, (h, w) in enumerate(slide.levels) if max(h, w) >= OVERVIEW_SIDE])
        self.image = np.ascontiguousarray(slide.read_level_scaled(level, OVERVIEW_SIDE))
        height, width = slide.dimensions
        self.sx, self.sy = self.image.shape[1] / width, self.image.shape[0] / height
        self.radius = max(1, round(min(self.image.shape[:2]) / 600))
        self.plan = plan
        self.kind = "none"
        self.tally: dict[int, int] = {}
        self.names: dict[int, str] = {}
        self.colours: dict[int, Any] = {}

    def add(self, nuclei: Nuclei) -> None:
        import cv2

        from histostain.segmentation.output_classes import NO_CLASS, output_classes
        from histostain.segmentation.overlay import NUCLEUS_COLOUR

        classes = output_classes(nuclei)
        if classes.kind != "none":
            self.kind = classes.kind
        self.names.update(classes.names)
        self.colours.update(classes.colours)
        for code, count in classes.counts().items():
            self.tally[code] = self.tally.get(code, 0) + count
        points = np.rint(nuclei.centroids * [self.sx, self.sy]).astype(np.int64)
        for code in np.unique(classes.codes).tolist():
            colour = NUCLEUS_COLOUR if code == NO_CLASS else classes.colours[code]
            for x, y in points[classes.codes == code].tolist():
                cv2.circle(self.image, (x, y), self.radius, tuple(int(c) for c in colour), -1, lineType=cv2.LINE_AA)

    def render(self) -> np.ndarray:
        import cv2

        from histostain.segmentation.overlay import legend_entries, render_legend

        roi, (height, width) = self.plan.roi, self.plan.slide.dimensions
        if (roi.width, roi.height) != (width, height):
            corner0 = (round(roi.x * self.sx), round(roi.y * self.sy))
            corner1 = (round((roi.x + roi.width) * self.sx), round((roi.y + roi.height) * self.sy))
            cv2.rectangle(self.image, corner0, corner1, (0, 0, 0), max(1, self.radius))
        classes = _TalliedClasses(self.kind, np.zeros(0, np.int64), self.names, self.colours, dict(self.tally))
        legend = render_legend(legend_entries(classes, sum(self.tally.values())), self.image.shape[1])
        return np.concatenate([self.image, legend], axis=0)


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

    tally = _Tally()
    overview = _Overview(plan) if "png" in targets else None
    size = (plan.slide.dimensions[1], plan.slide.dimensions[0])
    records = [_record_path(work, index) for index, part in enumerate(plan.chunks) if plan.in_tissue(part, mask)]
    with contextlib.ExitStack() as stack:
        writers = _Writers(stack, targets, image_name, size)
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
