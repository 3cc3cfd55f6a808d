"""`histostain synth`: write a synthetic, fully labelled dataset in a published layout (heavy imports inside)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from histostain.cli.common import print_json, print_summary, provenance, state
from histostain.cli.options import JsonOpt, out_folder, weights_file

EXAMPLE = "Example: histostain synth --layout bci --n 8 -o raw/ && histostain prepare bci raw/ -o prepared/bci"
RENDERER = "beer-lambert"  # = synth.dataset.RENDERERS[0] (not imported: --help stays light)


def synth(
    ctx: typer.Context,
    layout: Annotated[str, typer.Option("--layout", metavar="LAYOUT", help="bci | pannuke | endonuke | tiles")],
    out: Annotated[Path, out_folder("Output folder (must be empty or absent).")],
    n: Annotated[int, typer.Option("--n", help="Number of tiles (H&E/IHC pairs).")] = 16,
    size: Annotated[
        int | None,
        typer.Option(
            "--size",
            help="Tile side in pixels.",
            show_default="the published size: BCI 1024, PanNuke and tiles 256, EndoNuke a 200/400 mix",
        ),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Random seed; same seed, same bytes.")] = 0,
    folds: Annotated[int, typer.Option("--folds", help="PanNuke only: number of folds.")] = 3,
    quirks: Annotated[
        bool,
        typer.Option("--quirks", help="Reproduce the published irregularities of the layout.", show_default="off"),
    ] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace a non-empty output folder.", show_default="off")
    ] = False,
    renderer: Annotated[
        str,
        typer.Option(
            "--renderer",
            metavar="NAME",
            help="How the H&E is rendered: beer-lambert (procedural) | pix2pix (a label-map -> H&E generator, "
            "--weights, run on the encoded nuclei and types; layout, ground truth and IHC stay Beer-Lambert's; "
            "not for endonuke, which writes IHC only).",
        ),
    ] = RENDERER,
    weights: Annotated[
        str | None,
        weights_file(
            "--renderer pix2pix: the generator (file, train run folder or registry name).",
            show_default="required with --renderer pix2pix",
            metavar="FILE|RUN|NAME",
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Generate synthetic H&E / IHC tissue with exact ground truth in the BCI, PanNuke, EndoNuke or tiles layout."""
    state(ctx).settings()
    from histostain.synth.dataset import check_renderer, write_dataset

    renderer = renderer.lower()
    check_renderer(layout.lower(), renderer, weights)  # before a device or the weights are touched
    summary = write_dataset(
        layout.lower(),
        out,
        n,
        size,
        seed,
        quirks=quirks,
        overwrite=overwrite,
        folds=folds,
        provenance=provenance(ctx),
        renderer=renderer,
        weights=weights,
        device=state(ctx).device_manager(exact_cpu=True) if renderer == "pix2pix" else None,
        settings=state(ctx).settings().settings,
    )
    if as_json:
        print_json(summary.to_dict())
        return
    rows = [("tiles", str(summary.tiles))]
    if summary.renderer.get("he") != RENDERER:
        weights_record = summary.renderer.get("weights", {})
        rows.append(("H&E renderer", f"{summary.renderer['he']} {Path(str(weights_record.get('path'))).name}"))
    rows += [(f"nuclei {name}", str(count)) for name, count in summary.nuclei.items()]
    rows += [
        ("nuclei total", str(summary.total_nuclei)),
        ("files written", str(summary.files_written)),
        ("quirks injected", str(len([r for r in summary.quirk_records if "skipped" not in r]))),
        ("seconds", f"{summary.seconds:.2f}"),
        ("tiles/s", f"{summary.tiles_per_second:.1f}"),
    ]
    print_summary(f"histostain synth: {summary.layout} -> {summary.out}", rows)
