"""`histostain train cyclegan|pix2pix|hovernet|detector`: stain translation on prepared BCI, HoVer-Net on PanNuke,
or the keypoint detector on EndoNuke.

Each command parses its flags, hands them to its service with the invocation's provenance record, and renders
the one closing summary. Help texts and shown defaults come from the trainers' config models (torch-free);
torch and the trainers are imported inside the commands, so ``histostain --help`` stays fast. A run stopped by
Ctrl-C / SIGTERM still prints its summary (its last.pt is saved) and exits 130, as an interrupted program does.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from histostain.cli.common import print_json, print_summary, provenance, state, stderr_console
from histostain.cli.options import (
    JsonOpt,
    ResumeOpt,
    RunNameOpt,
    RunsDirOpt,
    TrainConfigOpt,
    TrainOverwriteOpt,
    config_flag,
)
from histostain.segmentation.config import HoVerNetConfig
from histostain.segmentation.detector_config import DetectorConfig
from histostain.translation.pix2pix_config import Pix2PixConfig
from histostain.translation.train_config import CycleGANConfig

if TYPE_CHECKING:
    from histostain.runtime.training import FitResult, LoopOptions

train_app = typer.Typer(
    help="Train models: stain translation (cyclegan, pix2pix), HoVer-Net nuclei segmentation (hovernet), IHC "
    "nuclei keypoint detection (detector).",
    no_args_is_help=True,
)

# parameters that locate or present the run; every other parameter of a train command is a training option
_RUN_PARAMS = frozenset({"prepared", "name", "config", "runs_dir", "resume", "overwrite", "as_json"})
# the exit code of a run stopped by Ctrl-C / SIGTERM (128 + SIGINT), after its checkpoint and summary
INTERRUPTED_EXIT = 130


def _overrides(ctx: typer.Context, config_type: type[LoopOptions]) -> dict[str, Any]:
    """The training options given on the command line (None = not given), as fields of ``config_type``."""
    return config_type.flag_overrides({k: v for k, v in ctx.params.items() if k not in _RUN_PARAMS})


def summary_rows(result: FitResult, config: LoopOptions) -> list[tuple[str, str]]:
    """The closing summary of any trainer: the loop's rows plus the config's own (a row of the config with the
    label of a loop row replaces it in place; its other rows follow the status)."""
    metrics = result.metrics
    losses = "  ".join(f"{k.removeprefix('loss_')} {metrics[k]:.3g}" for k in config.summary_losses if k in metrics)
    rows = [
        ("run folder", str(result.run_dir)),
        ("status", result.status),
        ("epochs", f"{result.epoch}/{result.epochs}"),
        ("steps", str(result.step)),
        ("processes", str(result.world_size)),
        ("last losses", losses or "-"),
        ("learning rate", f"{metrics['lr']:.3g}" if "lr" in metrics else "-"),
        ("images/s", f"{result.images_per_second:.2f}"),
        ("seconds", f"{result.seconds:.1f}"),
        ("last checkpoint", str(result.last_checkpoint) if result.last_checkpoint else "-"),
    ]
    own = dict(config.summary_rows(result))
    rows = [(label, own.pop(label, value)) for label, value in rows]
    rows[2:2] = list(own.items())
    for key, value in result.validation.items():
        rows.append((key if key.startswith("val") else f"val {key}", f"{value:.4g}"))
    if result.best_checkpoint is not None and result.best is not None:
        rows.append((f"best {result.best_metric}", f"{result.best:.4g} ({result.best_checkpoint})"))
    return rows


def _finish(result: FitResult, config: LoopOptions, as_json: bool) -> None:
    """Rank 0 renders the summary; an interrupted run says how to continue, and every rank exits 130 then (a
    script or scheduler must not mistake a stopped run for a finished one)."""
    if result.is_main:
        if as_json:
            print_json({**result.to_json(), "config": config.model_dump()})
        else:
            print_summary(f"histostain {config.command}: {result.run_dir.name}", summary_rows(result, config))
        if result.status == "interrupted":
            stderr_console().print(
                f"[yellow]interrupted at step {result.step}:[/yellow] {result.last_checkpoint or 'nothing'} saved; "
                f"continue with the same command plus --resume",
                highlight=False,
            )
        sys.stdout.flush()
    if result.status == "interrupted":
        raise typer.Exit(INTERRUPTED_EXIT)


CG = CycleGANConfig  # short names for the option declarations below
NO_LIMIT = "no limit"  # the shown default of --max-steps


@train_app.command(
    "cyclegan",
    epilog="Example: histostain train cyclegan prepared/bci --name bci_cyclegan --epochs 50 --epochs-decay 50",
)
def cyclegan(
    ctx: typer.Context,
    prepared: Annotated[
        Path, typer.Argument(metavar="PREPARED", help="A prepared BCI folder (`histostain prepare bci`).")
    ],
    name: RunNameOpt,
    config: TrainConfigOpt = None,
    runs_dir: RunsDirOpt = Path("runs"),
    resume: ResumeOpt = False,
    overwrite: TrainOverwriteOpt = False,
    direction: Annotated[str | None, config_flag(CG, "direction")] = None,
    epochs: Annotated[int | None, config_flag(CG, "epochs")] = None,
    epochs_decay: Annotated[int | None, config_flag(CG, "epochs_decay")] = None,
    batch_size: Annotated[int | None, config_flag(CG, "batch_size")] = None,
    lr: Annotated[float | None, config_flag(CG, "lr")] = None,
    crop: Annotated[int | None, config_flag(CG, "crop")] = None,
    ngf: Annotated[int | None, config_flag(CG, "ngf")] = None,
    ndf: Annotated[int | None, config_flag(CG, "ndf")] = None,
    n_blocks: Annotated[int | None, config_flag(CG, "n_blocks")] = None,
    lambda_cycle: Annotated[
        float | None,
        config_flag(CG, "lambda_a", flag="--lambda-cycle", text="cycle-consistency weight of both directions"),
    ] = None,
    lambda_identity: Annotated[float | None, config_flag(CG, "lambda_identity")] = None,
    pool_size: Annotated[int | None, config_flag(CG, "pool_size")] = None,
    val_fid: Annotated[bool | None, config_flag(CG, "val_fid")] = None,
    fid_weights: Annotated[
        Path | None,
        config_flag(CG, "fid_weights", text="FID-Inception weights", shown="HISTOSTAIN_HOME/weights/pt_inception-..."),
    ] = None,
    max_steps: Annotated[int | None, config_flag(CG, "max_steps", shown=NO_LIMIT)] = None,
    seed: Annotated[int | None, config_flag(CG, "seed")] = None,
    num_workers: Annotated[int | None, config_flag(CG, "num_workers")] = None,
    save_every: Annotated[int | None, config_flag(CG, "save_every")] = None,
    log_every: Annotated[int | None, config_flag(CG, "log_every")] = None,
    sample_every: Annotated[int | None, config_flag(CG, "sample_every")] = None,
    val_every: Annotated[int | None, config_flag(CG, "val_every")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Train a CycleGAN (reference defaults) on prepared BCI; resumable; multi-GPU under torchrun."""
    manager = state(ctx).device_manager()
    from histostain.translation.train import train_cyclegan

    resolved, result = train_cyclegan(
        prepared,
        name=name,
        runs_dir=runs_dir,
        manager=manager,
        resume=resume,
        overwrite=overwrite,
        overrides=_overrides(ctx, CycleGANConfig),
        config_file=config,
        provenance=provenance(ctx),
    )
    _finish(result, resolved, as_json)


P2P = Pix2PixConfig


@train_app.command(
    "pix2pix",
    epilog="Example: histostain train pix2pix prepared/bci --name bci_pyramid --loss pyramid --direction he2ihc",
)
def pix2pix(
    ctx: typer.Context,
    prepared: Annotated[
        Path,
        typer.Argument(
            metavar="PREPARED",
            help="A prepared BCI folder (`histostain prepare bci`), or prepared PanNuke with --source labels.",
        ),
    ],
    name: RunNameOpt,
    config: TrainConfigOpt = None,
    runs_dir: RunsDirOpt = Path("runs"),
    resume: ResumeOpt = False,
    overwrite: TrainOverwriteOpt = False,
    source: Annotated[str | None, config_flag(P2P, "source")] = None,
    direction: Annotated[str | None, config_flag(P2P, "direction")] = None,
    loss: Annotated[str | None, config_flag(P2P, "loss")] = None,
    lambda_l1: Annotated[
        float | None, config_flag(P2P, "lambda_l1", shown="100 (25 with --loss pyramid)", flag="--lambda-l1")
    ] = None,
    gan_mode: Annotated[
        str | None, config_flag(P2P, "gan_mode", text="GAN loss: vanilla (BCE with logits) | lsgan")
    ] = None,
    epochs: Annotated[int | None, config_flag(P2P, "epochs")] = None,
    epochs_decay: Annotated[int | None, config_flag(P2P, "epochs_decay")] = None,
    batch_size: Annotated[int | None, config_flag(P2P, "batch_size")] = None,
    lr: Annotated[float | None, config_flag(P2P, "lr")] = None,
    crop: Annotated[int | None, config_flag(P2P, "crop")] = None,
    net_g: Annotated[str | None, config_flag(P2P, "net_g")] = None,
    ngf: Annotated[int | None, config_flag(P2P, "ngf")] = None,
    ndf: Annotated[int | None, config_flag(P2P, "ndf")] = None,
    dropout: Annotated[bool | None, config_flag(P2P, "dropout")] = None,
    norm_mode: Annotated[str | None, config_flag(P2P, "norm_mode")] = None,
    max_steps: Annotated[int | None, config_flag(P2P, "max_steps", shown=NO_LIMIT)] = None,
    seed: Annotated[int | None, config_flag(P2P, "seed")] = None,
    num_workers: Annotated[int | None, config_flag(P2P, "num_workers")] = None,
    save_every: Annotated[int | None, config_flag(P2P, "save_every")] = None,
    log_every: Annotated[int | None, config_flag(P2P, "log_every")] = None,
    sample_every: Annotated[int | None, config_flag(P2P, "sample_every")] = None,
    val_every: Annotated[int | None, config_flag(P2P, "val_every")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Train pix2pix (reference defaults; --loss pyramid: PyramidPix2pix) on prepared BCI; resumable; torchrun."""
    manager = state(ctx).device_manager()
    from histostain.translation.pix2pix_train import train_pix2pix

    resolved, result = train_pix2pix(
        prepared,
        name=name,
        runs_dir=runs_dir,
        manager=manager,
        resume=resume,
        overwrite=overwrite,
        overrides=_overrides(ctx, Pix2PixConfig),
        config_file=config,
        provenance=provenance(ctx),
    )
    _finish(result, resolved, as_json)


HN = HoVerNetConfig


@train_app.command(
    "hovernet",
    epilog="Example: histostain train hovernet prepared/pannuke --name pannuke_fast --phase1-epochs 25 "
    "--phase2-epochs 25",
)
def hovernet(
    ctx: typer.Context,
    prepared: Annotated[
        Path, typer.Argument(metavar="PREPARED", help="A prepared PanNuke folder (`histostain prepare pannuke`).")
    ],
    name: RunNameOpt,
    config: TrainConfigOpt = None,
    runs_dir: RunsDirOpt = Path("runs"),
    resume: ResumeOpt = False,
    overwrite: TrainOverwriteOpt = False,
    mode: Annotated[str | None, config_flag(HN, "mode")] = None,
    num_types: Annotated[int | None, config_flag(HN, "num_types")] = None,
    init: Annotated[str | None, config_flag(HN, "init")] = None,
    phase1_epochs: Annotated[int | None, config_flag(HN, "phase1_epochs")] = None,
    phase2_epochs: Annotated[int | None, config_flag(HN, "phase2_epochs")] = None,
    batch_size_phase1: Annotated[int | None, config_flag(HN, "batch_size_phase1")] = None,
    batch_size_phase2: Annotated[int | None, config_flag(HN, "batch_size_phase2")] = None,
    lr: Annotated[float | None, config_flag(HN, "lr")] = None,
    decay_epoch: Annotated[int | None, config_flag(HN, "decay_epoch")] = None,
    encoder_width: Annotated[float | None, config_flag(HN, "encoder_width")] = None,
    decoder_width: Annotated[float | None, config_flag(HN, "decoder_width")] = None,
    max_steps: Annotated[int | None, config_flag(HN, "max_steps", shown=NO_LIMIT)] = None,
    seed: Annotated[int | None, config_flag(HN, "seed")] = None,
    num_workers: Annotated[int | None, config_flag(HN, "num_workers")] = None,
    save_every: Annotated[int | None, config_flag(HN, "save_every")] = None,
    log_every: Annotated[int | None, config_flag(HN, "log_every")] = None,
    sample_every: Annotated[int | None, config_flag(HN, "sample_every")] = None,
    val_every: Annotated[int | None, config_flag(HN, "val_every")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Train HoVer-Net (reference two-phase recipe) on prepared PanNuke; resumable; multi-GPU under torchrun."""
    manager = state(ctx).device_manager()
    from histostain.segmentation.train import train_hovernet

    resolved, result = train_hovernet(
        prepared,
        name=name,
        runs_dir=runs_dir,
        manager=manager,
        resume=resume,
        overwrite=overwrite,
        overrides=_overrides(ctx, HoVerNetConfig),
        config_file=config,
        provenance=provenance(ctx),
    )
    _finish(result, resolved, as_json)


DT = DetectorConfig


@train_app.command(
    "detector",
    epilog="Example: histostain train detector prepared/endonuke --name endonuke_detector --epochs 60",
)
def detector(
    ctx: typer.Context,
    prepared: Annotated[
        Path,
        typer.Argument(metavar="PREPARED_ENDONUKE", help="A prepared EndoNuke folder (`histostain prepare endonuke`)."),
    ],
    name: RunNameOpt,
    config: TrainConfigOpt = None,
    runs_dir: RunsDirOpt = Path("runs"),
    resume: ResumeOpt = False,
    overwrite: TrainOverwriteOpt = False,
    width: Annotated[int | None, config_flag(DT, "width")] = None,
    levels: Annotated[int | None, config_flag(DT, "levels")] = None,
    epochs: Annotated[int | None, config_flag(DT, "epochs")] = None,
    batch_size: Annotated[int | None, config_flag(DT, "batch_size")] = None,
    lr: Annotated[float | None, config_flag(DT, "lr")] = None,
    lr_schedule: Annotated[str | None, config_flag(DT, "lr_schedule")] = None,
    crop: Annotated[int | None, config_flag(DT, "crop")] = None,
    target_radius_um: Annotated[float | None, config_flag(DT, "target_radius_um")] = None,
    augment: Annotated[bool | None, config_flag(DT, "augment")] = None,
    colour_jitter: Annotated[float | None, config_flag(DT, "colour_jitter")] = None,
    jitter_space: Annotated[str | None, config_flag(DT, "jitter_space")] = None,
    radius_um: Annotated[float | None, config_flag(DT, "radius_um")] = None,
    nms_kernel: Annotated[int | None, config_flag(DT, "nms_kernel")] = None,
    val_max_images: Annotated[int | None, config_flag(DT, "val_max_images", shown="all")] = None,
    max_steps: Annotated[int | None, config_flag(DT, "max_steps", shown=NO_LIMIT)] = None,
    seed: Annotated[int | None, config_flag(DT, "seed")] = None,
    num_workers: Annotated[int | None, config_flag(DT, "num_workers")] = None,
    save_every: Annotated[int | None, config_flag(DT, "save_every")] = None,
    log_every: Annotated[int | None, config_flag(DT, "log_every")] = None,
    sample_every: Annotated[int | None, config_flag(DT, "sample_every")] = None,
    val_every: Annotated[int | None, config_flag(DT, "val_every")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Train the IHC nuclei keypoint detector on prepared EndoNuke; val F1 picks the threshold; resumable; torchrun."""
    manager = state(ctx).device_manager()
    from histostain.segmentation.detector_train import train_detector

    resolved, result = train_detector(
        prepared,
        name=name,
        runs_dir=runs_dir,
        manager=manager,
        resume=resume,
        overwrite=overwrite,
        overrides=_overrides(ctx, DetectorConfig),
        config_file=config,
        provenance=provenance(ctx),
    )
    _finish(result, resolved, as_json)
