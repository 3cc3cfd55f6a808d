"""`histostain translate`: run a CycleGAN generator over images, folders or globs (heavy imports inside)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

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
    weights_file,
)
from histostain.io.defaults import DEFAULT_BATCH_SIZE, DEFAULT_IMAGE_FORMAT, DEFAULT_OVERLAP, DEFAULT_TILE

EXAMPLE = "Example: histostain translate tiles/ -w runs/bci/checkpoints/last.pt --direction ihc2he -o he/"


def translate(
    ctx: typer.Context,
    inputs: InputsArg,
    weights: Annotated[
        str,
        weights_file(
            "Generator: a checkpoint (histostain .pt, reference CycleGAN *_net_G*.pth, seed generator_*.tar), a "
            "`histostain train cyclegan` run folder, or a model name from `histostain weights list`.",
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
    overwrite: OverwriteOpt = False,
    num_parts: NumPartsOpt = None,
    part_id: PartIdOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Translate IHC <-> H&E with a CycleGAN generator; output size = input size, names keep the input stem."""
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
            ("record", report.record),
        ]
        model = report.weights.get("model")
        if model and model.get("name"):
            rows.insert(-1, ("model", f"{model['name']} (licence: {model['licence']})"))
        if report.shard.get("num_parts", 1) > 1:
            rows.insert(0, ("part", f"{report.shard['part_id']} of {report.shard['num_parts']}"))
        print_summary(f"histostain translate ({direction}) -> {out}", rows)
    if report.failed:
        _, first_error = report.failed[0]
        raise InputError(
            f"{len(report.failed)} of {report.inputs} input(s) could not be translated, e.g. {first_error}",
            hint=f"fix or remove them and re-run: finished outputs are kept and skipped (see {report.record})",
        )
