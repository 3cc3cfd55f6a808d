"""The `histostain` command: the root Typer app, global options, `doctor`, and error rendering.

Only typer is imported at module level so that ``histostain --help`` stays fast: the command modules are
imported when their command runs (``cli.lazy``), and torch and the services inside the commands that need them.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from histostain import __version__
from histostain.cli.common import STATE, AppState, print_json, print_summary, state, stderr_console
from histostain.cli.lazy import LazyCommand, LazyGroup
from histostain.errors import HistostainError


class RootGroup(LazyGroup):
    """The root command: its sub-commands in the order ``--help`` shows them, each with its one-line help
    (a test checks these lines against the commands' own)."""

    lazy_commands = (
        LazyCommand(
            "synth",
            "histostain.cli.synth:synth",
            "Generate synthetic H&E / IHC tissue with exact ground truth in the BCI, PanNuke, EndoNuke or tiles "
            "layout.",
        ),
        LazyCommand(
            "prepare",
            "histostain.cli.prepare:prepare_app",
            "Validate a downloaded dataset (folder or published zip) and convert it into histostain's prepared format.",
        ),
        LazyCommand(
            "train",
            "histostain.cli.train:train_app",
            "Train models: CycleGAN stain translation (cyclegan), HoVer-Net nuclei segmentation (hovernet).",
        ),
        LazyCommand(
            "translate",
            "histostain.cli.translate:translate",
            "Translate IHC <-> H&E with a CycleGAN generator; output size = input size, names keep the input stem.",
        ),
        LazyCommand(
            "evaluate",
            "histostain.cli.evaluate:evaluate_app",
            "Compute the metrics papers report (FID/KID, cell detection F1, Dice/AJI/PQ, PSNR/SSIM).",
        ),
    )


app = typer.Typer(
    cls=RootGroup,
    name="histostain",
    help="Stain translation (CycleGAN) and nuclei segmentation (HoVer-Net) for computational pathology.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"histostain {__version__} (Python {sys.version.split()[0]})")
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    device: Annotated[
        str | None, typer.Option(help="auto | cpu | cuda | cuda:N | mps (env HISTOSTAIN_DEVICE; default auto)")
    ] = None,
    precision: Annotated[
        str | None, typer.Option(help="auto | fp32 | bf16 | fp16 (env HISTOSTAIN_PRECISION; default auto)")
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or info messages.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks and debug messages.")] = False,
    config: Annotated[
        Path | None,
        typer.Option("--config", help="Settings file, TOML (env HISTOSTAIN_CONFIG; else ./histostain.toml)"),
    ] = None,
    version: Annotated[
        bool, typer.Option("--version", callback=_version_callback, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """Global options apply to every command; flags beat HISTOSTAIN_* variables, which beat the config file."""
    STATE.device, STATE.precision, STATE.quiet, STATE.debug, STATE.config = device, precision, quiet, debug, config
    STATE._resolved = None
    ctx.obj = STATE


@app.command()
def doctor(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Check the installation: versions, devices, the precision `auto` picks and why, settings and sources."""
    from histostain.runtime.environment import environment_report

    report = environment_report(state(ctx).settings())
    if as_json:
        print_json(report)
        return
    cuda = report["cuda"]
    resolved = report["resolved"]
    rows = [
        ("Python", report["python"]),
        ("Platform", report["platform"]),
        ("torch / torchvision", f"{report['torch']} / {report['torchvision']}"),
        ("CUDA", f"available={cuda['available']} built_with={cuda['built_with']} cuDNN={cuda['cudnn']}"),
        *[(f"  cuda:{d['index']}", f"{d['name']} (bf16={d['bf16']})") for d in cuda["devices"]],
        ("MPS", f"available={report['mps']['available']}"),
        ("CPU", f"{report['cpu']['name']} (native bf16={report['cpu']['native_bf16']})"),
        ("torch threads", str(report["cpu"]["torch_threads"])),
        ("device", f"{resolved['device']}  ({resolved['device_reason']})"),
        ("precision", f"{resolved['precision']}  ({resolved['precision_reason']})"),
        ("cache dir", report["cache_dir"]),
        ("config file", report["config_file"] or "none"),
    ]
    rows += [
        (f"setting {name}", f"{item['value']}  [dim]from {item['source']}[/dim]")
        for name, item in report["settings"].items()
    ]
    print_summary(f"histostain {report['histostain']}", rows, header=False)
    for warning in resolved["warnings"]:
        stderr_console().print(f"[yellow]warning:[/yellow] {warning}")


def _render_error(error: HistostainError, current: AppState) -> None:
    console = stderr_console()
    if current.debug:
        console.print_exception(show_locals=False)
    from rich.text import Text

    console.print(Text.assemble(("Error: ", "bold red"), (error.one_line(), "red")), highlight=False)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: known errors print one red line and exit 2; bugs keep their traceback."""
    from histostain.provenance import set_invocation

    set_invocation(["histostain", *(sys.argv[1:] if argv is None else argv)])
    try:
        app(args=argv, prog_name="histostain")
    except HistostainError as error:
        _render_error(error, STATE)
        sys.exit(error.exit_code)
