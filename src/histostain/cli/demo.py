"""`histostain demo`: synthetic IHC tiles -> pipeline four ways (translate, no translation, classical, detector) ->
a comparison table and report.html, with the packaged demo weights (no download)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from histostain.cli.common import print_json, print_table, provenance, state
from histostain.cli.options import JsonOpt
from histostain.pipeline.demo import DEMO_SEED, DEMO_SEGMENTER, DEMO_TILES, DEMO_TRANSLATOR

EXAMPLE = "Example: histostain demo --out histostain-demo/   (then open histostain-demo/translate/report.html)"


def _score(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def demo(
    ctx: typer.Context,
    out: Annotated[
        Path, typer.Option("--out", "-o", metavar="DIR", help="Folder of the demo (its own; re-running replaces it).")
    ] = Path("histostain-demo"),
    tiles: Annotated[int, typer.Option("--tiles", help="Synthetic IHC tiles of 256 x 256 px.")] = DEMO_TILES,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the synthetic tiles.")] = DEMO_SEED,
    translator: Annotated[
        str, typer.Option("--translator", "-t", metavar="FILE|RUN|NAME", help="CycleGAN IHC -> H&E weights.")
    ] = DEMO_TRANSLATOR,
    segmenter_weights: Annotated[
        str, typer.Option("--segmenter-weights", "-w", metavar="FILE|RUN|NAME", help="HoVer-Net weights.")
    ] = DEMO_SEGMENTER,
    as_json: JsonOpt = False,
) -> None:
    """Run the whole tool on synthetic tissue in about a minute: four routes compared, a report to open."""
    from histostain.pipeline.demo import run_demo

    app_state = state(ctx)
    report = run_demo(
        out,
        tiles=tiles,
        seed=seed,
        translator=translator,
        segmenter_weights=segmenter_weights,
        device=app_state.device_manager(exact_cpu=True),
        settings=app_state.settings().settings,
        provenance=provenance(ctx),
    )
    if as_json:
        print_json(report.to_dict())
        return
    rows = [
        (row.route, row.description, _score(row.precision), _score(row.recall), _score(row.f1), str(row.nuclei),
         f"{row.seconds:.1f}")
        for row in report.rows
    ]  # fmt: skip
    from rich.table import Table

    table = Table(
        title=f"histostain demo: {tiles} synthetic HER2 IHC tiles, detection at 3 um ({report.seconds:.0f} s)",
        title_justify="left",
    )
    for name in ("route", "what", "precision", "recall", "F1", "nuclei", "s"):
        table.add_column(name, justify="left" if name in ("route", "what") else "right", overflow="fold")
    for row in rows:
        table.add_row(*row)
    print_table(table)
    typer.echo(f"report: {report.main_report}")
    typer.echo("demo weights are trained on synthetic tissue only: not for real tissue (docs/pipeline.md)")
