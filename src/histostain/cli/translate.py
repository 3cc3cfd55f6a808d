"""`histostain translate`: run a CycleGAN generator over images, folders or globs (heavy imports inside)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from histostain.cli.common import print_json, print_summary, state


def _command_line(
    inputs: list[str],
    weights: Path,
    direction: str,
    out: Path,
    options: dict[str, object],
) -> list[str]:
    """The resolved command that reproduces this run (recorded in translate.json)."""
    command = ["histostain", "translate", *inputs, "--weights", str(weights), "--direction", direction]
    command += ["--out", str(out)]
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            if value:
                command.append(flag)
        else:
            command += [flag, str(value)]
    return command


def translate(
    ctx: typer.Context,
    inputs: Annotated[list[str], typer.Argument(help="Image files, folders or glob patterns (quoted).")],
    weights: Annotated[
        Path,
        typer.Option(
            "--weights",
            "-w",
            help="Generator checkpoint: histostain (.pt), reference CycleGAN *_net_G*.pth, or seed generator_*.tar.",
        ),
    ],
    direction: Annotated[str, typer.Option("--direction", help="ihc2he | he2ihc (picks G_A/G_B of a run).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder (created if needed).")],
    recursive: Annotated[bool, typer.Option("--recursive", "-r", help="Include sub-folders of folder inputs.")] = False,
    tile: Annotated[
        int, typer.Option("--tile", help="Largest tile side in pixels (rounded down to a multiple of 4).")
    ] = 512,
    overlap: Annotated[int, typer.Option("--overlap", help="Minimum pixels shared by neighbouring tiles.")] = 64,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Tiles per forward pass.")] = 4,
    fmt: Annotated[str, typer.Option("--format", help="png | tif")] = "png",
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace existing outputs (default: skip them).")
    ] = False,
    num_parts: Annotated[int, typer.Option("--num-parts", help="Split the inputs into N shards.")] = 1,
    part_id: Annotated[int, typer.Option("--part-id", help="The shard this process handles (0 .. N-1).")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Translate IHC <-> H&E with a CycleGAN generator; output size = input size, names keep the input stem."""
    state(ctx).settings()
    from histostain.errors import InputError
    from histostain.translation.translate import translate_paths

    options: dict[str, object] = {
        "recursive": recursive,
        "tile": tile,
        "overlap": overlap,
        "batch_size": batch_size,
        "format": fmt,
        "overwrite": overwrite,
        "num_parts": num_parts,
        "part_id": part_id,
    }
    report = translate_paths(
        inputs,
        weights,
        out,
        direction=direction,
        device=state(ctx).device_manager(),
        tile=tile,
        overlap=overlap,
        batch_size=batch_size,
        fmt=fmt,
        recursive=recursive,
        overwrite=overwrite,
        num_parts=num_parts,
        part_id=part_id,
        command=_command_line(inputs, weights, direction, out, options),
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
            ("weights", f"{report.weights.get('weights_format')} {Path(str(report.weights.get('weights'))).name}"),
            ("record", report.record),
        ]
        print_summary(f"histostain translate ({direction}) -> {out}", rows)
    if report.failed:
        first_path, first_error = report.failed[0]
        raise InputError(
            f"{len(report.failed)} of {report.inputs} input(s) could not be translated, e.g. {first_error}",
            hint=f"fix or remove them and re-run: finished outputs are kept and skipped (see {report.record})",
        )
