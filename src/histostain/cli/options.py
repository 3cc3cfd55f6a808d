"""Options that several commands share, declared once; defaults come from the services' own constants.

Only typer and torch-free modules are imported here (``histostain --help`` must not import torch), so a
service whose default a flag shows keeps that constant in a torch-free module.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from histostain.metrics.defaults import (  # a module without imports
    FID_WEIGHTS_FILENAME,
    NUM_WORKERS_SHOWN,
    SPLIT_ALL,
)

# ------------------------------------------------------------------------------------------ every command
JsonOpt = Annotated[
    bool,
    typer.Option("--json", help="Print the summary as JSON on stdout (nothing else there).", show_default="off"),
]


def out_folder(help: str) -> typer.models.OptionInfo:
    """``--out/-o DIR``: every command that writes takes its output FOLDER the same way."""
    return typer.Option("--out", "-o", metavar="DIR", help=help)


def weights_file(help: str, show_default: bool | str = True, metavar: str = "FILE") -> typer.models.OptionInfo:
    """``--weights/-w FILE``: every command that loads a model takes its weights file the same way.

    ``show_default``: what the help says happens without the option, when that is not "required";
    ``metavar``: ``FILE|RUN|NAME`` where a training run folder or a registry name works too
    (:func:`histostain.weights.resolve.resolve_weights`).
    """
    return typer.Option("--weights", "-w", metavar=metavar, help=help, show_default=show_default)


# ------------------------------------------------------------------------------- batch commands (io.batch)
# Defaults live in histostain.io.defaults (imports nothing); commands write e.g. ``tile: TileOpt = DEFAULT_TILE``.
InputsArg = Annotated[
    list[str],
    typer.Argument(metavar="INPUTS", help="Image files, folders or glob patterns (quote globs; ** is recursive)."),
]
OutOpt = Annotated[Path, out_folder("Output folder (created if needed; never an input folder or inside one).")]
RecursiveOpt = Annotated[
    bool, typer.Option("--recursive", "-r", help="Include sub-folders of folder inputs.", show_default="off")
]
OverwriteOpt = Annotated[
    bool,
    typer.Option(
        "--overwrite",
        help="Redo inputs whose outputs exist, also from other settings (else they are skipped).",
        show_default="off",
    ),
]
NumPartsOpt = Annotated[
    int | None,
    typer.Option(
        "--num-parts", help="Split the inputs into N shards.", show_default="a SLURM array's or torchrun's, else 1"
    ),
]
PartIdOpt = Annotated[
    int | None,
    typer.Option("--part-id", help="The shard this process runs, 0 .. N-1.", show_default="from the scheduler, else 0"),
]
RoiOpt = Annotated[
    str | None,
    typer.Option(
        "--roi",
        metavar="X,Y,W,H",
        help="Slides: process only this rectangle (level-0 pixels; outputs keep slide coordinates).",
        show_default="the whole slide",
    ),
]
TissueMaskOpt = Annotated[
    str,
    typer.Option(
        "--tissue-mask",
        metavar="PNG|auto|none",
        help="Slides: where the tissue is: auto (detected on a low level; glass is skipped), none, or a PNG"
        " mask of the whole slide (nonzero = tissue, any size, same proportions).",
    ),
]
FormatOpt = Annotated[str, typer.Option("--format", help="Image output format: png | tif.")]
TileOpt = Annotated[int, typer.Option("--tile", help="Largest tile side in pixels; larger images are tiled.")]
OverlapOpt = Annotated[int, typer.Option("--overlap", help="Minimum pixels shared by neighbouring tiles.")]
BatchSizeOpt = Annotated[int, typer.Option("--batch-size", help="Tiles per forward pass.")]

# ------------------------------------------------------------------------------------------- evaluate
# --out is a folder in every command; evaluate writes OUT/<metric>.json (+ <metric>_per_image.csv where there are
# per-image rows). Help texts hold no square brackets (rich markup would eat them); computed defaults are strings.


def eval_out_option(metric: str, per_image: bool = True) -> typer.models.OptionInfo:
    """``--out/-o DIR`` of one evaluate command, naming the files it writes there."""
    files = f"{metric}.json and {metric}_per_image.csv" if per_image else f"{metric}.json"
    return typer.Option(
        "--out",
        "-o",
        metavar="DIR",
        help=f"Folder to write {files} into (created if needed).",
        show_default="none, print only",
    )


EvalJsonOpt = Annotated[
    bool, typer.Option("--json", help="Print the metrics (the whole result) as JSON on stdout.", show_default="off")
]
FidWeightsOpt = Annotated[
    str | None,
    typer.Option(
        "--weights",
        "-w",
        metavar="FILE|NAME",
        help=f"The FID-Inception weights of pytorch-fid's release, {FID_WEIGHTS_FILENAME}, or a model name.",
        show_default="fid-inception in the weights cache",
    ),
]
FidBatchSizeOpt = Annotated[int, typer.Option("--batch-size", help="Images per forward pass.")]
FidWorkersOpt = Annotated[
    int | None,
    typer.Option("--num-workers", help="Processes decoding images in parallel.", show_default=NUM_WORKERS_SHOWN),
]
EvalSplitHelp = f"Split of a prepared dataset: a split name, or {SPLIT_ALL} to pool every split."

# ------------------------------------------------------------------------------------------------ train
# Both `train` commands take these. Options whose default depends on the trainer (the loop options: --seed,
# --log-every, ...) are built per command by `config_flag` from the trainer's config model (torch-free
# pydantic models), so the help shows each trainer's own default and the config's own description.
# Every option shows its default as a string (`show_default="..."`), so `--help` reads `[default: X]` throughout.
RunsDirOpt = Annotated[
    Path, typer.Option("--runs-dir", help="Parent folder of the run folders.", show_default="runs", metavar="DIR")
]
RunNameOpt = Annotated[str, typer.Option("--name", help="Run name: everything goes to RUNS_DIR/NAME.", metavar="NAME")]
TrainConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config",
        help="Training options from a TOML file; flags override it, a run's config.toml works (settings such as "
        "device have their own file, given before the command: histostain --settings FILE).",
        show_default="none",
        metavar="FILE",
    ),
]
ResumeOpt = Annotated[
    bool,
    typer.Option(
        "--resume",
        help="Continue RUNS_DIR/NAME from checkpoints/last.pt (its options are the base).",
        show_default="off",
    ),
]
TrainOverwriteOpt = Annotated[
    bool,
    typer.Option(
        "--overwrite",
        help="Delete RUNS_DIR/NAME (a histostain run folder with checkpoints) and start it again from scratch.",
        show_default="off",
    ),
]


def _shown_default(value: object) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def config_flag(
    config: type, name: str, *, text: str | None = None, flag: str | None = None, shown: str | None = None
) -> typer.models.OptionInfo:
    """The typer option of field ``name`` of a training config model: ``--name-with-dashes`` (``--x/--no-x`` for a
    boolean), help from the field's description (or ``text``), the config's default shown (or ``shown``, for a
    default that is computed or means something: ``no limit``; a None default otherwise shows as ``none``).

    The command's parameter defaults to None (= not given), so the config's layers decide the value; the shown
    default is always a string, so every option of a train command reads ``[default: X]`` the same way.
    """
    field = config.model_fields[name]  # type: ignore[attr-defined]
    described = text or field.description or name.replace("_", " ")
    default = shown if shown is not None else "none" if field.default is None else _shown_default(field.default)
    option = flag or "--" + name.replace("_", "-")
    if field.annotation is bool:
        option = f"{option}/--no-{option.removeprefix('--')}"
    return typer.Option(option, help=described[0].upper() + described[1:] + ".", show_default=default)


__all__ = [
    "out_folder",
    "weights_file",
    "BatchSizeOpt",
    "EvalJsonOpt",
    "EvalSplitHelp",
    "FidBatchSizeOpt",
    "FidWeightsOpt",
    "FidWorkersOpt",
    "FormatOpt",
    "InputsArg",
    "JsonOpt",
    "NumPartsOpt",
    "OutOpt",
    "OverlapOpt",
    "OverwriteOpt",
    "PartIdOpt",
    "RecursiveOpt",
    "ResumeOpt",
    "RunNameOpt",
    "RunsDirOpt",
    "TileOpt",
    "TrainConfigOpt",
    "TrainOverwriteOpt",
    "config_flag",
    "eval_out_option",
]
