"""`histostain translate`: run a CycleGAN generator over images, folders, globs or whole slides (heavy imports
inside)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from histostain.cli.common import print_json, print_summary, provenance, state
from histostain.cli.options import (
    BatchSizeOpt,
    FormatOpt,
    InputsArg,
    JsonOpt,
    NumPartsOpt,
    OutOpt,
    OverlapOpt,
    OverwriteOpt,
    PartIdOpt,
    RecursiveOpt,
    TileOpt,
    TissueMaskOpt,
    weights_file,
)
from histostain.io.defaults import DEFAULT_BATCH_SIZE, DEFAULT_IMAGE_FORMAT, DEFAULT_OVERLAP, DEFAULT_TILE

EXAMPLE = (
    "Example: histostain translate tiles/ -w runs/bci/checkpoints/last.pt --direction ihc2he -o he/\n"
    "         histostain translate slide.svs -w cyclegan-demo --direction ihc2he -o he/   (slide.ome.tif for QuPath)"
)
SLIDE_CHUNK = 2048  # = segmentation.chunks.DEFAULT_CHUNK (not imported: --help stays light; a test checks it)
SLIDE_COMPRESSION = "jpeg"  # = io.ome_writer.DEFAULT_COMPRESSION
NORM_MODE = "eval"  # = translation.pix2pix.DEFAULT_NORM_MODE, for weights that record no mode (a test checks it)


def _slide_row(slide: dict[str, Any]) -> str:
    """One slide's line of the summary table."""
    name = Path(slide["output"]).name
    if slide["status"] == "skipped":
        return f"{name} exists (skipped)"
    width, height = slide["size"]
    mpp = f"{slide['mpp']:.3g} um/px" if slide["mpp"] else "um/px unknown"
    parts = [f"{width} x {height} px", f"level {slide['level']}", mpp, f"{slide['chunks']} chunks"]
    if slide["glass"]:
        parts.append(f"{slide['glass']} glass")
    if slide["resumed"]:
        parts.append(f"{slide['resumed']} resumed")
    parts += [f"{slide['seconds']:.1f} s", f"{slide['megapixels_per_second']:.2f} MP/s", f"-> {name}"]
    return ", ".join(parts)


def translate(
    ctx: typer.Context,
    inputs: InputsArg,
    weights: Annotated[
        str,
        weights_file(
            "Generator: a checkpoint (histostain .pt, reference CycleGAN or pix2pix *_net_G*.pth, seed "
            "generator_*.tar), a `histostain train cyclegan|pix2pix` run folder, or a model name from "
            "`histostain weights list`.",
            metavar="FILE|RUN|NAME",
        ),
    ],
    direction: Annotated[
        str, typer.Option("--direction", metavar="DIRECTION", help="ihc2he | he2ihc (picks G_A/G_B of a run).")
    ],
    out: OutOpt,
    recursive: RecursiveOpt = False,
    tile: TileOpt = DEFAULT_TILE,
    overlap: OverlapOpt = DEFAULT_OVERLAP,
    batch_size: BatchSizeOpt = DEFAULT_BATCH_SIZE,
    fmt: FormatOpt = DEFAULT_IMAGE_FORMAT,
    roi: Annotated[
        str | None,
        typer.Option(
            "--roi",
            metavar="X,Y,W,H",
            help="Slides only: translate only this rectangle (level-0 pixels); the OME-TIFF is that rectangle.",
            show_default="the whole slide",
        ),
    ] = None,
    tissue_mask: TissueMaskOpt = "auto",
    chunk_size: Annotated[
        int,
        typer.Option(
            "--chunk-size",
            help="Slides only: translated in square chunks of this side (+ 128 px of context; bounds memory).",
        ),
    ] = SLIDE_CHUNK,
    mpp: Annotated[
        float | None,
        typer.Option(
            "--mpp",
            help="Slides only: micrometres per pixel of level 0, overriding the slide's own value.",
            show_default="the slide's metadata",
        ),
    ] = None,
    compression: Annotated[
        str,
        typer.Option(
            "--compression",
            metavar="CODEC",
            help="Slides only: OME-TIFF tiles as jpeg (quality 90, as scanners write) | zlib (lossless, larger).",
        ),
    ] = SLIDE_COMPRESSION,
    norm_mode: Annotated[
        str | None,
        typer.Option(
            "--norm-mode",
            metavar="MODE",
            help="Batch-norm generators (pix2pix) only: eval = the running statistics stored with the weights "
            "(reference test.py --eval) | per-input = each image's or tile's own statistics (reference test.py "
            "without --eval; dropout stays off). Ignored for CycleGAN generators (instance norm).",
            show_default=f"the mode the weights record (train pix2pix: the better on validation), else {NORM_MODE}",
        ),
    ] = None,
    overwrite: OverwriteOpt = False,
    num_parts: NumPartsOpt = None,
    part_id: PartIdOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Translate IHC <-> H&E with a CycleGAN generator; output size = input size, names keep the input stem.

    Whole slides (.svs, .ndpi, pyramidal TIFF, ...) become tiled pyramidal OME-TIFFs (<stem>.ome.tif), made
    chunk by chunk in bounded memory; glass is skipped and a killed run resumes where it stopped.
    """
    state(ctx).settings()
    from histostain.errors import InputError
    from histostain.translation.translate import translate_paths

    report = translate_paths(
        inputs,
        weights,
        out,
        direction=direction,
        settings=state(ctx).settings().settings,
        device=state(ctx).device_manager(),
        tile=tile,
        overlap=overlap,
        batch_size=batch_size,
        fmt=fmt,
        recursive=recursive,
        overwrite=overwrite,
        num_parts=num_parts,
        part_id=part_id,
        provenance=provenance(ctx),
        roi=roi,
        tissue_mask=tissue_mask,
        chunk=chunk_size,
        mpp=mpp,
        compression=compression,
        norm_mode=norm_mode,
    )
    if as_json:
        print_json(report.to_dict())
    else:
        rows = [
            ("inputs", str(report.inputs)),
            ("translated", str(report.translated)),
            ("skipped (already done)", str(report.skipped)),
            ("failed", str(len(report.failed))),
            ("megapixels", f"{report.megapixels:.2f}"),
            ("overlap overhead", f"{100 * report.overlap_overhead:.1f}%"),
            ("seconds", f"{report.seconds:.2f}"),
            ("images/s", f"{report.images_per_second:.2f}"),
            ("weights", f"{report.weights.get('format')} {Path(str(report.weights.get('path'))).name}"),
        ]
        model = report.weights.get("model")
        if model and model.get("name"):
            rows.append(("model", f"{model['name']} (licence: {model['licence']})"))
        rows += [(f"slide {Path(slide['path']).name}", _slide_row(slide)) for slide in report.slides]
        if report.record:  # slides only: no batch record (each slide's work folder holds its plan until done)
            rows.append(("record", report.record))
        if report.shard.get("num_parts", 1) > 1:
            rows.insert(0, ("part", f"{report.shard['part_id']} of {report.shard['num_parts']}"))
        print_summary(f"histostain translate ({direction}) -> {out}", rows)
    if report.failed:
        _, first_error = report.failed[0]
        raise InputError(
            f"{len(report.failed)} of {report.inputs} input(s) could not be translated, e.g. {first_error}",
            hint="fix or remove them and re-run: finished outputs are kept and skipped"
            + (f" (see {report.record})" if report.record else ""),
        )
