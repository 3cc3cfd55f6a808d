"""`histostain segment`: find nuclei in images, folders or globs, and write them in every exchange format."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from histostain.cli.common import print_json, print_summary, provenance, slide_line, state
from histostain.cli.options import (
    BatchSizeOpt,
    InputsArg,
    JsonOpt,
    NumPartsOpt,
    OutOpt,
    OverwriteOpt,
    PartIdOpt,
    RecursiveOpt,
    RoiOpt,
    TissueMaskOpt,
    weights_file,
)

EXAMPLE = (
    "Example: histostain segment tiles/ -o nuclei/ --stain ihc --mpp 0.5   (no weights: the classical model)\n"
    "         histostain segment tiles/ -o points/ --model detector --stain ihc --mpp 0.5   (shipped IHC detector)\n"
    "         histostain segment slide.svs -o nuclei/   (a whole slide: slide.geojson.gz for QuPath)"
)
FORMAT_NAMES = "json,geojson,tif,png,txt"
SLIDE_FORMAT_NAMES = "geojson,csv,json,png"  # slide_segment.SLIDE_FORMATS (not imported: --help stays light)
DEFAULT_SLIDE_FORMAT_NAMES = "geojson,csv,png"


def _thresholds(text: str) -> tuple[float, float, float]:
    """``--positivity T1,T2,T3`` as three checked DAB OD thresholds (errors name the option)."""
    from histostain.errors import ConfigError
    from histostain.segmentation.positivity import check_thresholds

    try:
        return check_thresholds([float(v) for v in text.split(",")])
    except (ValueError, ConfigError):
        raise ConfigError(
            f"--positivity {text}: expected three increasing, non-negative DAB OD thresholds for 1+, 2+, 3+",
            hint="e.g. --positivity 0.2,0.4,0.6 (the defaults)",
        ) from None


def segment(
    ctx: typer.Context,
    inputs: InputsArg,
    out: OutOpt,
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            metavar="MODEL",
            help="classical (weight-free) | detector (IHC nuclei as points; shipped weights) | hovernet (needs"
            " --weights).",
            show_default="hovernet with --weights, else classical",
        ),
    ] = None,
    weights: Annotated[
        str | None,
        weights_file(
            "HoVer-Net or detector weights: a file (official .tar, TIAToolbox .pth, histostain checkpoint), a"
            " `train hovernet|detector` run folder or a registry name (`histostain weights list`).",
            metavar="FILE|RUN|NAME",
            show_default="none: the classical model; detector-endonuke with --model detector",
        ),
    ] = None,
    stain: Annotated[
        str, typer.Option("--stain", metavar="STAIN", help="he | ihc | auto (classical and detector; ihc scores DAB).")
    ] = "auto",
    mpp: Annotated[
        float | None,
        typer.Option(
            "--mpp",
            help="Micrometres per pixel of the inputs; inputs at another scale than the model's are resampled.",
            show_default="the model's scale (HoVer-Net 0.25; classical and detector-endonuke 0.5)",
        ),
    ] = None,
    formats: Annotated[
        str | None,
        typer.Option(
            "--formats",
            metavar="LIST",
            help=f"Comma-separated outputs: {FORMAT_NAMES} for images; {SLIDE_FORMAT_NAMES} for whole slides.",
            show_default=f"images: all; slides: {DEFAULT_SLIDE_FORMAT_NAMES}",
        ),
    ] = None,
    dab: Annotated[
        str,
        typer.Option(
            "--dab",
            metavar="WHERE",
            help="IHC, classical model: nuclear (ER, PR, Ki-67: brown nuclei) | membrane (HER2: brown rims).",
        ),
    ] = "nuclear",
    positivity: Annotated[
        str,
        typer.Option("--positivity", metavar="T1,T2,T3", help="IHC: mean DAB OD thresholds of 1+, 2+ and 3+ nuclei."),
    ] = "0.2,0.4,0.6",
    chunk_size: Annotated[
        int | None,
        typer.Option(
            "--chunk-size",
            help="Larger images are segmented in chunks of this side (bounds memory).",
            show_default="2048 (detector: 1024)",
        ),
    ] = None,
    roi: RoiOpt = None,
    tissue_mask: TissueMaskOpt = "auto",
    gzip_geojson: Annotated[
        bool,
        typer.Option(
            "--gzip/--no-gzip",
            help="Slides: gzip the GeoJSON (.geojson.gz: QuPath 0.4+; --no-gzip for QuPath 0.3).",
            show_default="gzip",
        ),
    ] = True,
    batch_size: BatchSizeOpt = 8,
    compile_mode: Annotated[
        str,
        typer.Option(
            "--compile",
            metavar="MODE",
            help="HoVer-Net speed: auto (compile a full-size network for runs of 48+ patches) | on | off.",
        ),
    ] = "auto",
    postprocess_workers: Annotated[
        int | None,
        typer.Option(
            "--postprocess-workers",
            help="HoVer-Net: processes post-processing one image while the network runs the next.",
            show_default="0 on CPU, 2 on a GPU",
        ),
    ] = None,
    recursive: RecursiveOpt = False,
    overwrite: OverwriteOpt = False,
    num_parts: NumPartsOpt = None,
    part_id: PartIdOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Find and classify nuclei (HoVer-Net, the IHC detector or the weight-free classical model; IHC positivity
    and H-score)."""
    state(ctx).settings()
    from histostain.errors import InputError
    from histostain.segmentation.segment_files import segment_paths

    chosen_model = model or ("hovernet" if weights is not None else "classical")
    report = segment_paths(
        inputs,
        out,
        model=chosen_model,
        weights=weights,
        # fp32 under `--precision auto` on a CPU: bf16 moved instance maps beyond PQ 0.99 (docs/segment-precision.md)
        device=state(ctx).device_manager(exact_cpu=True) if chosen_model in ("hovernet", "detector") else None,
        stain=stain.lower(),
        mpp=mpp,
        formats=None if formats is None else [name.strip().lower() for name in formats.split(",") if name.strip()],
        roi=roi,
        tissue_mask=tissue_mask,
        gzip_geojson=gzip_geojson,
        positivity=_thresholds(positivity),
        batch_size=batch_size,
        chunk=chunk_size,
        compile=compile_mode.strip().lower(),
        postprocess_workers=postprocess_workers,
        dab=dab.strip().lower(),
        settings=state(ctx).settings().settings,
        recursive=recursive,
        overwrite=overwrite,
        num_parts=num_parts,
        part_id=part_id,
        provenance=provenance(ctx),
    )
    if as_json:
        print_json(report.to_dict())
    else:
        if report.model == "classical":
            model_row = "classical (weight-free: no weights given)"
        else:
            model_row = f"{report.model} ({report.weights_model})" if report.weights_model else report.model
        rows = [("model", model_row)]
        if report.licence:
            rows.append(("licence", report.licence))
        rows += [
            ("inputs", str(report.inputs)),
            ("segmented", str(report.segmented)),
            ("skipped (already done)", str(report.skipped)),
            ("failed", str(len(report.failed))),
            ("nuclei (this run)", str(report.nuclei)),
            ("nuclei (all images)", str(report.totals.get("nuclei", 0))),
        ]
        for key, label in (("mean_positive_percent", "mean positive %"), ("mean_h_score", "mean H-score")):
            if key in report.totals:
                rows.append((label, f"{report.totals[key]:.1f}"))
        for slide in report.slides:
            rows.append((f"slide {Path(slide['path']).name}", slide_line(slide)))
        rows += [
            ("seconds", f"{report.seconds:.2f}"),
            ("images/s", f"{report.images_per_second:.2f}"),
            ("summary", report.summary),
        ]
        if report.record:
            rows.append(("record", report.record))
        print_summary(f"histostain segment -> {out}", rows)
    if report.failed:
        _, first_error = report.failed[0]
        seen = f" (see {report.record})" if report.record else ""
        raise InputError(
            f"{len(report.failed)} of {report.inputs} input(s) could not be segmented, e.g. {first_error}",
            hint=f"fix or remove them and re-run: finished outputs are kept and skipped{seen}",
        )
