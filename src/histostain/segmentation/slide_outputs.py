"""The streamed outputs of a whole slide (``segmentation.slide_segment``): GeoJSON(.gz), CSV.gz and hover_net
JSON written chunk record by chunk record, the summary row and the overview picture added up the same way, so
nothing per nucleus is kept in memory.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from histostain.io.atomic import atomic_path
from histostain.io.slide_regions import SlidePlan
from histostain.segmentation.nuclei import Nuclei
from histostain.segmentation.output_classes import NO_CLASS, OutputClasses

OVERVIEW_SIDE = 2048


@dataclass(frozen=True)
class _TalliedClasses(OutputClasses):
    """Output classes whose counts were added up over the chunks (the legend of the overview)."""

    tally: dict[int, int] = field(default_factory=dict)

    def counts(self) -> dict[int, int]:
        named = {code: self.tally.get(code, 0) for code in self.names}
        rest = {code: n for code, n in self.tally.items() if code not in named and code != NO_CLASS}
        last = {NO_CLASS: self.tally[NO_CLASS]} if self.tally.get(NO_CLASS) else {}
        return {**named, **rest, **last}


class SlideTally:
    """The summary row of a slide, added up chunk by chunk (a few numbers, whatever the number of nuclei)."""

    def __init__(self) -> None:
        self.nuclei = 0
        self.area_sum: float | None = 0.0  # None once a chunk of points (no area) was added
        self.types: dict[str, int] = {}
        self.scores: dict[int, int] | None = None

    def add(self, nuclei: Nuclei) -> None:
        from histostain.segmentation.output_classes import ihc_counts
        from histostain.segmentation.outputs import type_counts

        self.nuclei += len(nuclei)
        if nuclei.point_radius is not None:
            self.area_sum = None
        elif self.area_sum is not None:
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
            "" if nuclei.point_radius is not None else round(float(area[i]), 3),
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


class SlideWriters:
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


class SlideOverview:
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


__all__ = ["OVERVIEW_SIDE", "SlideOverview", "SlideTally", "SlideWriters"]
