"""`histostain train cyclegan|hovernet`: train a CycleGAN on prepared BCI or HoVer-Net on prepared PanNuke.

Heavy imports (torch, the trainers) happen inside the commands, so ``histostain --help`` stays fast.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from histostain.cli.common import print_json, print_summary, state, stderr_console

if TYPE_CHECKING:
    from histostain.runtime.training import FitResult

train_app = typer.Typer(
    help="Train models: CycleGAN stain translation (cyclegan), HoVer-Net nuclei segmentation (hovernet).",
    no_args_is_help=True,
)


def _command_line(ctx: typer.Context) -> list[str]:
    """The equivalent command: the options given explicitly (flags or environment), in a canonical order."""
    current = state(ctx)
    command = ["histostain"]
    if current.device:
        command += ["--device", current.device]
    if current.precision:
        command += ["--precision", current.precision]
    command += ["train", ctx.info_name or (ctx.command.name or "")]
    for param in ctx.command.params:
        name = param.name or ""
        value = ctx.params.get(name)
        source = getattr(ctx.get_parameter_source(name), "name", "")
        if source not in {"COMMANDLINE", "ENVIRONMENT"} or name == "as_json":
            continue
        if param.param_type_name == "argument":
            command.append(str(value))
            continue
        flag = max(param.opts, key=len)
        if isinstance(value, bool):
            if value:
                command.append(flag)
        elif value is not None:
            command += [flag, str(value)]
    return command


def _finish(result: FitResult, config: Any, as_json: bool, render: Callable[[FitResult, Any, bool], None]) -> None:
    """Rank 0 renders the summary; an interrupted run says how to continue."""
    if not result.is_main:
        return
    render(result, config, as_json)
    if result.status == "interrupted":
        stderr_console().print(
            f"[yellow]interrupted at step {result.step}:[/yellow] {result.last_checkpoint or 'nothing'} saved; "
            f"continue with the same command plus --resume",
            highlight=False,
        )
    sys.stdout.flush()


def _render(result: FitResult, config: Any, as_json: bool) -> None:
    if as_json:
        print_json({**result.to_json(), "config": config.model_dump()})
        return
    metrics = result.metrics
    losses = "  ".join(f"{k} {metrics[k]:.3g}" for k in ("G", "D_A", "D_B", "cycle_A", "cycle_B") if k in metrics)
    rows = [
        ("run folder", str(result.run_dir)),
        ("status", result.status),
        ("direction", f"{config.direction} (A = {config.domains[0]}, B = {config.domains[1]})"),
        ("epochs", f"{result.epoch}/{result.epochs}"),
        ("steps", str(result.step)),
        ("processes", str(result.world_size)),
        ("last losses", losses or "-"),
        ("learning rate", f"{metrics['lr']:.3g}" if "lr" in metrics else "-"),
        ("images/s", f"{result.images_per_second:.2f}"),
        ("seconds", f"{result.seconds:.1f}"),
        ("last checkpoint", str(result.last_checkpoint) if result.last_checkpoint else "-"),
    ]
    for key, value in result.validation.items():
        rows.append((key, f"{value:.4g}"))
    if result.best_checkpoint is not None and result.best is not None:
        rows.append((f"best {result.best_metric}", f"{result.best:.4g} ({result.best_checkpoint})"))
    print_summary(f"histostain train cyclegan: {result.run_dir.name}", rows)


@train_app.command("cyclegan")
def cyclegan(
    ctx: typer.Context,
    prepared: Annotated[Path, typer.Argument(help="A prepared BCI folder (`histostain prepare bci`).")],
    name: Annotated[str, typer.Option("--name", help="Run name: outputs go to RUNS_DIR/NAME.")],
    config: Annotated[
        Path | None, typer.Option("--config", help="Training options from a TOML file (flags override it).")
    ] = None,
    runs_dir: Annotated[Path, typer.Option("--runs-dir", help="Parent folder of the run folders.")] = Path("runs"),
    resume: Annotated[bool, typer.Option("--resume", help="Continue RUNS_DIR/NAME from checkpoints/last.pt.")] = False,
    epochs: Annotated[int | None, typer.Option("--epochs", help="Epochs at the initial rate [100].")] = None,
    epochs_decay: Annotated[
        int | None, typer.Option("--epochs-decay", help="Epochs of linear decay to ~0 afterwards [100].")
    ] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", help="Batch size per process [1].")] = None,
    lr: Annotated[float | None, typer.Option("--lr", help="Adam learning rate [2e-4].")] = None,
    crop: Annotated[int | None, typer.Option("--crop", help="Random crop side, a multiple of 4 [256].")] = None,
    ngf: Annotated[int | None, typer.Option("--ngf", help="Generator width [64].")] = None,
    ndf: Annotated[int | None, typer.Option("--ndf", help="Discriminator width [64].")] = None,
    n_blocks: Annotated[int | None, typer.Option("--n-blocks", help="Generator residual blocks [9].")] = None,
    lambda_cycle: Annotated[
        float | None, typer.Option("--lambda-cycle", help="Cycle-consistency weight of both directions [10].")
    ] = None,
    lambda_identity: Annotated[
        float | None, typer.Option("--lambda-identity", help="Identity weight relative to the cycle weight [0.5].")
    ] = None,
    pool_size: Annotated[int | None, typer.Option("--pool-size", help="Image history pool size [50].")] = None,
    direction: Annotated[
        str | None, typer.Option("--direction", help="ihc2he (A = IHC, B = H&E; the default) or he2ihc.")
    ] = None,
    save_every: Annotated[
        int | None, typer.Option("--save-every", help="Keep a checkpoint every N epochs, 0 = never [5].")
    ] = None,
    log_every: Annotated[
        int | None, typer.Option("--log-every", help="Write a metrics.csv row every N steps [100].")
    ] = None,
    sample_every: Annotated[
        int | None, typer.Option("--sample-every", help="Write a sample grid every N steps, 0 = never [400].")
    ] = None,
    val_every: Annotated[
        int | None, typer.Option("--val-every", help="Validate (PSNR/SSIM on val) every N epochs, 0 = never [5].")
    ] = None,
    val_fid: Annotated[
        bool | None,
        typer.Option("--val-fid/--no-val-fid", help="Also compute FID (translated vs real H&E) when validating."),
    ] = None,
    fid_weights: Annotated[
        Path | None,
        typer.Option("--fid-weights", help="FID-Inception weights [HISTOSTAIN_HOME/weights/pt_inception-...pth]."),
    ] = None,
    max_steps: Annotated[
        int | None, typer.Option("--max-steps", help="Stop after N steps in total (smoke tests).")
    ] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Seed of weights, data order and pools [0].")] = None,
    num_workers: Annotated[int | None, typer.Option("--num-workers", help="DataLoader worker processes [4].")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Train a CycleGAN (reference defaults) on prepared BCI; resumable; multi-GPU under torchrun."""
    state(ctx).settings()
    manager = state(ctx).device_manager()
    from histostain.translation.train import train_cyclegan

    given = {
        "epochs": epochs,
        "epochs_decay": epochs_decay,
        "batch_size": batch_size,
        "lr": lr,
        "crop": crop,
        "ngf": ngf,
        "ndf": ndf,
        "n_blocks": n_blocks,
        "lambda_identity": lambda_identity,
        "pool_size": pool_size,
        "direction": direction.lower() if direction else None,
        "save_every": save_every,
        "log_every": log_every,
        "sample_every": sample_every,
        "val_every": val_every,
        "max_steps": max_steps,
        "val_fid": val_fid,
        "fid_weights": str(fid_weights) if fid_weights is not None else None,
        "seed": seed,
        "num_workers": num_workers,
    }
    overrides: dict[str, Any] = dict(given)  # CycleGANConfig field names; None = not given
    if lambda_cycle is not None:
        overrides["lambda_a"] = overrides["lambda_b"] = lambda_cycle
    resolved, result = train_cyclegan(
        prepared,
        name=name,
        runs_dir=runs_dir,
        manager=manager,
        resume=resume,
        overrides=overrides,
        config_file=config,
        command=_command_line(ctx),
    )
    _finish(result, resolved, as_json, _render)


def _render_hovernet(result: FitResult, config: Any, as_json: bool) -> None:
    if as_json:
        print_json({**result.to_json(), "config": config.model_dump()})
        return
    metrics = result.metrics
    keys = ("loss", "loss_np_ce", "loss_np_dice", "loss_hv_mse", "loss_hv_msge", "loss_tp_ce", "loss_tp_dice")
    losses = "  ".join(f"{k.removeprefix('loss_')} {metrics[k]:.3g}" for k in keys if k in metrics)
    phase = 1 if result.epoch < config.phase1_epochs else 2
    rows = [
        ("run folder", str(result.run_dir)),
        ("status", result.status),
        ("network", f"{config.mode} mode, {config.num_types or 'no'} types"),
        ("epochs", f"{result.epoch}/{result.epochs} ({config.phase1_epochs} frozen + {config.phase2_epochs} all)"),
        ("phase", f"{phase} ({'encoder frozen' if phase == 1 else 'all layers'})"),
        ("steps", str(result.step)),
        ("processes", str(result.world_size)),
        ("last losses", losses or "-"),
        ("learning rate", f"{metrics['lr']:.3g}" if "lr" in metrics else "-"),
        ("images/s", f"{result.images_per_second:.2f}"),
        ("seconds", f"{result.seconds:.1f}"),
        ("last checkpoint", str(result.last_checkpoint) if result.last_checkpoint else "-"),
    ]
    for key, value in result.validation.items():
        rows.append((f"val {key}", f"{value:.4g}"))
    if result.best_checkpoint is not None and result.best is not None:
        rows.append((f"best {result.best_metric}", f"{result.best:.4g} ({result.best_checkpoint})"))
    print_summary(f"histostain train hovernet: {result.run_dir.name}", rows)


@train_app.command("hovernet")
def hovernet(
    ctx: typer.Context,
    prepared: Annotated[Path, typer.Argument(help="A prepared PanNuke folder (`histostain prepare pannuke`).")],
    name: Annotated[str, typer.Option("--name", help="Run name: outputs go to RUNS_DIR/NAME.")],
    config: Annotated[
        Path | None, typer.Option("--config", help="Training options from a TOML file (flags override it).")
    ] = None,
    runs_dir: Annotated[Path, typer.Option("--runs-dir", help="Parent folder of the run folders.")] = Path("runs"),
    resume: Annotated[bool, typer.Option("--resume", help="Continue RUNS_DIR/NAME from checkpoints/last.pt.")] = False,
    mode: Annotated[
        str | None, typer.Option("--mode", help="fast (256 -> 164; default) or original (270 -> 80).")
    ] = None,
    num_types: Annotated[
        int | None, typer.Option("--num-types", help="Type classes incl. background [6 = PanNuke]; 0 = untyped.")
    ] = None,
    init: Annotated[
        str | None,
        typer.Option("--init", help="scratch [default], a HoVer-Net checkpoint, or an ImageNet preact ResNet-50 file."),
    ] = None,
    phase1_epochs: Annotated[
        int | None, typer.Option("--phase1-epochs", help="Epochs with the encoder frozen [50].")
    ] = None,
    phase2_epochs: Annotated[
        int | None, typer.Option("--phase2-epochs", help="Epochs training all layers [50].")
    ] = None,
    batch_size_phase1: Annotated[
        int | None, typer.Option("--batch-size-phase1", help="Batch size per process in phase 1 [16].")
    ] = None,
    batch_size_phase2: Annotated[
        int | None, typer.Option("--batch-size-phase2", help="Batch size per process in phase 2 [4].")
    ] = None,
    lr: Annotated[
        float | None, typer.Option("--lr", help="Adam learning rate at the start of each phase [1e-4].")
    ] = None,
    decay_epoch: Annotated[
        int | None, typer.Option("--decay-epoch", help="Multiply the rate by 0.1 after N epochs of each phase [25].")
    ] = None,
    encoder_width: Annotated[
        float | None, typer.Option("--encoder-width", help="Encoder channel scale, < 1 for demos/tests only [1].")
    ] = None,
    decoder_width: Annotated[
        float | None, typer.Option("--decoder-width", help="Decoder channel scale, < 1 for demos/tests only [1].")
    ] = None,
    val_every: Annotated[
        int | None, typer.Option("--val-every", help="Validate every N epochs, 0 = never [1].")
    ] = None,
    save_every: Annotated[
        int | None, typer.Option("--save-every", help="Keep a checkpoint every N epochs, 0 = never [5].")
    ] = None,
    log_every: Annotated[
        int | None, typer.Option("--log-every", help="Write a metrics.csv row every N steps [50].")
    ] = None,
    sample_every: Annotated[
        int | None, typer.Option("--sample-every", help="Write a sample grid every N steps, 0 = never [500].")
    ] = None,
    max_steps: Annotated[
        int | None, typer.Option("--max-steps", help="Stop after N steps in total (smoke tests).")
    ] = None,
    seed: Annotated[
        int | None, typer.Option("--seed", help="Seed of weights, data order and augmentation [10].")
    ] = None,
    num_workers: Annotated[int | None, typer.Option("--num-workers", help="DataLoader worker processes [4].")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Train HoVer-Net (reference two-phase recipe) on prepared PanNuke; resumable; multi-GPU under torchrun."""
    state(ctx).settings()
    manager = state(ctx).device_manager()
    from histostain.segmentation.train import train_hovernet

    overrides: dict[str, Any] = {  # HoVerNetConfig field names; None = not given
        "mode": mode.lower() if mode else None,
        "num_types": num_types,
        "init": init,
        "phase1_epochs": phase1_epochs,
        "phase2_epochs": phase2_epochs,
        "batch_size_phase1": batch_size_phase1,
        "batch_size_phase2": batch_size_phase2,
        "lr": lr,
        "decay_epoch": decay_epoch,
        "encoder_width": encoder_width,
        "decoder_width": decoder_width,
        "val_every": val_every,
        "save_every": save_every,
        "log_every": log_every,
        "sample_every": sample_every,
        "max_steps": max_steps,
        "seed": seed,
        "num_workers": num_workers,
    }
    resolved, result = train_hovernet(
        prepared,
        name=name,
        runs_dir=runs_dir,
        manager=manager,
        resume=resume,
        overrides=overrides,
        config_file=config,
        command=_command_line(ctx),
    )
    _finish(result, resolved, as_json, _render_hovernet)
