"""The ``pipeline`` service: check everything, load both models once, stream the images through
:class:`~histostain.pipeline.step.PipelineStep` on the batch engine, then score, summarise and report.

Output folder (``docs/pipeline.md``): ``pipeline.json`` (the run record, written first), ``pipeline.toml`` (the
resolved options), ``translated/``, ``nuclei/``, ``detections/``, ``summary.csv``, with ground truth
``metrics.json``, and ``report.html``. Everything after the image loop is rebuilt from ``detections/`` over the
whole share, so a resumed run reports every image, not only those it processed.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from histostain.errors import ConfigError, InputError
from histostain.io.atomic import atomic_write_text
from histostain.io.batch import BatchItem, run_batch
from histostain.io.sharding import shard_device
from histostain.metrics.detection import DetectionScorer, ImagePoints
from histostain.pipeline.config import DEFAULT_CHUNK, PipelineConfig, write_config
from histostain.pipeline.step import NUCLEI, PipelineStep, pipeline_outputs
from histostain.provenance import Provenance

if TYPE_CHECKING:
    from histostain.io.slide_inputs import SlideInput
    from histostain.metrics.report import EvaluationResult
    from histostain.pipeline.ground_truth import GroundTruth
    from histostain.runtime.device import DeviceManager
    from histostain.settings import ResolvedSettings, Settings

log = logging.getLogger(__name__)

COMMAND = "pipeline"
SUMMARY_NAME = "summary.csv"
METRICS_NAME = "metrics.json"
REPORT_NAME = "report.html"


@dataclass
class PipelineReport:
    """What a pipeline run did (the CLI's summary table, ``--json`` and the run record's result)."""

    inputs: int = 0
    processed: int = 0
    skipped: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    nuclei: int = 0
    seconds: float = 0.0
    stage_seconds: dict[str, float] = field(default_factory=dict)
    translator: str | None = None  # the model name, else the file
    segmenter: str = ""
    licences: dict[str, str] = field(default_factory=dict)  # model name -> licence
    metrics: dict[str, Any] | None = None  # pooled P/R/F1 with ground truth
    totals: dict[str, Any] = field(default_factory=dict)
    out_dir: str = ""
    record: str = ""
    config: str = ""
    summary: str = ""
    report: str | None = None
    warnings: list[str] = field(default_factory=list)
    slides: list[dict[str, Any]] = field(default_factory=list)  # one SlideSegmentReport per whole slide

    @property
    def images_per_second(self) -> float:
        return self.processed / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["failed"] = [{"path": path, "error": error} for path, error in self.failed]
        data["images_per_second"] = self.images_per_second
        return data


def _model_name(record: dict[str, Any] | None, path: Any) -> str | None:
    if record is not None and record.get("name"):
        return str(record["name"])
    return None if path is None else str(path)


def _radius(config: PipelineConfig, truth: GroundTruth | None) -> tuple[float | None, float | None]:
    """``(input um/px, matching radius in px)``: the radius needs the scale (``--mpp``, else the dataset's)."""
    mpp = config.mpp if config.mpp is not None else (truth.mpp if truth is not None else None)
    if truth is None:
        return mpp, None
    if mpp is None:
        raise ConfigError(
            f"--radius-um {config.radius_um} needs the inputs' micrometres per pixel to become pixels",
            hint="give --mpp (EndoNuke tiles: 0.5; a prepared EndoNuke ground truth records it)",
        )
    return mpp, config.radius_um / mpp


def _read_detections(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"{path} is damaged ({exc})", hint="delete it and run the pipeline again") from exc


def collect_detections(items: tuple[BatchItem, ...]) -> list[dict[str, Any]]:
    """The ``detections/<key>.json`` of every finished item, in key order."""
    found = []
    for item in sorted(items, key=lambda i: str(i.key)):
        path = item.targets[-1]
        if path.is_file():
            found.append(_read_detections(path))
    return found


def score_detections(records: list[dict[str, Any]], radius_px: float, radius_um: float) -> EvaluationResult | None:
    """Pooled cell-detection scores of the records with ground truth (None when none has it): the array-level
    scorer of ``evaluate celldet`` on the stored centroids."""
    scorer = DetectionScorer(radius_px)
    scored = 0
    for record in records:
        if record.get("true") is None:
            continue
        scorer.add(record["key"], ImagePoints(record["true"]), ImagePoints(record["pred"]))
        scored += 1
    if not scored:
        return None
    result = scorer.result()
    result.summary["radius_um"] = radius_um
    result.summary["radius_px"] = radius_px
    return result


def _totals(rows: list[dict[str, Any]]) -> dict[str, Any]:
    totals: dict[str, Any] = {"images": len(rows), "nuclei": int(sum(int(r.get("nuclei", 0)) for r in rows))}
    for key in ("positive_percent", "h_score"):
        values = [float(r[key]) for r in rows if r.get(key) is not None]
        if values:
            totals[f"mean_{key}"] = sum(values) / len(values)
    return totals


def run_pipeline(
    config: PipelineConfig,
    *,
    device: DeviceManager | None = None,
    settings: Settings | ResolvedSettings | None = None,
    overwrite: bool = False,
    num_parts: int | None = None,
    part_id: int | None = None,
    provenance: Provenance | None = None,
) -> PipelineReport:
    """Run the pipeline ``config`` describes; see the module docstring for what it writes."""
    from histostain.pipeline.ground_truth import GroundTruth
    from histostain.runtime.device import DeviceManager
    from histostain.segmentation.outputs import output_suffixes, write_summary_csv
    from histostain.segmentation.segment import build_segmenter
    from histostain.segmentation.segment_files import announce_run

    config.check_ready()
    assert config.out is not None
    from histostain.io.slide_inputs import prepare_inputs
    from histostain.io.slide_regions import parse_roi
    from histostain.segmentation.slide_segment import slide_outputs

    roi = parse_roi(config.roi)
    formats = tuple(config.formats)
    batch_inputs = prepare_inputs(
        config.input, config.out, command=COMMAND,
        image_outputs=lambda: pipeline_outputs(output_suffixes(formats), config.keep_translated and config.translates),
        slide_outputs=lambda slide: tuple(Path(NUCLEI) / name for name in slide_outputs(slide.key)),
        recursive=config.recursive, num_parts=num_parts, part_id=part_id,
    )  # fmt: skip
    if not batch_inputs.any_slides and (roi is not None or config.tissue_mask != "auto"):
        raise InputError("--roi and --tissue-mask apply to whole slides only, and no input is a slide")
    plan, shard, out_dir = batch_inputs.plan, batch_inputs.shard, batch_inputs.out_dir
    truth = GroundTruth.open(config.ground_truth, config.split) if config.ground_truth is not None else None
    mpp, radius_px = _radius(config, truth)
    manager = shard_device(device if device is not None else DeviceManager.create(exact_cpu=True), shard)
    translator = None
    if config.translates:
        from histostain.translation.translate import load_translator

        assert config.translator is not None
        translator = load_translator(
            config.translator, config.direction, manager, settings=settings,  # type: ignore[arg-type]
            tile=config.tile, overlap=config.overlap, batch_size=config.batch_size,
        )  # fmt: skip
    segmenter = build_segmenter(
        config.segmenter_model, weights=config.segmenter_weights, device=manager, stain=config.segmenter_stain,
        mpp=mpp, batch_size=config.batch_size, chunk=config.chunk_size, positivity=config.positivity,
        dab=config.dab, settings=settings,
    )  # fmt: skip
    step = PipelineStep(
        translator, segmenter, formats=formats, keep_translated=config.keep_translated, input_mpp=mpp,
        ground_truth=truth, radius_px=radius_px, radius_um=config.radius_um if truth is not None else None,
        overlap_stages=config.overlap_stages,
    )  # fmt: skip
    batch = None
    if plan is not None and batch_inputs.runs_images:
        announce_run(segmenter, [item for item in plan.items if overwrite or not item.done()], mpp)
        batch = run_batch(plan, step, overwrite=overwrite, provenance=provenance)
    slide_reports, slide_rows, slide_failed = run_slides(
        list(batch_inputs.slides), out_dir, config, translator, segmenter, step,
        overwrite=overwrite, provenance=provenance, roi=roi,
    )  # fmt: skip
    config_path = write_config(config, out_dir)  # after the run record's check of earlier settings

    records = collect_detections(plan.items) if plan is not None else []
    rows = [record["row"] for record in records] + slide_rows
    suffix = "" if shard.num_parts == 1 else f".part-{shard.part_id}-of-{shard.num_parts}"
    summary_path = out_dir / f"summary{suffix}.csv"
    write_summary_csv(rows, summary_path)
    warnings = list(truth.warnings) if truth is not None else []
    without = [r["key"] for r in records if r.get("true") is None] if truth is not None else []
    if without:
        warnings.append(f"{len(without)} image(s) have no ground truth in {truth.source}, not scored: {without[:5]}")  # type: ignore[union-attr]
    metrics = None
    if truth is not None and radius_px is not None:
        result = score_detections(records, radius_px, config.radius_um)
        if result is not None:
            result.meta.update(mpp=mpp, true_source=truth.source, warnings=warnings)
            atomic_write_text(out_dir / f"metrics{suffix}.json", json.dumps(result.to_json(), indent=2) + "\n")
            metrics = dict(result.summary)
    del records  # the report reads the detections again, one file at a time: never two copies in memory
    report_path = None
    if shard.num_parts == 1 and batch is not None:
        from histostain.pipeline.report import write_report

        report_path = write_report(out_dir, samples=config.report_samples)
    licences = {}
    for record in (getattr(translator, "model_record", None), getattr(segmenter, "model_record", None)):
        if record and record.get("licence") and record.get("licence") != "unknown":
            licences[str(record.get("name"))] = str(record["licence"])
    return PipelineReport(
        inputs=(batch.inputs if batch else 0) + len(slide_reports) + len(slide_failed),
        processed=(batch.done if batch else 0) + sum(not r["skipped"] for r in slide_reports),
        skipped=(batch.skipped if batch else 0) + sum(bool(r["skipped"]) for r in slide_reports),
        failed=(list(batch.failed) if batch else []) + slide_failed,
        nuclei=step.nuclei + sum(int(r["nuclei"]) for r in slide_reports),
        seconds=(batch.seconds if batch else 0.0) + sum(float(r["seconds"]) for r in slide_reports),
        stage_seconds={k: round(v, 3) for k, v in asdict(step.times).items()},
        translator=None if translator is None else _model_name(translator.model_record, config.translator),
        segmenter=segmenter.kind
        + (f" ({name})" if (name := _model_name(getattr(segmenter, "model_record", None), None)) else ""),
        licences=licences,
        metrics=metrics,
        totals=_totals(rows),
        out_dir=str(out_dir),
        record=batch.record if batch else "",
        config=str(config_path),
        summary=str(summary_path),
        report=None if report_path is None else str(report_path),
        warnings=warnings,
        slides=slide_reports,
    )


def run_slides(
    slides: list[SlideInput],
    out_dir: Path,
    config: PipelineConfig,
    translator: Any,
    segmenter: Any,
    step: PipelineStep,
    *,
    overwrite: bool,
    provenance: Provenance | None,
    roi: Any,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[tuple[str, str]]]:
    """Every whole slide of the run: each chunk translated, then segmented, into ``nuclei/`` (no translated slide
    is written). Returns the slides' reports, their summary rows and the failures."""
    import time

    from histostain.segmentation.slide_segment import segment_slide

    transform = None
    transform_settings: dict[str, Any] = {}
    if translator is not None:
        transform_settings = step.settings()["translator"]

        def transform(region: Any) -> Any:
            started = time.perf_counter()
            translated = translator.translate(region)
            step.times.translate += time.perf_counter() - started
            return translated

    reports, rows, failed = [], [], []
    for slide in slides:
        try:
            done = segment_slide(
                slide.source, out_dir / NUCLEI, segmenter, mpp=config.mpp, roi=roi, tissue=config.tissue_mask,
                chunk=config.chunk_size or int(getattr(segmenter, "chunk", DEFAULT_CHUNK)), overwrite=overwrite,
                transform=transform,
                transform_settings=transform_settings, provenance=provenance, key=slide.key,
            )  # fmt: skip
        except InputError as error:
            failed.append((str(slide.source), str(error)))
            log.error("%s: %s", slide.source, error)
            continue
        reports.append(done.to_dict())
        row_path = Path(done.outputs[-1])  # the summary row is the last output
        rows.append(json.loads(row_path.read_text(encoding="utf-8")))
    return reports, rows, failed


__all__ = ["COMMAND", "PipelineReport", "collect_detections", "run_pipeline", "score_detections"]
