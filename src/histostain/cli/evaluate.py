"""`histostain evaluate fid|kid|celldet|instance|paired`: reference-exact metrics (heavy imports inside).

Every command takes ground truth / real first and prediction / fake second, prints a table (or JSON with
``--json``), and with ``--out DIR`` also writes ``DIR/<metric>.json`` (and ``DIR/<metric>_per_image.csv`` where
there are per-image rows). The output folder is checked before anything is computed. The commands parse
options, call one service of :mod:`histostain.metrics` with this invocation's provenance record and render its
result; the rules (defaults, splits, worker policy, validation, warnings) belong to the services. Each warning
is printed once, here, from ``result.warnings`` (the services log them at DEBUG only).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from histostain.cli.common import print_json, print_summary, provenance, state, stderr_console
from histostain.cli.options import (
    EvalJsonOpt,
    EvalSplitHelp,
    FidBatchSizeOpt,
    FidWeightsOpt,
    FidWorkersOpt,
    eval_out_option,
)
from histostain.errors import ConfigError
from histostain.metrics.defaults import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_COMPAT,
    DEFAULT_MATCH_IOU,
    DEFAULT_PROTOCOL,
    DEFAULT_RADIUS,
    KID_SEED,
    KID_SUBSET_SIZE,
    KID_SUBSETS,
    PAIRED_METRICS,
    SPLIT_SHOWN,
)

if TYPE_CHECKING:
    from histostain.metrics.report import EvaluationResult, TableView

log = logging.getLogger("histostain.cli")

evaluate_app = typer.Typer(
    help="Compute the metrics papers report (FID/KID, cell detection F1, Dice/AJI/PQ, PSNR/SSIM).",
    no_args_is_help=True,
)


def _format(value: object) -> str:
    if isinstance(value, float):
        return "nan" if value != value else f"{value:.4f}"
    return "n/a" if value is None else str(value)


def _check_out(out: Path | None, metric: str) -> None:
    """Refuse an unusable ``--out`` in one line before any work (creates nothing)."""
    if out is not None:
        from histostain.metrics.report import check_output

        check_output(out, metric)


def _print_view(name: str, rows: list[dict[str, Any]], view: TableView | None, scope: str) -> None:
    """One table at the terminal: the view's columns that the rows have (all columns without a view)."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from histostain.cli.common import print_table

    columns = view.shown(rows) if view is not None else list(dict.fromkeys(key for row in rows for key in row))
    title = (view.title if view is not None and view.title else name.replace("_", " ")) + scope
    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column, justify="left" if column == columns[0] else "right")
    for row in rows:
        table.add_row(*[_format(row.get(column)) for column in columns])
    print_table(table)
    if view is not None and view.legend:
        Console().print(Text(view.legend, style="dim"))  # wrapped at the terminal width, unlike the tables' console


def _finish(result: EvaluationResult, out: Path | None, as_json: bool, title: str) -> None:
    """Save, then print JSON or the summary table and the result's secondary tables; warnings go to stderr once."""
    if out is not None:
        written = result.write(out)
        log.info("wrote %s", ", ".join(str(path) for path in written))
    if as_json:
        print_json(result.to_json())
    else:
        scope = f" ({result.scope})" if result.scope else ""
        rows = [(name, _format(value)) for name, value in result.summary.items()]
        print_summary(title + scope, rows + list(result.notes.items()))
        for name, table_rows in result.tables.items():
            if table_rows:
                for view in result.views.get(name) or [None]:
                    _print_view(name, table_rows, view, scope)
    console = stderr_console()
    for warning in result.warnings:
        console.print(f"[yellow]warning:[/yellow] {warning}", highlight=False, markup=True)


def parse_class_map(text: str | None, option: str = "--class-map") -> dict[int, int] | None:
    """``"0:3,1:5,2:3"`` -> ``{0: 3, 1: 5, 2: 3}``."""
    if not text:
        return None
    mapping: dict[int, int] = {}
    for item in text.split(","):
        source, sep, target = item.partition(":")
        try:
            if not sep:
                raise ValueError
            mapping[int(source)] = int(target)
        except ValueError as exc:
            raise ConfigError(
                f"{option} {text!r}: expected comma-separated FROM:TO integer pairs, e.g. 0:3,1:5"
            ) from exc
    return mapping


def _feature_options(
    ctx: typer.Context, weights: str | None, batch_size: int, num_workers: int | None
) -> dict[str, Any]:
    """What FID and KID both pass to their service: device, weights (or the settings' folder), loader, record.

    ``--weights`` may be a file or a registry name (:func:`histostain.weights.resolve.resolve_weights`); without
    it the service looks for ``fid-inception`` in the weights cache (and the older flat layout)."""
    app_state = state(ctx)
    settings = app_state.settings().settings
    path = None
    if weights is not None:
        from histostain.weights.resolve import resolve_weights

        path = resolve_weights(weights, task="fid", settings=settings).path
    return {
        "device": app_state.device_manager(),
        "weights": path,
        "weights_dir": settings.weights_dir,
        "batch_size": batch_size,
        "num_workers": num_workers,
        "provenance": provenance(ctx),
    }


RealArg = Annotated[Path, typer.Argument(metavar="REAL", help="Folder of real images.")]
FakeArg = Annotated[Path, typer.Argument(metavar="FAKE", help="Folder of generated images.")]
SplitOpt = Annotated[str | None, typer.Option("--split", help=EvalSplitHelp, show_default=SPLIT_SHOWN)]


@evaluate_app.command("fid", epilog="Example:  histostain evaluate fid real_HE fake_HE -o results")
def fid_command(
    ctx: typer.Context,
    real: Annotated[Path, typer.Argument(metavar="REAL", help="Folder of real images, or a .npz with mu and sigma.")],
    fake: Annotated[
        Path, typer.Argument(metavar="FAKE", help="Folder of generated images, or a .npz with mu and sigma.")
    ],
    weights: FidWeightsOpt = None,
    batch_size: FidBatchSizeOpt = DEFAULT_BATCH_SIZE,
    num_workers: FidWorkersOpt = None,
    save_stats: Annotated[
        Path | None,
        typer.Option(
            "--save-stats",
            metavar="FILE",
            help="Also save the REAL side's mu/sigma (+ N, weights sha256) to this .npz for reuse.",
            show_default="none",
        ),
    ] = None,
    out: Annotated[Path | None, eval_out_option("fid", per_image=False)] = None,
    as_json: EvalJsonOpt = False,
) -> None:
    """Fréchet Inception Distance, exactly as pytorch-fid computes it (2048-d pool3, bilinear 299)."""
    _check_out(out, "fid")
    from histostain.metrics.evaluate_fid import evaluate_fid

    features = _feature_options(ctx, weights, batch_size, num_workers)
    result = evaluate_fid(real, fake, save_stats=save_stats, **features)
    _finish(result, out, as_json, "FID")


@evaluate_app.command("kid", epilog="Example:  histostain evaluate kid real_HE fake_HE --json")
def kid_command(
    ctx: typer.Context,
    real: RealArg,
    fake: FakeArg,
    weights: FidWeightsOpt = None,
    batch_size: FidBatchSizeOpt = DEFAULT_BATCH_SIZE,
    num_workers: FidWorkersOpt = None,
    subsets: Annotated[int, typer.Option("--subsets", help="Number of random subsets.")] = KID_SUBSETS,
    subset_size: Annotated[
        int, typer.Option("--subset-size", help="Subset size (capped at the smaller image count).")
    ] = KID_SUBSET_SIZE,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the subset draws.")] = KID_SEED,
    out: Annotated[Path | None, eval_out_option("kid", per_image=False)] = None,
    as_json: EvalJsonOpt = False,
) -> None:
    """Kernel Inception Distance: cubic-kernel unbiased MMD² on the FID features (table shows ×1000)."""
    _check_out(out, "kid")
    from histostain.metrics.evaluate_fid import evaluate_kid

    features = _feature_options(ctx, weights, batch_size, num_workers)
    result = evaluate_kid(real, fake, subsets=subsets, subset_size=subset_size, seed=seed, **features)
    _finish(result, out, as_json, "KID")


@evaluate_app.command("celldet", epilog="Example:  histostain evaluate celldet prepared/endonuke hover_out -o results")
def celldet_command(
    ctx: typer.Context,
    true: Annotated[
        Path,
        typer.Argument(
            metavar="TRUE",
            help="Ground truth: folder of centroid txt / hover_net JSON / GeoJSON / CSV, or prepared EndoNuke.",
        ),
    ],
    pred: Annotated[
        Path, typer.Argument(metavar="PRED", help="Predictions: folder of the same formats, paired by file stem.")
    ],
    radius: Annotated[float, typer.Option("--radius", help="Matching radius in pixels.")] = DEFAULT_RADIUS,
    radius_um: Annotated[
        float | None,
        typer.Option(
            "--radius-um", help="Matching radius in micrometres (needs --mpp).", show_default="none, --radius is used"
        ),
    ] = None,
    mpp: Annotated[
        float | None,
        typer.Option(
            "--mpp",
            help="Micrometres per pixel of the images.",
            show_default="from the prepared manifest, else none",
        ),
    ] = None,
    threshold: Annotated[
        list[float] | None,
        typer.Option(
            "--threshold",
            help="Score threshold(s) for an extra per-threshold table (repeatable).",
            show_default="none",
        ),
    ] = None,
    class_map: Annotated[
        str | None,
        typer.Option("--class-map", help="Map ground-truth classes, e.g. 0:3,1:5,2:3.", show_default="none"),
    ] = None,
    pred_class_map: Annotated[
        str | None, typer.Option("--pred-class-map", help="Map predicted classes, same syntax.", show_default="none")
    ] = None,
    compat: Annotated[
        str, typer.Option("--compat", help="histostain | seed (reproduce the seed's dummy point in empty images).")
    ] = DEFAULT_COMPAT,
    split: SplitOpt = None,
    out: Annotated[Path | None, eval_out_option("celldet")] = None,
    as_json: EvalJsonOpt = False,
) -> None:
    """Cell detection precision / recall / F1: Hungarian matching of centroids within a radius, pooled counts."""
    _check_out(out, "celldet")
    record = provenance(ctx)
    from histostain.metrics.evaluate_celldet import evaluate_celldet

    result = evaluate_celldet(
        true,
        pred,
        radius=radius,
        radius_um=radius_um,
        mpp=mpp,
        thresholds=threshold or None,
        class_map=parse_class_map(class_map),
        pred_class_map=parse_class_map(pred_class_map, "--pred-class-map"),
        compat=compat,
        split=split,
        provenance=record,
    )
    _finish(result, out, as_json, "Cell detection")


@evaluate_app.command("instance", epilog="Example:  histostain evaluate instance prepared/pannuke pred -o results")
def instance_command(
    ctx: typer.Context,
    true: Annotated[
        Path,
        typer.Argument(
            metavar="TRUE", help="Ground truth: label TIFFs / .mat folder, prepared PanNuke, or masks.npy folder."
        ),
    ],
    pred: Annotated[
        Path, typer.Argument(metavar="PRED", help="Predictions in the same kind of input, paired by stem or row.")
    ],
    protocol: Annotated[
        str, typer.Option("--protocol", help="hovernet (per-image means) | pannuke (official mPQ/bPQ).")
    ] = DEFAULT_PROTOCOL,
    match_iou: Annotated[float, typer.Option("--match-iou", help="IoU threshold for PQ matching.")] = DEFAULT_MATCH_IOU,
    split: SplitOpt = None,
    out: Annotated[Path | None, eval_out_option("instance")] = None,
    as_json: EvalJsonOpt = False,
) -> None:
    """Instance segmentation: Dice, AJI, AJI+, DQ, SQ, PQ (hover_net semantics) or the PanNuke mPQ/bPQ protocol."""
    _check_out(out, "instance")
    record = provenance(ctx)
    from histostain.metrics.evaluate_instance import evaluate_instance

    result = evaluate_instance(true, pred, protocol=protocol, match_iou=match_iou, split=split, provenance=record)
    _finish(result, out, as_json, f"Instance segmentation ({protocol})")


@evaluate_app.command("paired", epilog="Example:  histostain evaluate paired real_HE fake_HE -o results")
def paired_command(
    ctx: typer.Context,
    real: Annotated[Path, typer.Argument(metavar="REAL", help="Folder of reference images (e.g. real H&E).")],
    fake: Annotated[Path, typer.Argument(metavar="FAKE", help="Folder of translated images, paired by file stem.")],
    metrics: Annotated[
        str | None,
        typer.Option("--metrics", help=f"Comma-separated subset of {', '.join(PAIRED_METRICS)}.", show_default="all"),
    ] = None,
    out: Annotated[Path | None, eval_out_option("paired")] = None,
    as_json: EvalJsonOpt = False,
) -> None:
    """Paired translation quality: PSNR and SSIM (BCI protocol), MS-GMSD, MDSI, HaarPSI, MAE, Pearson r."""
    _check_out(out, "paired")
    record = provenance(ctx)
    from histostain.metrics.evaluate_paired import evaluate_paired

    chosen = [name.strip() for name in metrics.split(",") if name.strip()] if metrics else None
    result = evaluate_paired(real, fake, metrics=chosen, provenance=record)
    _finish(result, out, as_json, "Paired image metrics")
