"""Options that several commands share, declared once; defaults come from the services' own constants.

Only typer and torch-free modules are imported here (``histostain --help`` must not import torch), so a
service whose default a flag shows keeps that constant in a torch-free module.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

# ------------------------------------------------------------------------------------------ every command
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the summary as JSON on stdout (nothing else there).")]

# ------------------------------------------------------------------------------- batch commands (io.batch)

# ------------------------------------------------------------------------------------------- evaluate

# ------------------------------------------------------------------------------------------------ train
RunsDirOpt = Annotated[Path, typer.Option("--runs-dir", help="Parent folder of the run folders.")]

__all__ = ["JsonOpt", "RunsDirOpt"]
