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
from histostain.cli import help_format
from histostain.cli.common import STATE, AppState, print_json, print_summary, state, stderr_console
from histostain.cli.lazy import LazyCommand, LazyGroup
from histostain.errors import HistostainError, InputError

help_format.apply()

# Global options a user may also type after the command (`histostain translate ... --device cpu`): they are
# moved before it. Those that take a value, and those that do not.
GLOBAL_VALUE_OPTIONS = ("--device", "--precision", "--settings")
GLOBAL_FLAGS = ("--quiet", "-q", "--debug")


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
            "Train models: stain translation (cyclegan, pix2pix), HoVer-Net nuclei segmentation (hovernet), IHC "
            "nuclei keypoint detection (detector).",
        ),
        LazyCommand(
            "translate",
            "histostain.cli.translate:translate",
            "Translate IHC <-> H&E with a CycleGAN generator; output size = input size, names keep the input stem.",
        ),
        LazyCommand(
            "segment",
            "histostain.cli.segment:segment",
            "Find and classify nuclei (HoVer-Net, the IHC detector or the weight-free classical model; IHC"
            " positivity and H-score).",
        ),
        LazyCommand(
            "pipeline",
            "histostain.cli.pipeline:pipeline",
            "IHC tiles -> synthetic H&E -> nuclei -> metrics (with --ground-truth) and report.html.",
        ),
        LazyCommand(
            "demo",
            "histostain.cli.demo:demo",
            "Run the whole tool on synthetic tissue in about a minute: four routes compared, a report to open.",
        ),
        LazyCommand(
            "evaluate",
            "histostain.cli.evaluate:evaluate_app",
            "Compute the metrics papers report (FID/KID, cell detection F1, Dice/AJI/PQ, PSNR/SSIM).",
        ),
        LazyCommand(
            "weights",
            "histostain.cli.weights:weights_app",
            "List, download, import and verify named models (model cards, checksummed weights cache).",
        ),
    )


app = typer.Typer(
    cls=RootGroup,
    name="histostain",
    help="Stain translation (CycleGAN) and nuclei segmentation (HoVer-Net) for computational pathology.",
    epilog="Example: histostain --device cpu translate tiles/ -w latest_net_G_A.pth --direction ihc2he -o he/",
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
        str | None,
        typer.Option(
            "--device",
            metavar="DEVICE",
            help="auto | cpu | cuda | cuda:N | mps (env HISTOSTAIN_DEVICE).",
            show_default="auto",
        ),
    ] = None,
    precision: Annotated[
        str | None,
        typer.Option(
            "--precision",
            metavar="PRECISION",
            help="auto | fp32 | bf16 | fp16 (env HISTOSTAIN_PRECISION).",
            show_default="auto",
        ),
    ] = None,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No progress bars or info messages.", show_default="off")
    ] = False,
    debug: Annotated[
        bool, typer.Option("--debug", help="Show tracebacks and debug messages.", show_default="off")
    ] = False,
    settings_file: Annotated[
        Path | None,
        typer.Option(
            "--settings",
            metavar="FILE",
            help="Settings file, TOML: device, precision, home, num_threads, quiet (env HISTOSTAIN_SETTINGS).",
            show_default="./histostain.toml if present",
        ),
    ] = None,
    version: Annotated[
        bool, typer.Option("--version", callback=_version_callback, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """Global options apply to every command (before or after its name); flags beat HISTOSTAIN_* variables,
    which beat the settings file."""
    STATE.device, STATE.precision, STATE.quiet, STATE.debug = device, precision, quiet, debug
    STATE.settings_file = settings_file
    STATE._resolved = None
    ctx.obj = STATE


@app.command(epilog="Example: histostain --device cuda doctor --json")
def doctor(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.", show_default="off")] = False,
) -> None:
    """Check the installation: versions, devices, the precision `auto` picks and why, settings and sources.

    When the requested device or precision cannot be used here, the report says why and the command exits 2.
    """
    from histostain.errors import DeviceError
    from histostain.runtime.environment import environment_report

    report = environment_report(state(ctx).settings())
    if as_json:
        print_json(report)
    else:
        print_summary(f"histostain {report['histostain']}", _doctor_rows(report), header=False)
        for warning in report["resolved"]["warnings"]:
            stderr_console().print(f"[yellow]warning:[/yellow] {warning}", highlight=False)
    problem = report["resolved"].get("error")
    if problem:
        raise DeviceError(problem["message"], hint=problem["hint"])


def _doctor_rows(report: dict) -> list[tuple[str, str]]:
    cuda, resolved, fid = report["cuda"], report["resolved"], report["fid_weights"]
    if resolved.get("error"):
        device_row = ("device", f"[red]unavailable[/red]  ({resolved['error']['message']})")
        precision_row = ("precision", "-")
    else:
        device_row = ("device", f"{resolved['device']}  ({resolved['device_reason']})")
        precision_row = ("precision", f"{resolved['precision']}  ({resolved['precision_reason']})")
    if fid["present"]:
        kind = "the published file" if fid["published"] else "[yellow]NOT the published file[/yellow]"
        fid_row = ("FID-Inception weights", f"{fid['path']} ({kind})")
    else:
        fid_row = (
            "FID-Inception weights",
            f"missing: {fid['path']} (only `evaluate fid|kid` and --val-fid need it: "
            "`histostain weights download fid-inception`)",
        )
    rows = [
        ("Python", report["python"]),
        ("Platform", report["platform"]),
        ("torch / torchvision", f"{report['torch']} / {report['torchvision']}"),
        ("CUDA", f"available={cuda['available']} built_with={cuda['built_with']} cuDNN={cuda['cudnn']}"),
        *[(f"  cuda:{d['index']}", f"{d['name']} (bf16={d['bf16']})") for d in cuda["devices"]],
        ("MPS", f"available={report['mps']['available']}"),
        ("CPU", f"{report['cpu']['name']} (native bf16={report['cpu']['native_bf16']})"),
        ("torch threads", str(report["cpu"]["torch_threads"])),
        device_row,
        precision_row,
        ("cache dir", report["cache_dir"]),
        fid_row,
        ("settings file", report["settings_file"] or "none"),
    ]
    rows += [
        (f"setting {name}", f"{item['value']}  [dim]from {item['source']}[/dim]")
        for name, item in report["settings"].items()
    ]
    return rows


def _render_error(error: HistostainError, current: AppState) -> None:
    console = stderr_console()
    if current.debug:
        console.print_exception(show_locals=False)
    from rich.text import Text

    console.print(Text.assemble(("Error: ", "bold red"), (error.one_line(), "red")), highlight=False)


def hoist_global_options(argv: list[str]) -> list[str]:
    """Move global options typed after the command name to before it, so they work in either place.

    Only the root's own options are moved (no command declares one of these names); everything after ``--`` is
    left alone. ``--device=cpu`` and ``--device cpu`` both work.
    """
    head: list[str] = []
    index = 0
    while index < len(argv) and argv[index].startswith("-"):  # the root's options before the command
        token = argv[index]
        head.append(token)
        if token in GLOBAL_VALUE_OPTIONS and index + 1 < len(argv):
            head.append(argv[index + 1])
            index += 1
        index += 1
    moved: list[str] = []
    rest: list[str] = []
    tail = argv[index:]
    position = 0
    while position < len(tail):
        token = tail[position]
        if token == "--":
            rest.extend(tail[position:])
            break
        name = token.split("=", 1)[0]
        if token in GLOBAL_FLAGS or name in GLOBAL_VALUE_OPTIONS and "=" in token:
            moved.append(token)
        elif token in GLOBAL_VALUE_OPTIONS and position + 1 < len(tail):
            moved.extend(tail[position : position + 2])
            position += 1
        else:
            rest.append(token)
        position += 1
    return [*head, *moved, *rest]


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: known errors print one red line and exit 2; bugs keep their traceback."""
    from histostain.provenance import set_invocation

    typed = list(sys.argv[1:] if argv is None else argv)
    set_invocation(["histostain", *typed])  # the provenance keeps the command as typed
    try:
        app(args=hoist_global_options(typed), prog_name="histostain")
    except HistostainError as error:
        _render_error(error, STATE)
        sys.exit(error.exit_code)
    except OSError as error:  # a disk or location problem that no earlier check could see (the disk filled up)
        from histostain.io.writable import USER_ERRNOS, os_error_message

        if error.errno not in USER_ERRNOS:
            raise
        message = os_error_message(error, action=None)
        _render_error(InputError(message, hint="free space or choose another location"), STATE)
        sys.exit(InputError.exit_code)
