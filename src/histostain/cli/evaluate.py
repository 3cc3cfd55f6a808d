"""`histostain evaluate fid|kid|celldet|instance|paired`: reference-exact metrics (heavy imports inside).

Every command takes ground truth / real first and prediction / fake second, prints a table (or JSON with
``--json``), and with ``--out metrics.json`` also writes the JSON and a per-image CSV beside it. The commands
parse options, call one service of :mod:`histostain.metrics` with this invocation's provenance record and render
its result; the rules (defaults, worker policy, validation) belong to the services.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from histostain.cli.common import print_json, print_summary, provenance, state, stderr_console
from histostain.cli.options import EvalJsonOpt, EvalOutOpt, FidBatchSizeOpt, FidWeightsOpt, FidWorkersOpt
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
)

if TYPE_CHECKING:
    from histostain.metrics.report import EvaluationResult

evaluate_app = typer.Typer(
    help="Compute the metrics papers report (FID/KID, cell detection F1, Dice/AJI/PQ, PSNR/SSIM).",
    no_args_is_help=True,
)


def _format(value: object) -> str:
    if isinstance(value, float):
        return "nan" if value != value else f"{value:.4f}"
    return "n/a" if value is None else str(value)


def _finish(result: EvaluationResult, out: Path | None, as_json: bool, title: str) -> None:
    """Save, then print JSON or the summary table and the result's secondary tables; warnings go to stderr."""
    if out is not None:
        result.write(out)
    if as_json:
        print_json(result.to_json())
    else:
        print_summary(title, [(name, _format(value)) for name, value in result.summary.items()])
        from rich.table import Table

        from histostain.cli.common import print_table

        for name, rows in result.tables.items():
            if not rows:
                continue
            table = Table(title=name.replace("_", " "), title_justify="left")
            columns = list(dict.fromkeys(key for row in rows for key in row))
            for column in columns:
                table.add_column(column, justify="left" if column == columns[0] else "right")
            for row in rows:
                table.add_row(*[_format(row.get(column)) for column in columns])
            print_table(table)
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
    ctx: typer.Context, weights: Path | None, batch_size: int, num_workers: int | None
) -> dict[str, Any]:
    """What FID and KID both pass to their service: device, weights (or the settings' folder), loader, record."""
    app_state = state(ctx)
    return {
        "device": app_state.device_manager(),
        "weights": weights,
        "weights_dir": app_state.settings().settings.weights_dir,
        "batch_size": batch_size,
        "num_workers": num_workers,
        "provenance": provenance(ctx),
    }


@evaluate_app.command("fid")
def fid_command(
    ctx: typer.Context,
    real: Annotated[Path, typer.Argument(help="Folder of real images, or a .npz with mu and sigma.")],
    fake: Annotated[Path, typer.Argument(help="Folder of generated images, or a .npz with mu and sigma.")],
    weights: FidWeightsOpt = None,
    batch_size: FidBatchSizeOpt = DEFAULT_BATCH_SIZE,
    num_workers: FidWorkersOpt = None,
    save_stats: Annotated[
        Path | None,
        typer.Option(
            "--save-stats", help="Also save the REAL side's mu/sigma (+ N, weights sha256) to this .npz for reuse."
        ),
    ] = None,
    out: EvalOutOpt = None,
    as_json: EvalJsonOpt = False,
) -> None:
    """Fréchet Inception Distance, exactly as pytorch-fid computes it (2048-d pool3, bilinear 299)."""
    from histostain.metrics.evaluate_fid import evaluate_fid

    features = _feature_options(ctx, weights, batch_size, num_workers)
    result = evaluate_fid(real, fake, save_stats=save_stats, **features)
    _finish(result, out, as_json, "FID")


@evaluate_app.command("kid")
def kid_command(
    ctx: typer.Context,
    real: Annotated[Path, typer.Argument(help="Folder of real images.")],
    fake: Annotated[Path, typer.Argument(help="Folder of generated images.")],
    weights: FidWeightsOpt = None,
    batch_size: FidBatchSizeOpt = DEFAULT_BATCH_SIZE,
    num_workers: FidWorkersOpt = None,
    subsets: Annotated[int, typer.Option("--subsets", help="Number of random subsets.")] = KID_SUBSETS,
    subset_size: Annotated[
        int, typer.Option("--subset-size", help="Subset size (capped at the smaller image count).")
    ] = KID_SUBSET_SIZE,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the subset draws.")] = KID_SEED,
    out: EvalOutOpt = None,
    as_json: EvalJsonOpt = False,
) -> None:
    """Kernel Inception Distance: cubic-kernel unbiased MMD² on the FID features (table shows ×1000)."""
    from histostain.metrics.evaluate_fid import evaluate_kid

    features = _feature_options(ctx, weights, batch_size, num_workers)
    result = evaluate_kid(real, fake, subsets=subsets, subset_size=subset_size, seed=seed, **features)
    _finish(result, out, as_json, "KID")


@evaluate_app.command("celldet")
def celldet_command(
    ctx: typer.Context,
    true: Annotated[
        Path,
        typer.Argument(
            help="Ground truth: folder of centroid txt / hover_net JSON / GeoJSON / CSV, or prepared EndoNuke."
        ),
    ],
    pred: Annotated[Path, typer.Argument(help="Predictions: folder of the same formats, paired by file stem.")],
    radius: Annotated[float, typer.Option("--radius", help="Matching radius in pixels.")] = DEFAULT_RADIUS,
    radius_um: Annotated[
        float | None, typer.Option("--radius-um", help="Matching radius in micrometres (needs --mpp).")
    ] = None,
    mpp: Annotated[float | None, typer.Option("--mpp", help="Micrometres per pixel of the images.")] = None,
    threshold: Annotated[
        list[float] | None, typer.Option("--threshold", help="Score threshold(s) for predictions (repeatable).")
    ] = None,
    class_map: Annotated[
        str | None, typer.Option("--class-map", help="Map ground-truth classes, e.g. 0:3,1:5,2:3.")
    ] = None,
    pred_class_map: Annotated[
        str | None, typer.Option("--pred-class-map", help="Map predicted classes, same syntax.")
    ] = None,
    compat: Annotated[
        str, typer.Option("--compat", help="histostain | seed (reproduce the seed's dummy point in empty images).")
    ] = DEFAULT_COMPAT,
    split: Annotated[
        str | None, typer.Option("--split", help="Prepared EndoNuke ground truth: only this split.")
    ] = None,
    out: EvalOutOpt = None,
    as_json: EvalJsonOpt = False,
) -> None:
    """Cell detection precision / recall / F1: Hungarian matching of centroids within a radius, pooled counts."""
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


@evaluate_app.command("instance")
def instance_command(
    ctx: typer.Context,
    true: Annotated[
        Path, typer.Argument(help="Ground truth: label TIFFs / .mat folder, prepared PanNuke, or masks.npy folder.")
    ],
    pred: Annotated[Path, typer.Argument(help="Predictions in the same kind of input, paired by stem or row.")],
    protocol: Annotated[
        str, typer.Option("--protocol", help="hovernet (per-image means) | pannuke (official mPQ/bPQ).")
    ] = DEFAULT_PROTOCOL,
    match_iou: Annotated[float, typer.Option("--match-iou", help="IoU threshold for PQ matching.")] = DEFAULT_MATCH_IOU,
    split: Annotated[str | None, typer.Option("--split", help="Split of a prepared dataset (default test).")] = None,
    out: EvalOutOpt = None,
    as_json: EvalJsonOpt = False,
) -> None:
    """Instance segmentation: Dice, AJI, AJI+, DQ, SQ, PQ (hover_net semantics) or the PanNuke mPQ/bPQ protocol."""
    record = provenance(ctx)
    from histostain.metrics.evaluate_instance import evaluate_instance

    result = evaluate_instance(true, pred, protocol=protocol, match_iou=match_iou, split=split, provenance=record)
    _finish(result, out, as_json, f"Instance segmentation ({protocol})")


@evaluate_app.command("paired")
def paired_command(
    ctx: typer.Context,
    real: Annotated[Path, typer.Argument(help="Folder of reference images (e.g. real H&E).")],
    fake: Annotated[Path, typer.Argument(help="Folder of translated images, paired by file stem.")],
    metrics: Annotated[
        str | None, typer.Option("--metrics", help="Comma-separated subset, e.g. psnr,ssim (default all).")
    ] = None,
    out: EvalOutOpt = None,
    as_json: EvalJsonOpt = False,
) -> None:
    """Paired translation quality: PSNR and SSIM (BCI protocol), MS-GMSD, MDSI, HaarPSI, MAE, Pearson r."""
    record = provenance(ctx)
    from histostain.metrics.evaluate_paired import evaluate_paired

    chosen = [name.strip() for name in metrics.split(",") if name.strip()] if metrics else None
    result = evaluate_paired(real, fake, metrics=chosen, provenance=record)
    _finish(result, out, as_json, "Paired image metrics")
