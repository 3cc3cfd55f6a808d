"""One image through the pipeline: read once, translate, segment, score against ground truth, write.

The batch engine (``io.batch``) reads images ahead and writes results in worker threads; this step does the
model work in between. Per input it writes (``pipeline_outputs``):

* ``translated/<key>.png`` (unless ``--no-translate`` or ``--keep-translated`` is off),
* ``nuclei/<key>.*``: every ``segment`` format (``segmentation.outputs``), drawn on the image that was segmented,
* ``detections/<key>.json`` last, so an image counts as done only when it exists: the predicted centroids, their
  areas and classes, the true centroids and which pairs matched, and the image's row of ``summary.csv``. The
  run's metrics, ``summary.csv`` and ``report.html`` are rebuilt from these files at the end of every run, so a
  resumed or sharded run scores every image without reading an annotation file twice.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections import deque
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import numpy as np

from histostain.errors import InputError
from histostain.io.atomic import atomic_write_text
from histostain.io.batch import BatchItem, ImageStep, Sink
from histostain.io.inputs import OutputNames
from histostain.metrics.detection import DetectionCounts, match_points
from histostain.metrics.report import json_safe
from histostain.provenance import plain
from histostain.segmentation.segment import Segmenter, segment_at_scale

if TYPE_CHECKING:
    from histostain.pipeline.ground_truth import GroundTruth
    from histostain.segmentation.nuclei import Nuclei
    from histostain.translation.translate import Translator

TRANSLATED = "translated"
NUCLEI = "nuclei"
DETECTIONS = "detections"


def pipeline_outputs(nuclei_suffixes: tuple[str, ...], keep_translated: bool) -> OutputNames:
    """The files of one input, relative to the output folder (the detections file last)."""

    def names(key: PurePosixPath) -> tuple[PurePosixPath, ...]:
        found: list[PurePosixPath] = []
        if keep_translated:
            found.append(PurePosixPath(TRANSLATED) / f"{key}.png")
        found += [PurePosixPath(NUCLEI) / f"{key}{suffix}" for suffix in nuclei_suffixes]
        found.append(PurePosixPath(DETECTIONS) / f"{key}.json")
        return tuple(found)

    return names


@dataclass
class PipelineResult:
    """What one image became: the segmented image (translated or the input), its nuclei, its detections record."""

    translated: np.ndarray | None
    segmented: np.ndarray
    nuclei: Nuclei
    detections: dict[str, Any]


@dataclass
class StageTimes:
    """Seconds spent in each stage over the images this run processed (the benchmark compares their sum with
    the end-to-end time)."""

    translate: float = 0.0
    segment: float = 0.0
    score: float = 0.0


def detection_record(
    item: BatchItem,
    nuclei: Nuclei,
    row: dict[str, Any],
    true_xy: np.ndarray | None,
    radius_px: float | None,
) -> dict[str, Any]:
    """The ``detections/<key>.json`` of one image; with ground truth the row gains TP/FP/FN, P, R and F1."""
    pred = np.asarray(nuclei.centroids, dtype=np.float64).reshape(-1, 2)
    # a detector's points have no measured area (their disks are a fixed measuring window)
    measured = nuclei.mpp is not None and nuclei.point_radius is None
    areas = np.asarray(nuclei.areas, dtype=np.float64) * nuclei.mpp**2 if measured else None
    record: dict[str, Any] = {
        "image": str(item.source.resolve()),
        "key": str(item.key),
        "mpp": nuclei.mpp,
        "pred": np.round(pred, 3).tolist(),
        "pred_types": None if nuclei.types is None else np.asarray(nuclei.types).astype(int).tolist(),
        "areas_um2": None if areas is None else np.round(areas, 3).tolist(),
        "true": None,
        "tp_true": [],
        "tp_pred": [],
        "radius_px": radius_px,
        "row": row,
    }
    if true_xy is not None and radius_px is not None:
        pairs, free_true, free_pred = match_points(true_xy, pred, radius_px)
        counts = DetectionCounts(len(pairs), len(free_pred), len(free_true))
        record.update(true=np.round(true_xy, 3).tolist(), tp_true=pairs[:, 0].tolist(), tp_pred=pairs[:, 1].tolist())
        row.update(n_true=len(true_xy), **counts.row())
    return record


class PipelineStep(ImageStep[np.ndarray, PipelineResult]):
    """Translate (optional), segment at the model's scale, match against ground truth (optional), write."""

    def __init__(
        self,
        translator: Translator | None,
        segmenter: Segmenter,
        *,
        formats: tuple[str, ...],
        keep_translated: bool,
        input_mpp: float | None,
        ground_truth: GroundTruth | None = None,
        radius_px: float | None = None,
        radius_um: float | None = None,
        overlap_stages: bool = False,
    ) -> None:
        self.translator = translator
        self.overlap_stages = overlap_stages
        self.segmenter = segmenter
        self.formats = formats
        self.keep_translated = keep_translated and translator is not None
        self.input_mpp = input_mpp
        self.ground_truth = ground_truth
        self.radius_px = radius_px
        self.radius_um = radius_um
        self.times = StageTimes()
        self.nuclei = 0
        self.without_truth: list[str] = []

    # ------------------------------------------------------------------------------------- run record
    def settings(self) -> dict[str, Any]:
        """What decides the outputs: a re-run into the folder with other values is refused (``--overwrite``)."""
        translator = None
        if self.translator is not None:
            t = self.translator
            translator = {"weights_sha256": t.weights_sha256(), "direction": t.direction, "tile": t.tile}
            translator["overlap"] = t.overlap
        return {
            "translator": translator,
            "segmenter": self.segmenter.settings(),
            "formats": list(self.formats),
            "keep_translated": self.keep_translated,
            "mpp": self.input_mpp,
            "ground_truth": None if self.ground_truth is None else self.ground_truth.source,
            "radius_um": self.radius_um,
            "radius_px": self.radius_px,
        }

    def describe(self) -> dict[str, Any]:
        translator = None
        if self.translator is not None and self.translator.source is not None:
            translator = self.translator.source.to_dict()
            translator["path"] = str(Path(translator["path"]).resolve())
            if self.translator.model_record is not None:
                translator["model"] = dict(self.translator.model_record)
        seg = self.segmenter.describe()
        return {
            "translator": translator,
            "segmenter": {"model": self.segmenter.kind, "weights": seg.get("weights"), **seg.get("details", {})},
        }

    # ------------------------------------------------------------------------------------------ work
    def _translate(self, image: np.ndarray) -> np.ndarray | None:
        if self.translator is None:
            return None
        start = time.perf_counter()
        translated = self.translator.translate(image)
        self.times.translate += time.perf_counter() - start
        return translated

    def run(self, item: BatchItem, image: np.ndarray) -> PipelineResult:
        return self._segment_and_score(item, image, self._translate(image))

    def process(self, work: Iterable[tuple[BatchItem, np.ndarray]], sink: Sink[PipelineResult]) -> None:
        """With ``overlap_stages``, image ``i + 1`` is translated in a second thread while image ``i`` is segmented
        (torch releases the GIL in its kernels); results still reach the writers in input order. A HoVer-Net
        segmenter with post-processing workers post-processes a chunk while its network runs the next one."""
        overlapping = getattr(self.segmenter, "overlapping", None)
        with overlapping() if overlapping is not None else contextlib.nullcontext():
            if self.translator is None or not self.overlap_stages:
                super().process(work, sink)
            else:
                self._process_overlapped(work, sink)

    def _process_overlapped(self, work: Iterable[tuple[BatchItem, np.ndarray]], sink: Sink[PipelineResult]) -> None:
        with ThreadPoolExecutor(1, thread_name_prefix="translate") as pool:
            pending: deque[tuple[BatchItem, np.ndarray, Future[np.ndarray | None]]] = deque()

            def finish_oldest() -> None:
                item, image, future = pending.popleft()
                try:
                    sink.done(item, self._segment_and_score(item, image, future.result()))
                except InputError as error:
                    sink.failed(item, error)

            for item, image in work:
                pending.append((item, image, pool.submit(self._translate, image)))
                while len(pending) > 1:
                    finish_oldest()
            while pending:
                finish_oldest()

    def _segment_and_score(self, item: BatchItem, image: np.ndarray, translated: np.ndarray | None) -> PipelineResult:
        segmented = translated if translated is not None else image
        middle = time.perf_counter()
        nuclei = segment_at_scale(self.segmenter, segmented, self.input_mpp)
        end = time.perf_counter()
        self.times.segment += end - middle
        self.nuclei += len(nuclei)
        from histostain.segmentation.outputs import summary_row

        true_xy = None
        if self.ground_truth is not None:
            points = self.ground_truth.points(item.key)
            if points is None:
                self.without_truth.append(str(item.key))
            else:
                true_xy = points.xy
        record = detection_record(item, nuclei, summary_row(str(item.key), nuclei), true_xy, self.radius_px)
        self.times.score += time.perf_counter() - end
        return PipelineResult(translated, segmented, nuclei, record)

    def write(self, item: BatchItem, result: PipelineResult) -> None:
        from histostain.io.images import write_image
        from histostain.segmentation.outputs import write_outputs

        targets = list(item.targets)
        if self.keep_translated:
            assert result.translated is not None
            write_image(targets.pop(0), result.translated)
        detections = targets.pop()
        write_outputs(result.nuclei, targets, image=result.segmented, image_name=item.source.name, formats=self.formats)
        # strict JSON (a score of an image without predictions is undefined: null, not NaN)
        atomic_write_text(detections, json.dumps(json_safe(plain(result.detections)), allow_nan=False) + "\n")


__all__ = [
    "DETECTIONS",
    "NUCLEI",
    "TRANSLATED",
    "PipelineResult",
    "PipelineStep",
    "StageTimes",
    "detection_record",
    "pipeline_outputs",
]
