"""`histostain pipeline`: IHC tiles -> synthetic H&E -> nuclei -> metrics and a visual report.

Every option may also come from ``--config pipeline.toml`` (flags win); the resolved options are saved as
``DIR/pipeline.toml``. Defaults shown in ``--help`` come from ``histostain.pipeline.config`` (torch-free).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from histostain.cli.common import print_json, print_summary, provenance, slide_line, state
from histostain.cli.options import JsonOpt, NumPartsOpt, OverwriteOpt, PartIdOpt
from histostain.io.defaults import DEFAULT_BATCH_SIZE, DEFAULT_OVERLAP, DEFAULT_TILE
from histostain.pipeline.config import DEFAULT_CHUNK, DEFAULT_RADIUS_UM, DEFAULT_SAMPLES, FORMAT_NAMES

EXAMPLE = (
    "Example: histostain pipeline --input tiles/ --out run/ --translator cyclegan-demo "
    "--segmenter-weights hovernet-demo --ground-truth labels/ --mpp 0.5"
)


def _option(*names: str, help: str, default: str | None = None, metavar: str | None = None) -> typer.models.OptionInfo:
    """An option whose value may also come from ``--config``: None means not given; ``default`` is what help says."""
    return typer.Option(*names, help=help, show_default=default if default is not None else "none", metavar=metavar)


def _flag(name: str, help: str, default: str) -> typer.models.OptionInfo:
    return typer.Option(name, help=help, show_default=default)


def _positivity(text: str | None) -> tuple[float, float, float] | None:
    from histostain.errors import ConfigError

    if text is None:
        return None
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3:
        raise ConfigError(f"--positivity {text}: expected three numbers T1,T2,T3", hint="e.g. 0.2,0.4,0.6")
    return values  # type: ignore[return-value]


def _no_report(slides: list[dict]) -> str:
    if slides:
        return "none for whole slides: see nuclei/<slide>_overview.png"
    return "(written by the run without --num-parts)"


def pipeline(
    ctx: typer.Context,
    inputs: Annotated[
        list[str] | None,
        _option("--input", "-i", help="Image files, folders or glob patterns (repeatable).", metavar="PATH"),
    ] = None,
    out: Annotated[
        Path | None, _option("--out", "-o", help="Output folder (created if needed).", metavar="DIR")
    ] = None,
    config: Annotated[
        Path | None,
        _option("--config", help="A pipeline.toml holding any of these options (flags win).", metavar="FILE"),
    ] = None,
    translator: Annotated[
        str | None,
        _option(
            "--translator",
            "-t",
            help="CycleGAN weights: a file, a `train cyclegan` run or a registry name.",
            metavar="FILE|RUN|NAME",
        ),
    ] = None,  # fmt: skip
    direction: Annotated[
        str | None, _option("--direction", help="ihc2he | he2ihc.", default="ihc2he", metavar="DIRECTION")
    ] = None,
    no_translate: Annotated[
        bool | None,
        _flag("--no-translate", "Segment the inputs as they are (the ablation: does translation help?).", "off"),
    ] = None,
    keep_translated: Annotated[
        bool | None,
        typer.Option("--keep-translated/--drop-translated", help="Write translated/<key>.png.", show_default="keep"),
    ] = None,
    segmenter: Annotated[
        str | None,
        _option(
            "--segmenter",
            help="hovernet (needs --segmenter-weights) | detector (IHC nuclei as points; shipped weights) |"
            " classical (weight-free).",
            default="hovernet with --segmenter-weights, else classical",
            metavar="MODEL",
        ),
    ] = None,  # fmt: skip
    segmenter_weights: Annotated[
        str | None,
        _option(
            "--segmenter-weights",
            "-w",
            help="HoVer-Net or detector weights: a file, a run or a registry name (detector: detector-endonuke).",
            metavar="FILE|RUN|NAME",
        ),
    ] = None,
    stain: Annotated[
        str | None,
        _option(
            "--stain",
            help="What the segmenter sees: he | ihc | auto.",
            default="he after ihc2he, ihc after he2ihc, else auto",
            metavar="STAIN",
        ),
    ] = None,  # fmt: skip
    dab: Annotated[
        str | None,
        _option("--dab", help="IHC, classical: nuclear | membrane (HER2).", default="nuclear", metavar="WHERE"),
    ] = None,
    positivity: Annotated[
        str | None,
        _option(
            "--positivity", help="IHC: DAB OD thresholds of 1+, 2+, 3+.", default="0.2,0.4,0.6", metavar="T1,T2,T3"
        ),
    ] = None,
    mpp: Annotated[
        float | None,
        _option("--mpp", help="Micrometres per pixel of the inputs.", default="a prepared ground truth's, else none"),
    ] = None,
    ground_truth: Annotated[
        Path | None,
        _option(
            "--ground-truth",
            "-g",
            help="True centroids: a folder of txt/json/geojson/csv or a prepared EndoNuke.",
            metavar="DIR",
        ),
    ] = None,  # fmt: skip
    split: Annotated[
        str | None, _option("--split", help="Prepared ground truth: which split (all pools them).", default="test")
    ] = None,
    radius_um: Annotated[
        float | None, _option("--radius-um", help="Detection matching radius in um.", default=str(DEFAULT_RADIUS_UM))
    ] = None,
    formats: Annotated[
        str | None, _option("--formats", help="Nuclei outputs.", default=",".join(FORMAT_NAMES), metavar="LIST")
    ] = None,
    tile: Annotated[
        int | None, _option("--tile", help="Translation tile side (px).", default=str(DEFAULT_TILE))
    ] = None,
    overlap: Annotated[
        int | None, _option("--overlap", help="Translation tile overlap (px).", default=str(DEFAULT_OVERLAP))
    ] = None,
    batch_size: Annotated[
        int | None, _option("--batch-size", help="Tiles or patches per forward pass.", default=str(DEFAULT_BATCH_SIZE))
    ] = None,
    chunk_size: Annotated[
        int | None,
        _option(
            "--chunk-size", help="Larger images are segmented in chunks.", default=f"{DEFAULT_CHUNK} (detector: 1024)"
        ),
    ] = None,
    roi: Annotated[
        str | None,
        _option(
            "--roi", help="Slides: process this rectangle only (level-0 px).", default="whole slide", metavar="X,Y,W,H"
        ),
    ] = None,
    tissue_mask: Annotated[
        str | None,
        _option(
            "--tissue-mask",
            help="Slides: auto | none | a PNG mask (nonzero = tissue).",
            default="auto",
            metavar="PNG|auto|none",
        ),
    ] = None,  # fmt: skip
    report_samples: Annotated[
        int | None, _option("--report-samples", help="Tiles shown in report.html.", default=str(DEFAULT_SAMPLES))
    ] = None,
    recursive: Annotated[bool | None, _flag("--recursive", "Include sub-folders of folder inputs.", "off")] = None,
    overlap_stages: Annotated[
        bool | None,
        typer.Option(
            "--overlap-stages/--no-overlap-stages",
            help="Translate the next image while this one is segmented (same answers; faster even on 2 cores).",
            show_default="on",
        ),
    ] = None,
    overwrite: OverwriteOpt = False,
    num_parts: NumPartsOpt = None,
    part_id: PartIdOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """IHC tiles -> synthetic H&E -> nuclei -> metrics (with --ground-truth) and report.html."""
    from histostain.errors import InputError
    from histostain.pipeline.config import resolve_config
    from histostain.pipeline.run import run_pipeline

    app_state = state(ctx)
    settings = app_state.settings().settings
    overrides = {
        "input": inputs, "out": out, "translator": translator, "direction": direction, "no_translate": no_translate,
        "keep_translated": keep_translated, "segmenter": segmenter, "segmenter_weights": segmenter_weights,
        "stain": stain, "dab": dab, "positivity": _positivity(positivity), "mpp": mpp, "ground_truth": ground_truth,
        "split": split, "radius_um": radius_um, "tile": tile, "overlap": overlap, "batch_size": batch_size,
        "chunk_size": chunk_size, "report_samples": report_samples, "recursive": recursive, "roi": roi,
        "tissue_mask": tissue_mask,
        "overlap_stages": overlap_stages, "formats": None if formats is None else formats.split(","),
    }  # fmt: skip
    resolved = resolve_config(overrides, config)
    report = run_pipeline(
        resolved,
        device=app_state.device_manager(exact_cpu=True),
        settings=settings,
        overwrite=overwrite,
        num_parts=num_parts,
        part_id=part_id,
        provenance=provenance(ctx),
    )
    if as_json:
        print_json(report.to_dict())
    else:
        rows = [
            ("translator", report.translator or "none (--no-translate)"),
            ("segmenter", report.segmenter),
            *[(f"licence of {name}", licence) for name, licence in report.licences.items()],
            ("images", f"{report.inputs} ({report.processed} processed, {report.skipped} already done)"),
            ("failed", str(len(report.failed))),
            ("nuclei (all images)", str(report.totals.get("nuclei", 0))),
        ]
        for slide in report.slides:
            rows.append((f"slide {Path(slide['path']).name}", slide_line(slide)))
        for key, label in (("mean_positive_percent", "mean positive %"), ("mean_h_score", "mean H-score")):
            if key in report.totals:
                rows.append((label, f"{report.totals[key]:.1f}"))
        if report.metrics:
            m = report.metrics
            rows.append(
                (
                    f"detection at {m.get('radius_um', 0):g} um",
                    f"P {m['precision']:.3f}  R {m['recall']:.3f}  F1 {m['f1']:.3f}  "
                    f"(TP {m['tp']}, FP {m['fp']}, FN {m['fn']})",
                )
            )
        rows += [
            ("seconds", f"{report.seconds:.1f} ({report.images_per_second:.2f} images/s)"),
            ("report", report.report or _no_report(report.slides)),
            ("summary", report.summary),
        ]
        print_summary(f"histostain pipeline -> {report.out_dir}", rows)
        for warning in report.warnings:
            typer.secho(f"warning: {warning}", err=True, fg="yellow")
    if report.failed:
        _, first_error = report.failed[0]
        seen = f" (see {report.record})" if report.record else ""
        raise InputError(
            f"{len(report.failed)} of {report.inputs} input(s) failed, e.g. {first_error}",
            hint=f"fix or remove them and re-run: finished images are kept and skipped{seen}",
        )
