"""Options that several commands share, declared once; defaults come from the services' own constants.

Only typer and torch-free modules are imported here (``histostain --help`` must not import torch), so a
service whose default a flag shows keeps that constant in a torch-free module.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from histostain.metrics.defaults import GPU_MAX_WORKERS  # a module without imports

# ------------------------------------------------------------------------------------------ every command
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the summary as JSON on stdout (nothing else there).")]

# ------------------------------------------------------------------------------- batch commands (io.batch)
# Defaults live in histostain.io.defaults (imports nothing); commands write e.g. ``tile: TileOpt = DEFAULT_TILE``.
InputsArg = Annotated[
    list[str], typer.Argument(help="Image files, folders or glob patterns (quote globs; ** is recursive).")
]
OutOpt = Annotated[
    Path, typer.Option("--out", "-o", help="Output folder (created if needed; never an input folder or inside one).")
]
RecursiveOpt = Annotated[bool, typer.Option("--recursive", "-r", help="Include sub-folders of folder inputs.")]
OverwriteOpt = Annotated[
    bool, typer.Option("--overwrite", help="Redo inputs whose outputs exist, also from other settings (default: skip).")
]
NumPartsOpt = Annotated[
    int | None,
    typer.Option("--num-parts", help="Split the inputs into N shards (default: SLURM array or torchrun, else 1)."),
]
PartIdOpt = Annotated[
    int | None, typer.Option("--part-id", help="The shard this process runs, 0 .. N-1 (default: from the scheduler).")
]
FormatOpt = Annotated[str, typer.Option("--format", help="Image output format: png | tif.")]
TileOpt = Annotated[int, typer.Option("--tile", help="Largest tile side in pixels; larger images are tiled.")]
OverlapOpt = Annotated[int, typer.Option("--overlap", help="Minimum pixels shared by neighbouring tiles.")]
BatchSizeOpt = Annotated[int, typer.Option("--batch-size", help="Tiles per forward pass.")]

# ------------------------------------------------------------------------------------------- evaluate

EvalOutOpt = Annotated[
    Path | None, typer.Option("--out", help="Write the metrics JSON here (+ <stem>_per_image.csv beside it).")
]
EvalJsonOpt = Annotated[bool, typer.Option("--json", help="Print the metrics (the whole result) as JSON on stdout.")]
FidWeightsOpt = Annotated[
    Path | None,
    typer.Option("--weights", help="pt_inception-2015-12-05-6726825d.pth (default: HISTOSTAIN_HOME/weights/)."),
]
FidBatchSizeOpt = Annotated[int, typer.Option("--batch-size", help="Images per forward pass.")]
FidWorkersOpt = Annotated[
    int | None,
    typer.Option(
        "--num-workers",
        help=f"Processes decoding images in parallel (default: 0 on a CPU, min({GPU_MAX_WORKERS}, CPUs) on a GPU).",
    ),
]

# ------------------------------------------------------------------------------------------------ train
# Both `train` commands take these. Options whose default depends on the trainer (the loop options: --seed,
# --log-every, ...) are built per command by `config_flag` from the trainer's config model (torch-free
# pydantic models), so the help shows each trainer's own default and the config's own description.
RunsDirOpt = Annotated[Path, typer.Option("--runs-dir", help="Parent folder of the run folders.")]
RunNameOpt = Annotated[str, typer.Option("--name", help="Run name: everything goes to RUNS_DIR/NAME.")]
TrainConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", help="Training options from a TOML file (flags override it; a run's config.toml works)."),
]
ResumeOpt = Annotated[
    bool, typer.Option("--resume", help="Continue RUNS_DIR/NAME from checkpoints/last.pt (its options are the base).")
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
    boolean), help from the field's description (or ``text``), the config's default shown (or ``shown``).

    The command's parameter defaults to None (= not given), so the config's layers decide the value.
    """
    field = config.model_fields[name]  # type: ignore[attr-defined]
    described = text or field.description or name.replace("_", " ")
    default = shown if shown is not None else None if field.default is None else _shown_default(field.default)
    option = flag or "--" + name.replace("_", "-")
    if field.annotation is bool:
        option = f"{option}/--no-{option.removeprefix('--')}"
    return typer.Option(option, help=described[0].upper() + described[1:] + ".", show_default=default or False)


__all__ = [
    "BatchSizeOpt",
    "EvalJsonOpt",
    "EvalOutOpt",
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
    "config_flag",
]
