"""`histostain prepare bci|pannuke|endonuke`: published layouts in, one prepared format out (heavy imports inside)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from histostain.cli.common import print_json, print_summary, provenance, state
from histostain.cli.options import JsonOpt, out_folder

if TYPE_CHECKING:
    from histostain.datasets.prepared import PrepareSummary

prepare_app = typer.Typer(
    help="Validate a downloaded dataset (folder or published zip) and convert it into histostain's prepared format.",
    no_args_is_help=True,
)

SourceArg = Annotated[Path, typer.Argument(metavar="SOURCE", help="The unpacked dataset folder or the published zip.")]
OutOpt = Annotated[Path, out_folder("Output folder for the prepared dataset.")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed of the split assignment.")]
OverwriteOpt = Annotated[
    bool, typer.Option("--overwrite", help="Replace an existing prepared folder.", show_default="off")
]


def _fractions(unit: str) -> typer.models.OptionInfo:
    return typer.Option("--fractions", help=f"train,val,test fractions of a random split (by {unit}).")


def _render(summary: PrepareSummary, as_json: bool) -> None:
    if as_json:
        print_json(summary.to_json())
        return
    status = "already up to date (nothing written)" if summary.skipped else "prepared"
    rows = [("source files", str(summary.source_files))]
    rows += [(f"{split} samples", str(count)) for split, count in summary.splits.items()]
    rows += [(name.replace("_", " "), str(count)) for name, count in sorted(summary.counters.items())]
    rows.append(("seconds", f"{summary.seconds:.1f}"))
    print_summary(f"histostain prepare {summary.dataset} -> {summary.out}: {status}", rows)


@prepare_app.command(
    "bci", epilog="Example: histostain prepare bci BCI_dataset/ -o prepared/bci --patch 512 --size 256"
)
def prepare_bci_command(
    ctx: typer.Context,
    source: SourceArg,
    out: OutOpt,
    patch: Annotated[
        int, typer.Option("--patch", help="Side of the non-overlapping patches cut from each image.")
    ] = 512,
    size: Annotated[int, typer.Option("--size", help="Resize patches to this side (0 keeps them as cut).")] = 256,
    val_fraction: Annotated[
        float, typer.Option("--val-fraction", help="Share of the official train images (whole images) for val.")
    ] = 0.2,
    seed: SeedOpt = 0,
    overwrite: OverwriteOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """BCI (HE/IHC pairs, HER2 0-3+): pair by name, cut patches, split train/val by source image."""
    state(ctx).settings()
    from histostain.datasets.bci import prepare_bci

    summary = prepare_bci(
        source,
        out,
        patch=patch,
        size=size,
        val_fraction=val_fraction,
        seed=seed,
        overwrite=overwrite,
        provenance=provenance(ctx),
    )
    _render(summary, as_json)


@prepare_app.command("pannuke", epilog='Example: histostain prepare pannuke "PanNuke folds/" -o prepared/pannuke')
def prepare_pannuke_command(
    ctx: typer.Context,
    source: SourceArg,
    out: OutOpt,
    split: Annotated[str, typer.Option("--split", help="official (by fold) | random (by patch).")] = "official",
    test_fold: Annotated[int, typer.Option("--test-fold", help="Official split: the test fold (1-3).")] = 3,
    val_fold: Annotated[int, typer.Option("--val-fold", help="Official split: the validation fold (1-3).")] = 2,
    fractions: Annotated[str, _fractions("patch")] = "0.6,0.2,0.2",
    seed: SeedOpt = 0,
    chunk: Annotated[int, typer.Option("--chunk", help="Patches per processing chunk (bounds memory).")] = 64,
    overwrite: OverwriteOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """PanNuke (three folds): instance and type maps, tissue names, and the official evaluation ground truth."""
    state(ctx).settings()
    from histostain.datasets.pannuke import prepare_pannuke

    summary = prepare_pannuke(
        source,
        out,
        split=split,
        test_fold=test_fold,
        val_fold=val_fold,
        fractions=fractions,
        seed=seed,
        chunk=chunk,
        overwrite=overwrite,
        provenance=provenance(ctx),
    )
    _render(summary, as_json)


@prepare_app.command("endonuke", epilog="Example: histostain prepare endonuke data.zip -o prepared/endonuke --mpp 0.25")
def prepare_endonuke_command(
    ctx: typer.Context,
    source: SourceArg,
    out: OutOpt,
    mpp: Annotated[float, typer.Option("--mpp", help="Resample every tile to this many micrometres per pixel.")] = 0.25,
    crops: Annotated[str, typer.Option("--crops", help="none | seed (the seed project's 3 crops) | grid.")] = "none",
    crop_size: Annotated[int, typer.Option("--crop-size", help="Side of the crops.")] = 256,
    grid_overlap: Annotated[int, typer.Option("--grid-overlap", help="Overlap of grid crops in pixels.")] = 64,
    fractions: Annotated[str, _fractions("source tile")] = "0.6,0.2,0.2",
    seed: SeedOpt = 0,
    annotator: Annotated[
        list[str] | None,
        typer.Option("--annotator", help="Only these annotators (repeatable).", show_default="all seven"),
    ] = None,
    overwrite: OverwriteOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """EndoNuke (keypoints x y class): resample to a common scale, crop, split by source tile."""
    state(ctx).settings()
    from histostain.datasets.endonuke import prepare_endonuke

    summary = prepare_endonuke(
        source,
        out,
        mpp=mpp,
        crops=crops,
        crop_size=crop_size,
        grid_overlap=grid_overlap,
        fractions=fractions,
        seed=seed,
        annotators=annotator or None,
        overwrite=overwrite,
        provenance=provenance(ctx),
    )
    _render(summary, as_json)
