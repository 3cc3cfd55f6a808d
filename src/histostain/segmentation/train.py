"""HoVer-Net training on prepared PanNuke (``histostain train hovernet``): the reference's two-phase recipe.

The defaults are those of ``vqdang/hover_net`` (``models/hovernet/opt.py``, ``run_train.py``): phase 1 trains with
the encoder frozen (50 epochs, batch 16), phase 2 trains everything (50 epochs, batch 4), each phase with a new
Adam (lr 1e-4, betas 0.9/0.999) and a step decay x0.1 after 25 epochs; seed 10; loss weights all 1; the
reference's MSGE orientation. Phase 2 starts from the last state of phase 1, as the reference does.

Per sample (in the DataLoader workers): one of the 8 flips/rotations (from :class:`NucleiSamples`), the input
augmentations of the reference (one of Gaussian blur / median blur / additive Gaussian noise, then hue,
saturation, brightness and contrast in random order; image only, with a contrast jitter that works), then the
NP / HV / TP targets from the augmented instance and type maps, centre-cropped to the network's output
window (fast: 256 -> 164). The affine transform is off, as the reference advises for PanNuke.

Validation (rank 0, every ``val_every`` epochs, centre window, no augmentation): NP Dice and accuracy over all
val pixels, HV MSE, type accuracy on nuclear pixels, per-type Dice, and the per-image binary Dice of the metrics
module. The generic loop (run folder, resume, AMP, DDP, NaN guard, Ctrl-C) is :mod:`histostain.runtime.training`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from torch.utils.data import Dataset

from histostain.errors import ConfigError, DatasetLayoutError, WeightsError
from histostain.runtime.distributed import DistContext, init_distributed, unwrap
from histostain.runtime.training import (
    FitResult,
    LoopConfig,
    RunDirectory,
    Trainer,
    check_resume_fixed,
    open_run,
    record_run,
    resolve_training_config,
    seed_everything,
    set_deterministic,
)
from histostain.segmentation.augment import InputAugment, to_uint8
from histostain.segmentation.geometry import geometry_for
from histostain.segmentation.hovernet import DEFAULT_DECODER_UNITS, DEFAULT_UNITS, HoVerNet
from histostain.segmentation.losses import HoVerNetLoss, LossWeights
from histostain.segmentation.targets import centre_crop, make_targets

log = logging.getLogger(__name__)

ARCH = "hovernet"
MODEL = "hovernet"  # the name of the network in the trainer's models / checkpoints
# options a resumed run must keep: they define the network, the phases, the batches or the data order
RESUME_FIXED = (
    "mode",
    "num_types",
    "encoder_width",
    "units",
    "decoder_width",
    "decoder_units",
    "input_size",
    "phase1_epochs",
    "batch_size_phase1",
    "batch_size_phase2",
    "seed",
)
LOSS_TERMS = ("np_ce", "np_dice", "hv_mse", "hv_msge", "tp_ce", "tp_dice")
_FROZEN_PREFIXES = ("d0.units.", "d1.", "d2.", "d3.")  # what the reference runs without gradients in phase 1


class HoVerNetConfig(BaseModel):
    """Every training option, with the reference defaults; loadable from TOML, overridden by CLI flags."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # network
    mode: Literal["fast", "original"] = Field("fast", description="fast: 256 -> 164, original: 270 -> 80")
    num_types: int = Field(6, ge=0, description="type classes incl. background (PanNuke: 6); 0 = no type branch")
    encoder_width: float = Field(1.0, gt=0, description="encoder channel scale (< 1 only for tests and demos)")
    units: list[int] = Field(list(DEFAULT_UNITS), description="residual units of d0..d3")
    decoder_width: float = Field(1.0, gt=0, description="decoder channel scale (< 1 only for tests and demos)")
    decoder_units: list[int] = Field(list(DEFAULT_DECODER_UNITS), description="dense units of u3, u2")
    input_size: int | None = Field(None, ge=8, description="network input side (None: the patch size)")
    init: str = Field("scratch", description="'scratch', or a HoVer-Net checkpoint / pre-activation ResNet-50 file")
    # schedule (per phase)
    phase1_epochs: int = Field(50, ge=0, description="epochs with the encoder frozen")
    phase2_epochs: int = Field(50, ge=0, description="epochs training every layer")
    batch_size_phase1: int = Field(16, ge=1, description="batch size per process in phase 1")
    batch_size_phase2: int = Field(4, ge=1, description="batch size per process in phase 2")
    val_batch_size: int = Field(8, ge=1)
    lr: float = Field(1e-4, gt=0, description="Adam learning rate at the start of each phase")
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.999, ge=0, lt=1)
    decay_epoch: int = Field(25, ge=1, description="StepLR step (epochs into each phase)")
    gamma: float = Field(0.1, gt=0, le=1, description="StepLR factor")
    # losses
    loss_np_ce: float = Field(1.0, ge=0)
    loss_np_dice: float = Field(1.0, ge=0)
    loss_hv_mse: float = Field(1.0, ge=0, description="1 as the PyTorch reference; the TF release and MONAI use 2")
    loss_hv_msge: float = Field(1.0, ge=0)
    loss_tp_ce: float = Field(1.0, ge=0)
    loss_tp_dice: float = Field(1.0, ge=0)
    msge_orientation: Literal["reference", "paper"] = "reference"
    min_area: int = Field(30, ge=0, description="instances smaller than this get no HV target")
    # augmentation (train split only; 0 / false switches one off)
    augment: bool = Field(True, description="the 8 flips / 90-degree rotations")
    input_augment: bool = Field(True, description="blur / noise and colour jitter below")
    blur_max_ksize: int = Field(5, ge=1, description="Gaussian and median blur kernels drawn from 1, 3, .., this")
    noise_max_std: float = Field(0.05 * 255, ge=0, description="additive Gaussian noise, std ~ U(0, this) (0..255)")
    hue: float = Field(8.0, ge=0, description="hue shift ~ U(-h, h) in OpenCV units (180 = a full turn)")
    saturation: float = Field(0.2, ge=0, description="saturation factor 1 + U(-s, s)")
    brightness: float = Field(26.0, ge=0, description="brightness offset ~ U(-b, b) (0..255)")
    contrast: float = Field(0.25, ge=0, lt=1, description="contrast factor 1 + U(-c, c) about the channel means")
    # loop
    num_workers: int = Field(4, ge=0)
    seed: int = Field(10, ge=0, description="the reference's seed")
    deterministic: bool = False
    log_every: int = Field(50, ge=0, description="steps between metrics.csv rows")
    sample_every: int = Field(500, ge=0, description="steps between sample grids")
    save_every: int = Field(5, ge=0, description="epochs between kept checkpoints")
    save_latest_steps: int = Field(2000, ge=0, description="steps between refreshes of last.pt")
    val_every: int = Field(1, ge=0, description="epochs between validations (the reference: every epoch)")
    val_max_images: int | None = Field(None, ge=1, description="validate on the first N val patches only")
    best_metric: str = Field("np_dice", description="validation metric that selects best.pt")
    best_mode: Literal["max", "min"] = "max"
    max_steps: int | None = Field(None, ge=1, description="stop after this many steps (smoke tests)")
    tensorboard: bool = True

    @field_validator("units")
    @classmethod
    def _units(cls, value: list[int]) -> list[int]:
        if len(value) != 4 or min(value) < 1:
            raise ValueError(f"needs 4 positive unit counts (d0..d3), got {value}")
        return value

    @field_validator("decoder_units")
    @classmethod
    def _decoder_units(cls, value: list[int]) -> list[int]:
        if len(value) != 2 or min(value) < 1:
            raise ValueError(f"needs 2 positive unit counts (u3, u2), got {value}")
        return value

    @model_validator(mode="after")
    def _check(self) -> HoVerNetConfig:
        if self.phase1_epochs + self.phase2_epochs < 1:
            raise ValueError("phase1_epochs + phase2_epochs must be at least 1")
        if self.blur_max_ksize % 2 != 1:
            raise ValueError(f"blur_max_ksize must be odd, got {self.blur_max_ksize}")
        if not self.init.strip():
            raise ValueError("init must be 'scratch' or a file path")
        return self

    @property
    def total_epochs(self) -> int:
        return self.phase1_epochs + self.phase2_epochs

    @property
    def types(self) -> int | None:
        """``num_types`` as the network takes it (None: no type branch)."""
        return self.num_types or None

    def loss_weights(self) -> LossWeights:
        return LossWeights(**{name: getattr(self, f"loss_{name}") for name in LOSS_TERMS})

    def phase_of(self, epoch: int) -> int:
        """1 (encoder frozen) for the first ``phase1_epochs`` epochs, then 2."""
        return 1 if epoch < self.phase1_epochs else 2

    def batch_size(self, phase: int) -> int:
        return self.batch_size_phase1 if phase == 1 else self.batch_size_phase2

    def build_network(self) -> HoVerNet:
        return HoVerNet(
            self.mode,
            self.types,
            encoder_width=self.encoder_width,
            units=self.units,
            decoder_width=self.decoder_width,
            decoder_units=self.decoder_units,
            freeze=self.phase1_epochs > 0,
        )


# ------------------------------------------------------------------------------------------------ config


def resolve_config(
    *,
    config_file: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    base: Mapping[str, Any] | None = None,
) -> HoVerNetConfig:
    """defaults < ``base`` (a resumed run's config) < ``config_file`` < ``overrides`` (flags; None = not given)."""
    return resolve_training_config(
        HoVerNetConfig, "train hovernet", config_file=config_file, overrides=overrides, base=base
    )


def check_resume_compatible(stored: HoVerNetConfig, resolved: HoVerNetConfig) -> None:
    """Refuse options that cannot change when resuming (network, phase boundary, batch sizes, data order)."""
    check_resume_fixed(stored, resolved, RESUME_FIXED)


# ------------------------------------------------------------------------------------------ augmentation
# The reference's input augmentations (``dataloader/augs.py``), re-implemented on uint8 RGB arrays with numpy
# and scipy (no OpenCV): each takes the image and a numpy Generator and returns a new uint8 image.


class HoVerNetSamples(Dataset):
    """Training / validation samples for HoVer-Net over a :class:`NucleiSamples` split.

    Each sample is ``{"image": float32 3 x S x S RGB in 0..255 (the network's input), "np": int64 O x O,
    "hv": float32 2 x O x O, "tp": int64 O x O (typed only), "inst": int32 O x O (the instance map of the output
    window), "id": str}`` with S the input and O the output side. Random draws of the input augmentation come from
    ``default_rng([seed, epoch, index, 1])`` (independent of the worker, like the dataset's own flips).
    """

    def __init__(
        self,
        base: Any,
        *,
        input_size: int,
        output_size: int,
        typed: bool,
        min_area: int = 30,
        augment: InputAugment | None = None,
    ) -> None:
        self.base = base
        self.input_size = int(input_size)
        self.output_size = int(output_size)
        self.typed = typed
        self.min_area = int(min_area)
        self.augment = augment
        self.seed = int(getattr(base, "seed", 0))
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        if hasattr(self.base, "set_epoch"):
            self.base.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.base[index]
        image = np.rint(sample["image"].numpy().transpose(1, 2, 0) * 255.0).astype(np.uint8)
        inst = sample["inst_map"].numpy()
        types = sample["type_map"].numpy()
        window = (self.input_size, self.input_size)
        if image.shape[:2] != window:  # larger patches: the centre window, as the reference's CropToFixedSize
            image, inst, types = (centre_crop(a, window) for a in (image, inst, types))
        if self.augment is not None:
            rng = np.random.default_rng([self.seed, self.epoch, int(index), 1])
            image = self.augment(np.ascontiguousarray(image), rng)
        out = (self.output_size, self.output_size)
        targets = make_targets(inst, out, types if self.typed else None, min_area=self.min_area)
        item: dict[str, Any] = {
            "image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32)),
            "np": torch.from_numpy(targets.np.astype(np.int64)),
            "hv": torch.from_numpy(targets.hv),
            "inst": torch.from_numpy(np.ascontiguousarray(centre_crop(inst, out), dtype=np.int32)),
            "id": sample["id"],
        }
        if targets.tp is not None:
            item["tp"] = torch.from_numpy(targets.tp)
        return item


def network_sizes(config: HoVerNetConfig, patch: int) -> tuple[int, int]:
    """(input, output) sides for ``patch``-pixel data; a ConfigError when the sizes cannot work."""
    input_size = config.input_size or patch
    if input_size > patch:
        raise ConfigError(
            f"input_size {input_size} is larger than the {patch} px patches",
            hint=f"{config.mode} mode is trained on {geometry_for(config.mode).patch_in} px inputs; "
            + ("use --mode fast for 256 px PanNuke patches" if config.mode == "original" else "set input_size"),
        )
    probe = HoVerNet(
        config.mode,
        None,
        encoder_width=1 / 64,
        units=[1, 1, 1, 1],
        decoder_width=0.125,
        decoder_units=config.decoder_units,
    )
    try:
        return input_size, probe.output_size(input_size)
    except ValueError as exc:
        raise ConfigError(
            f"{exc}",
            hint=f"{config.mode} mode expects {geometry_for(config.mode).patch_in} px inputs (fast: 256 -> 164, "
            "original: 270 -> 80); set input_size to a size that fits",
        ) from exc


def build_datasets(prepared: Path, config: HoVerNetConfig) -> tuple[HoVerNetSamples, HoVerNetSamples | None]:
    """The train split (augmented) and, when it exists and validation is on, the val split (centre only)."""
    from histostain.datasets.torch_data import NucleiSamples

    base = NucleiSamples(prepared, "train", augment=config.augment, seed=config.seed)
    input_size, output_size = network_sizes(config, min(base.shape))
    if config.types is not None:
        _check_types(base, config.num_types)
    augment = InputAugment.from_config(config) if config.input_augment else None
    options = {
        "input_size": input_size,
        "output_size": output_size,
        "typed": config.types is not None,
        "min_area": config.min_area,
    }
    train = HoVerNetSamples(base, augment=augment, **options)
    val = None
    if config.val_every:
        try:
            val = HoVerNetSamples(NucleiSamples(prepared, "val", augment=False, seed=config.seed), **options)
        except DatasetLayoutError:
            log.info("%s has no val split: validation is off", prepared)
    return train, val


def _check_types(base: Any, num_types: int) -> None:
    path = base.folder / base.split / "type_maps.npy"
    largest = int(np.load(path, mmap_mode="r").max(initial=0))
    if largest >= num_types:
        raise ConfigError(
            f"{path} holds type {largest}, but num_types is {num_types} (types 0..{num_types - 1})",
            hint=f"set num_types to at least {largest + 1} (PanNuke: 6 including background)",
        )


# ------------------------------------------------------------------------------------------- init weights


@dataclass
class InitReport:
    """What ``init`` loaded into the network (``kind``: scratch | hovernet | encoder)."""

    kind: str
    path: str = ""
    matched: int = 0
    missing: int = 0
    unexpected: int = 0
    skipped: list[str] = field(default_factory=list)

    def describe(self) -> str:
        if self.kind == "scratch":
            return "from scratch"
        text = f"{self.kind} weights from {self.path}: {self.matched} tensors loaded, {self.missing} kept initial"
        if self.unexpected:
            text += f", {self.unexpected} unused"
        if self.skipped:
            text += f" (re-initialised: {', '.join(self.skipped)})"
        return text

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "path": self.path,
            "matched": self.matched,
            "missing": self.missing,
            "unexpected": self.unexpected,
            "skipped": list(self.skipped),
        }


def _init_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of an init file: official ``{"desc": ...}``, histostain ``state_dict`` or a flat state dict."""
    from histostain.runtime.checkpoint import (
        check_histostain_header,
        clean_state_dict,
        is_histostain_checkpoint,
        load_checkpoint,
    )

    payload = load_checkpoint(path)
    if not isinstance(payload, Mapping):
        raise WeightsError(f"{path} holds a {type(payload).__name__}, not HoVer-Net or ResNet-50 weights")
    if is_histostain_checkpoint(payload):
        state = check_histostain_header(payload, path, ARCH).get("state_dict")
    else:
        state = payload.get("desc", payload)
    if not isinstance(state, Mapping):
        raise WeightsError(f"{path}: no state dict found (expected 'desc', 'state_dict' or a flat dict of tensors)")
    return clean_state_dict({str(k): v for k, v in state.items() if torch.is_tensor(v)})[0]


def load_init_weights(model: HoVerNet, init: str) -> InitReport:
    """Initialise ``model`` from ``init`` ("scratch" or a file); shape conflicts are one-line WeightsErrors.

    * a full HoVer-Net (official ``.tar``, TIAToolbox ``.pth``, histostain checkpoint): every tensor must match,
      except the type head's last convolution when the number of types differs (it stays re-initialised);
    * an encoder-only file (the ImageNet pre-activation ResNet-50 the reference starts from, with HoVer-Net's
      encoder names ``conv0./.weight``, ``d0.units.0.conv1.weight``, ...): loaded non-strictly, counts reported.
    """
    if init.strip().lower() == "scratch":
        return InitReport("scratch")
    from histostain.segmentation.compat import infer_config

    path = Path(init).expanduser()
    state = _init_state_dict(path)
    if "conv0./.weight" not in state:
        sample = ", ".join(list(state)[:3]) or "none"
        raise WeightsError(
            f"{path} holds neither HoVer-Net nor pre-activation ResNet-50 encoder weights (keys {sample})",
            hint="init takes 'scratch', a HoVer-Net checkpoint, or an encoder file with HoVer-Net key names",
        )
    full = "decoder.np.u3.conva.weight" in state
    expected = model.state_dict()
    skipped: list[str] = []
    loadable: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key not in expected:
            continue
        if tuple(value.shape) == tuple(expected[key].shape):
            loadable[key] = value
        elif key.startswith("decoder.tp.u0.conv."):
            skipped.append(key)
        else:
            found = ""
            if full:
                file_config = infer_config(state, path)
                found = f"this checkpoint is {file_config['mode']} mode with {file_config['num_types']} types, widths "
                found += f"{file_config['encoder_width']:g}/{file_config['decoder_width']:g}; "
            raise WeightsError(
                f"{path}: {found}{key} is {tuple(value.shape)}, the network being trained needs "
                f"{tuple(expected[key].shape)}",
                hint="train with the checkpoint's mode and widths (--mode, --encoder-width, --decoder-width)",
            )
    if not loadable:
        raise WeightsError(f"{path}: no tensor matches the network's names")
    missing = [key for key in expected if key not in loadable]
    unexpected = [key for key in state if key not in expected]
    with torch.no_grad():
        model.load_state_dict(loadable, strict=False)
    report = InitReport(
        "hovernet" if full else "encoder", str(path), len(loadable), len(missing), len(unexpected), skipped
    )
    if skipped:
        log.warning("%s: the type head's last layer does not fit %s types; it is re-initialised", path, model.num_types)
    log.info("init: %s", report.describe())
    return report


# ------------------------------------------------------------------------------------------------ trainer


def _colourise_hv(values: np.ndarray) -> np.ndarray:
    """[-1, 1] -> blue (negative) / white (0) / red (positive) uint8 RGB."""
    v = np.clip(values, -1.0, 1.0)[..., None]
    white = np.ones((*values.shape, 3))
    red, blue = np.array([1.0, 0.0, 0.0]), np.array([0.0, 0.0, 1.0])
    rgb = np.where(v >= 0, white * (1 - v) + red * v, white * (1 + v) + blue * (-v))
    return to_uint8(rgb * 255.0)


_TYPE_COLOURS = np.array(
    [[0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0], [255, 0, 255], [0, 255, 255], [255, 128, 0]],
    dtype=np.uint8,
)


def _grey(values: np.ndarray) -> np.ndarray:
    return np.repeat(to_uint8(np.clip(values, 0.0, 1.0) * 255.0)[..., None], 3, axis=2)


class HoVerNetTrainer(Trainer):
    """HoVer-Net on the shared loop: phase 1 (encoder frozen) then phase 2 (all layers), each with a new Adam."""

    arch = ARCH
    # metrics.csv: training rows hold ``loss`` and the unweighted terms ``loss_<term>``; validation rows hold the
    # scores (np_dice, hv_mse, ...), so a loss term never shares a column with the score of the same name
    status_keys = ("loss", "loss_np_ce", "loss_np_dice", "loss_hv_mse", "loss_hv_msge", "loss_tp_ce")

    def __init__(
        self,
        config: HoVerNetConfig,
        run: RunDirectory,
        manager: Any,
        dist: DistContext | None = None,
        val_dataset: Any = None,
        *,
        initialise: bool = True,
    ) -> None:
        """``initialise=False`` skips ``config.init`` (a resumed run takes every weight from its checkpoint, so
        the init file need not exist any more)."""
        loop = LoopConfig(
            epochs=config.total_epochs,
            batch_size=config.batch_size(config.phase_of(0)),
            num_workers=config.num_workers,
            seed=config.seed,
            log_every=config.log_every,
            sample_every=config.sample_every,
            save_every=config.save_every,
            save_latest_steps=config.save_latest_steps,
            val_every=config.val_every if val_dataset is not None else 0,
            max_steps=config.max_steps,
            best_metric=config.best_metric,
            best_mode=config.best_mode,
            tensorboard=config.tensorboard,
        )
        super().__init__(run, loop, manager, dist, config.model_dump())
        self.cfg = config
        self.val_dataset = val_dataset
        if config.deterministic:
            set_deterministic(True)
        seed_everything(config.seed)  # identical initial weights on every rank
        network = config.build_network()
        self.init_report = load_init_weights(network, config.init) if initialise else InitReport("scratch")
        self.models[MODEL] = manager.prepare_model(network)
        self.criterion = HoVerNetLoss(config.loss_weights(), config.msge_orientation)
        self.phase = 0
        self.net: torch.nn.Module = network
        self._apply_phase(config.phase_of(0))
        self._new_optimiser()
        self._visual: dict[str, torch.Tensor] = {}

    # ------------------------------------------------------------------ phases
    def _new_optimiser(self) -> None:
        """A fresh Adam over every parameter and its StepLR (the reference builds both anew for each phase).

        Frozen parameters get no gradient in phase 1, so Adam leaves them (and its state for them) untouched.
        """
        cfg = self.cfg
        params = list(self.models[MODEL].parameters())
        self.optimizers["adam"] = torch.optim.Adam(params, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
        self.schedulers["step"] = torch.optim.lr_scheduler.StepLR(
            self.optimizers["adam"], step_size=cfg.decay_epoch, gamma=cfg.gamma
        )

    def _apply_phase(self, phase: int) -> None:
        """Freeze (phase 1) or release (phase 2) the encoder and (re)wrap the network for DDP.

        Besides the reference's ``freeze`` flag (the frozen layers run without gradients), the frozen parameters
        get ``requires_grad=False`` so DistributedDataParallel registers only the trainable ones.
        """
        if phase == self.phase:
            return
        model = self.models[MODEL]
        frozen = phase == 1
        model.freeze = frozen
        for name, parameter in model.named_parameters():
            if name.startswith(_FROZEN_PREFIXES):
                parameter.requires_grad_(not frozen)
        self.net = self.dist.wrap(model)
        self.phase = phase
        log.info("phase %d: %s", phase, "encoder frozen" if frozen else "all layers train")

    def batch_size_for_epoch(self, epoch: int) -> int:
        return self.cfg.batch_size(self.cfg.phase_of(epoch))

    def on_epoch_end(self, epoch: int) -> None:
        super().on_epoch_end(epoch)
        if epoch + 1 == self.cfg.phase1_epochs and self.cfg.phase2_epochs > 0:
            self._apply_phase(2)
            self._new_optimiser()  # phase 2 starts from the last phase-1 weights with a new Adam and StepLR

    # ------------------------------------------------------------------ step
    def _targets(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        keys = ("np", "hv", "tp") if "tp" in batch else ("np", "hv")
        return {key: batch[key].to(self.manager.device) for key in keys}

    def train_step(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        self._apply_phase(self.cfg.phase_of(self.state.epoch))  # a resumed run lands in its phase
        images = self.manager.to_device(batch["image"])
        targets = self._targets(batch)
        optimiser = self.optimizers["adam"]
        optimiser.zero_grad(set_to_none=True)
        with self.manager.autocast():
            pred = self.net(images)
        total, terms = self.criterion(pred, targets)
        losses = {"loss": total, **{f"loss_{name}": value for name, value in terms.items()}}
        self.guard(losses)
        self.scaler.scale(total).backward()
        self.scaler.step(optimiser)
        self.scaler.update()
        self._visual = {
            "image": images[:1].detach(),
            **{f"pred_{k}": v[:1].detach().float() for k, v in pred.items()},
            **{f"true_{k}": v[:1] for k, v in targets.items()},
        }
        return {name: value.detach() for name, value in losses.items()}

    # ------------------------------------------------------------------ reporting
    def sample_image(self) -> np.ndarray | None:
        """Two rows (prediction over target): input window | NP probability | HV x | HV y | type map."""
        if not self._visual:
            return None
        v = self._visual
        out = v["pred_np"].shape[-1]
        image = v["image"][0].float().permute(1, 2, 0).cpu().numpy()
        window = to_uint8(centre_crop(image, (out, out)))
        np_prob = torch.softmax(v["pred_np"], 1)[0, 1].cpu().numpy()
        pred_hv, true_hv = v["pred_hv"][0].cpu().numpy(), v["true_hv"][0].float().cpu().numpy()
        top = [window, _grey(np_prob), _colourise_hv(pred_hv[0]), _colourise_hv(pred_hv[1])]
        bottom = [window, _grey(v["true_np"][0].float().cpu().numpy()), _colourise_hv(true_hv[0])]
        bottom.append(_colourise_hv(true_hv[1]))
        if "pred_tp" in v:
            palette = _TYPE_COLOURS[np.arange(max(self.cfg.num_types, 1)) % len(_TYPE_COLOURS)]
            top.append(palette[v["pred_tp"][0].argmax(0).cpu().numpy()])
            bottom.append(palette[v["true_tp"][0].cpu().numpy()])
        return np.concatenate([np.concatenate(top, axis=1), np.concatenate(bottom, axis=1)], axis=0)

    def validate(self) -> dict[str, float]:
        """NP Dice / accuracy, HV MSE, type accuracy (nuclear pixels) and per-type Dice over the val split."""
        if self.val_dataset is None:
            return {}
        from torch.utils.data import DataLoader, Subset

        from histostain.metrics.instance import dice, nanmean
        from histostain.runtime.progress import track

        model = self.models[MODEL]
        was_training = model.training
        model.eval()
        count = len(self.val_dataset)
        if self.cfg.val_max_images is not None:
            count = min(count, self.cfg.val_max_images)
        loader = DataLoader(
            Subset(self.val_dataset, range(count)),
            batch_size=self.cfg.val_batch_size,
            num_workers=0,
            generator=torch.Generator().manual_seed(0),  # leaves the global RNG (part of the resume state) alone
        )
        types = self.cfg.num_types
        sums = {"np_inter": 0.0, "np_total": 0.0, "np_correct": 0.0, "pixels": 0.0, "hv_se": 0.0}
        tp_correct, nuclear = 0.0, 0.0
        tp_inter, tp_total = np.zeros(max(types, 1)), np.zeros(max(types, 1))
        per_image: list[float] = []
        try:
            with torch.inference_mode():
                for batch in track(loader, "validation", unit="batch"):
                    with self.manager.autocast():
                        pred = model(self.manager.to_device(batch["image"]))
                    true_np = batch["np"].to(self.manager.device)
                    pred_np = pred["np"].float().argmax(1)
                    sums["np_inter"] += float(((pred_np == 1) & (true_np == 1)).sum())
                    sums["np_total"] += float((pred_np == 1).sum() + (true_np == 1).sum())
                    sums["np_correct"] += float((pred_np == true_np).sum())
                    sums["pixels"] += float(true_np.numel())
                    true_hv = batch["hv"].to(self.manager.device)
                    sums["hv_se"] += float(((pred["hv"].float() - true_hv) ** 2).sum())
                    if "tp" in pred and "tp" in batch:
                        true_tp = batch["tp"].to(self.manager.device)
                        pred_tp = pred["tp"].float().argmax(1)
                        focus = true_np == 1
                        tp_correct += float(((pred_tp == true_tp) & focus).sum())
                        nuclear += float(focus.sum())
                        for t in range(1, types):
                            hit_p, hit_t = pred_tp == t, true_tp == t
                            tp_inter[t] += float((hit_p & hit_t).sum())
                            tp_total[t] += float(hit_p.sum() + hit_t.sum())
                    for inst, mask in zip(batch["inst"].numpy(), pred_np.cpu().numpy(), strict=True):
                        per_image.append(dice(inst, mask.astype(np.int32)))
        finally:
            model.train(was_training)
        scores = {
            "np_dice": 2.0 * sums["np_inter"] / sums["np_total"] if sums["np_total"] else math.nan,
            "np_acc": sums["np_correct"] / max(sums["pixels"], 1.0),
            "hv_mse": sums["hv_se"] / max(2.0 * sums["pixels"], 1.0),
            "dice": nanmean(per_image),
        }
        if self.cfg.types is not None:
            scores["tp_acc"] = tp_correct / nuclear if nuclear else math.nan
            for t in range(1, types):
                scores[f"tp_dice_{t}"] = 2.0 * tp_inter[t] / tp_total[t] if tp_total[t] else math.nan
        return {name: float(value) for name, value in scores.items()}

    # ------------------------------------------------------------------ checkpoint contents
    def extra_state(self) -> dict[str, Any]:
        return {"phase": self.phase, "init": self.init_report.as_dict()}

    def load_extra_state(self, state: Mapping[str, Any]) -> None:
        """Resume in the phase of the stored epoch (a finished run keeps the phase it ended in)."""
        if "init" in state:
            self.init_report = InitReport(**state["init"])
        if self.state.epoch < self.cfg.total_epochs:
            self._apply_phase(self.cfg.phase_of(self.state.epoch))
        elif state.get("phase"):
            self._apply_phase(int(state["phase"]))

    def primary_state_dict(self) -> dict[str, Any]:
        return unwrap(self.models[MODEL]).state_dict()

    def checkpoint_extra(self) -> dict[str, Any]:
        """The phase, the network's constructor arguments and what ``init`` loaded (for inference and audits)."""
        return {
            "phase": self.phase,
            "model_config": unwrap(self.models[MODEL]).config(),
            "init": self.init_report.as_dict(),
        }


# ------------------------------------------------------------------------------------------------ service


def train_hovernet(
    prepared: str | Path,
    config: HoVerNetConfig | None = None,
    *,
    name: str,
    runs_dir: str | Path = "runs",
    manager: Any,
    resume: bool = False,
    overrides: Mapping[str, Any] | None = None,
    config_file: str | Path | None = None,
    command: Sequence[str] | None = None,
) -> tuple[HoVerNetConfig, FitResult]:
    """Train (or resume) ``runs_dir/name`` on prepared PanNuke; works alike in one process and under torchrun.

    Without ``config`` the options are resolved as defaults < the run's own config.toml (on resume) <
    ``config_file`` < ``overrides``. A resumed run must keep the options in :data:`RESUME_FIXED`.
    Returns the resolved config and what the loop did.
    """
    prepared = Path(prepared)
    run, config = open_run(
        runs_dir,
        name,
        resume,
        config,
        lambda stored: resolve_config(config_file=config_file, overrides=overrides, base=stored),
        lambda stored, resolved: check_resume_compatible(HoVerNetConfig.model_validate(stored), resolved),
    )
    train, val = build_datasets(prepared, config)
    dist = init_distributed(manager)
    try:
        dist.barrier()  # every rank has checked the run folder before rank 0 creates it
        # built before any file is written, so a bad init file leaves no run folder behind
        trainer = HoVerNetTrainer(config, run, dist.manager, dist, val_dataset=val, initialise=not resume)
        init = run.read_run_info().get("init", "") if resume else trainer.init_report.describe()
        sizes = {"input_size": train.input_size, "output_size": train.output_size}
        record_run(run, dist, config, command, prepared, config_file, **sizes, init=init)
        dist.barrier()
        log.info(
            "training HoVer-Net %s (%s) on %d patches: %d + %d epochs -> %s",
            config.mode,
            init or "resumed",
            len(train),
            config.phase1_epochs,
            config.phase2_epochs,
            run.root,
        )
        result = trainer.fit(train, resume=resume)
        dist.barrier()
        return config, result
    finally:
        dist.cleanup()


__all__ = [
    "ARCH",
    "RESUME_FIXED",
    "HoVerNetConfig",
    "HoVerNetSamples",
    "HoVerNetTrainer",
    "InitReport",
    "build_datasets",
    "check_resume_compatible",
    "load_init_weights",
    "network_sizes",
    "resolve_config",
    "train_hovernet",
]
