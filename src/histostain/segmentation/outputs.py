"""Every output format of ``histostain segment``: one call writes an image's files, one row per image makes
summary.csv.

Per image ``<stem>`` (``--formats``, default all; formats always in the order of :data:`FORMATS`):

=========  =====================  ==================================================================
format     file                   content
=========  =====================  ==================================================================
json       ``<stem>.json``        hover_net's tile-mode JSON (``io.annotations.write_hovernet_json``)
geojson    ``<stem>.geojson``     QuPath detections (``io.annotations.write_geojson``)
tif        ``<stem>.tif``         page 0 int32 instance map, page 1 uint8 type map (typed models)
png        ``<stem>_overlay.png`` contours in class colours and a legend (``segmentation.overlay``)
txt        ``<stem>.txt``         ``x y type`` per nucleus, the EndoNuke convention
=========  =====================  ==================================================================

Coordinates are pixels of the input image; every file is written atomically. The page ``docs/segment-outputs.md``
describes each file and how to open it in QuPath, napari and Python.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from histostain.errors import ConfigError
from histostain.io.annotations import (
    RESERVED_MEASUREMENTS,
    Nucleus,
    write_centroids_txt,
    write_geojson,
    write_hovernet_json,
)
from histostain.io.atomic import atomic_write_text
from histostain.io.images import write_image, write_label_pages
from histostain.segmentation.nuclei import Nuclei
from histostain.segmentation.output_classes import NO_CLASS, ihc_counts, ihc_scores, output_classes, type_names_of
from histostain.segmentation.overlay import render_overlay
from histostain.vocabulary import RGB

log = logging.getLogger(__name__)

FORMATS: tuple[str, ...] = ("json", "geojson", "tif", "png", "txt")
SUFFIXES: dict[str, str] = {
    "json": ".json",
    "geojson": ".geojson",
    "tif": ".tif",
    "png": "_overlay.png",
    "txt": ".txt",
}
TIFF_PAGES: tuple[str, ...] = ("instance", "type")  # PageName of page 0 and (typed models) page 1
SUMMARY_COLUMNS: tuple[str, ...] = ("image", "nuclei")  # always first; the rest follow the rows
AREA_UM2, AREA_PX = "mean_area_um2", "mean_area_px"
ROW_SUFFIX = ".summary.jsonl"  # an image's summary row; not an annotation suffix, so `evaluate celldet` skips it

PathLike = str | os.PathLike[str]


def check_formats(formats: Iterable[str] | None = None) -> tuple[str, ...]:
    """The chosen formats in the order of :data:`FORMATS` (None: all), each once; unknown names are refused.

    The fixed order is what ties :func:`output_suffixes` to the ``targets`` of :func:`write_outputs`, whatever
    order the user typed them in.
    """
    if formats is None:
        return FORMATS
    chosen = {str(name).strip().lower() for name in formats}
    unknown = sorted(chosen - set(FORMATS))
    if unknown:
        raise ConfigError(f"unknown output format(s): {', '.join(unknown)}", hint=f"use some of {','.join(FORMATS)}")
    if not chosen:
        raise ConfigError("no output format chosen", hint=f"use some of {','.join(FORMATS)}")
    return tuple(name for name in FORMATS if name in chosen)


def output_suffixes(formats: Iterable[str] | None = None) -> tuple[str, ...]:
    """The file-name endings of ``formats``, in the order :func:`write_outputs` expects its targets."""
    return tuple(SUFFIXES[name] for name in check_formats(formats))


# ------------------------------------------------------------------------------------------------- writers


def _geojson_records(nuclei: Nuclei, records: list[Nucleus]) -> tuple[list[Nucleus], dict[int, str], dict[int, RGB]]:
    """The records as QuPath should show them: the output class as classification, measurements attached."""
    classes = output_classes(nuclei)
    columns = {}
    for name, column in nuclei.measurements.items():
        if name in RESERVED_MEASUREMENTS:
            log.warning("measurement %r is not written to GeoJSON: the name is reserved for a nucleus field", name)
            continue
        columns[name] = np.asarray(column)
    shown = []
    for index, record in enumerate(records):
        code = int(classes.codes[index])
        measurements: dict[str, float] = {}
        if nuclei.mpp is not None and record.area is not None:
            measurements["area_um2"] = record.area * nuclei.mpp**2
        for name, column in columns.items():
            value = column[index].item()
            if isinstance(value, int | float) and math.isfinite(value):
                measurements[name] = value
        fields = {**vars(record), "measurements": measurements}
        if classes.kind == "positivity":
            fields.update(type=None, type_name=classes.name(code))
        elif classes.kind == "type":
            fields.update(type=None if code == NO_CLASS else code)
        shown.append(Nucleus(**fields))
    return shown, classes.names, classes.colours


def _fitted(array: np.ndarray, dtype: type, what: str) -> np.ndarray:
    """``array`` as ``dtype``, refusing values that would wrap around instead of silently changing them."""
    info = np.iinfo(dtype)
    if array.size and (array.min() < info.min or array.max() > info.max):
        raise ValueError(f"{what} values {array.min()}..{array.max()} do not fit {np.dtype(dtype)}")
    return array.astype(dtype, copy=False)


def _write_tiff(nuclei: Nuclei, target: Path) -> None:
    """Page 0 the int32 instance map, page 1 (typed models) the uint8 type map, with the scale."""
    pages = [(TIFF_PAGES[0], _fitted(nuclei.inst_map, np.int32, "instance id"))]
    if nuclei.type_map is not None:
        pages.append((TIFF_PAGES[1], _fitted(nuclei.type_map, np.uint8, "type code")))
    write_label_pages(target, pages, mpp=nuclei.mpp)


def write_outputs(
    nuclei: Nuclei,
    targets: Sequence[PathLike],
    *,
    image: np.ndarray | None = None,
    image_name: str,
    formats: Iterable[str] | None = None,
    mag: float | None = None,
) -> tuple[Path, ...]:
    """Write one image's outputs: ``targets[i]`` is the file of the i-th of :func:`check_formats` ``(formats)``.

    ``image`` (the segmented image, same size as the nuclei) is needed for the overlay only. ``image_name``
    makes the GeoJSON ids unique across the images of a QuPath project (use the input's file name).
    ``mag`` is hover_net's ``mag`` field (the processing magnification; null when unknown). Returns the paths.
    """
    chosen = check_formats(formats)
    paths = tuple(Path(t) for t in targets)
    if len(paths) != len(chosen):
        raise ValueError(f"{len(paths)} targets for {len(chosen)} formats ({', '.join(chosen)})")
    if "png" in chosen:
        if image is None:
            raise ValueError("the overlay (png) needs the image")
        if np.asarray(image).shape[:2] != nuclei.shape:
            raise ValueError(f"image {np.asarray(image).shape[:2]} and nuclei {nuclei.shape} have different sizes")
    records = nuclei.to_annotations()
    for name, target in zip(chosen, paths, strict=True):
        if name == "json":
            write_hovernet_json(target, records, mag=mag)
        elif name == "geojson":
            shown, names, colours = _geojson_records(nuclei, records)
            write_geojson(
                target,
                shown,
                type_names=names,
                type_colors=colours,
                image_name=image_name,
                image_size=(nuclei.shape[1], nuclei.shape[0]),
            )
        elif name == "tif":
            _write_tiff(nuclei, target)
        elif name == "png":
            write_image(target, render_overlay(np.asarray(image), nuclei))
        else:
            write_centroids_txt(target, records)
    return paths


# ------------------------------------------------------------------------------------------------- summary


def type_counts(nuclei: Nuclei) -> dict[str, int]:
    """Nuclei per model type by name: every named type (zeros included), then unnamed codes as ``type <code>``."""
    if nuclei.types is None:
        return {}
    names = type_names_of(nuclei)
    codes, numbers = np.unique(np.asarray(nuclei.types, dtype=np.int64), return_counts=True)
    found = dict(zip(codes.tolist(), numbers.tolist(), strict=True))
    counts = {names[code]: int(found.get(code, 0)) for code in sorted(names)}
    counts.update({f"type {code}": int(n) for code, n in found.items() if code not in names})
    return counts


def summary_row(image_name: str, nuclei: Nuclei) -> dict[str, Any]:
    """One row of summary.csv (plain JSON-ready values).

    ``image``, ``nuclei``, the count of every type by name (typed models), the mean area (``mean_area_um2``
    when ``nuclei.mpp`` is known, else ``mean_area_px``), and for IHC-scored nuclei the counts of Negative / 1+ /
    2+ / 3+, ``positive_percent`` and ``h_score``. An image without nuclei gives zeros. Point nuclei (a
    detector's) have no measured area, so their rows have no area column.
    """
    area_sum = None if nuclei.point_radius is not None else float(np.sum(nuclei.areas, dtype=np.float64))
    return summary_row_from(image_name, len(nuclei), type_counts(nuclei), area_sum, nuclei.mpp, ihc_counts(nuclei))


def summary_row_from(
    image_name: str,
    nuclei: int,
    types: Mapping[str, int],
    area_sum_px: float | None,
    mpp: float | None,
    scores: Mapping[int, int] | None,
) -> dict[str, Any]:
    """:func:`summary_row` from totals: what a whole slide adds up chunk by chunk without keeping its nuclei
    (``area_sum_px`` None: points, no area column)."""
    row: dict[str, Any] = {"image": image_name, "nuclei": int(nuclei)}
    row.update({name: int(count) for name, count in types.items()})
    if area_sum_px is not None:
        mean_px = area_sum_px / nuclei if nuclei else 0.0
        if mpp is not None:
            row[AREA_UM2] = round(mean_px * mpp**2, 4)
        else:
            row[AREA_PX] = round(mean_px, 4)
    if scores is not None:
        row.update(ihc_scores(scores))
    return row


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        if not math.isfinite(value):
            return ""
        return str(int(value)) if value.is_integer() else repr(value)
    return str(value)


def write_summary_csv(rows: Iterable[Mapping[str, Any]], path: PathLike) -> Path:
    """Write summary.csv atomically: ``image,nuclei`` then every other column in the order rows first name it.

    Rows of different kinds (another model's types, IHC or not) share one table; a value a row lacks is an
    empty cell.
    """
    rows = list(rows)
    columns = list(SUMMARY_COLUMNS)
    for row in rows:
        columns += [key for key in row if key not in columns]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_cell(row.get(column)) for column in columns])
    return atomic_write_text(path, buffer.getvalue())


__all__ = [
    "AREA_PX",
    "AREA_UM2",
    "FORMATS",
    "ROW_SUFFIX",
    "SUFFIXES",
    "TIFF_PAGES",
    "check_formats",
    "output_suffixes",
    "summary_row",
    "summary_row_from",
    "type_counts",
    "write_outputs",
    "write_summary_csv",
]
