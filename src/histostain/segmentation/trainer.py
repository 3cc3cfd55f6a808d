"""The HoVer-Net trainer: the reference's two phases on the shared loop, its validation scores and previews.

Phase 1 trains with the encoder frozen, phase 2 trains every layer; each phase gets a new Adam and StepLR, and
phase 2 starts from the last phase-1 weights, as the reference does. Validation (rank 0, every ``val_every``
epochs, centre window, no augmentation): NP Dice and accuracy over all val pixels, HV MSE, type accuracy on
nuclear pixels, per-type Dice, and the per-image binary Dice of the metrics module. The loop (run folder, resume,
AMP, DDP, NaN guard, Ctrl-C) is :class:`histostain.runtime.training.Trainer`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from histostain.runtime.distributed import DistContext, unwrap
from histostain.runtime.training import RunDirectory, Trainer, seed_everything, set_deterministic
from histostain.segmentation.augment import to_uint8
from histostain.segmentation.config import HoVerNetConfig
from histostain.segmentation.geometry import HoVerNetGeometry
from histostain.segmentation.hovernet import HoVerNet
from histostain.segmentation.init_weights import InitReport, load_init_weights
from histostain.segmentation.losses import HoVerNetLoss
from histostain.segmentation.samples import type_names
from histostain.segmentation.targets import centre_crop
from histostain.vocabulary import type_colour

log = logging.getLogger(__name__)

ARCH = "hovernet"
MODEL = "hovernet"  # the name of the network in the trainer's models / checkpoints
_FROZEN_PREFIXES = ("d0.units.", "d1.", "d2.", "d3.")  # what the reference runs without gradients in phase 1


def _colourise_hv(values: np.ndarray) -> np.ndarray:
    """[-1, 1] -> blue (negative) / white (0) / red (positive) uint8 RGB."""
    v = np.clip(values, -1.0, 1.0)[..., None]
    white = np.ones((*values.shape, 3))
    red, blue = np.array([1.0, 0.0, 0.0]), np.array([0.0, 0.0, 1.0])
    rgb = np.where(v >= 0, white * (1 - v) + red * v, white * (1 + v) + blue * (-v))
    return to_uint8(rgb * 255.0)


def type_palette(num_types: int) -> np.ndarray:
    """uint8 RGB colour of each type id ``0 .. num_types - 1``: the one palette of every type picture."""
    return np.array([type_colour(code) for code in range(max(num_types, 1))], dtype=np.uint8)


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
        geometry: HoVerNetGeometry | None = None,
        class_names: Mapping[int, str] | None = None,
    ) -> None:
        """``initialise=False`` skips ``config.init`` (a resumed run takes every weight from its checkpoint, so
        the init file need not exist any more). ``geometry`` and ``class_names`` describe the data the network is
        trained on (:meth:`HoVerNetSamples.geometry`, :meth:`HoVerNetSamples.type_names`); without them, the
        published geometry of the mode at the configured input and PanNuke's names."""
        super().__init__(
            run, config.loop_config(validation=val_dataset is not None), manager, dist, config.model_dump()
        )
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
        self.geometry = geometry if geometry is not None else self._configured_geometry(network)
        self.class_names = dict(class_names) if class_names is not None else type_names(config.num_types)

    def _configured_geometry(self, network: HoVerNet) -> HoVerNetGeometry:
        reference = self.cfg.reference_geometry
        input_size = self.cfg.input_size or reference.patch_in
        return HoVerNetGeometry(self.cfg.mode, input_size, network.output_size(input_size), reference.mpp)

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
            palette = type_palette(self.cfg.num_types)
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
        self._apply_phase(self.cfg.phase_after(self.state.epoch))

    def primary_state_dict(self) -> dict[str, Any]:
        return unwrap(self.models[MODEL]).state_dict()

    def checkpoint_extra(self) -> dict[str, Any]:
        """For inference and audits: the phase, the network's constructor arguments, what ``init`` loaded, and
        what the network was trained on (``load_hovernet`` reads ``mpp`` and ``class_names`` back): the input
        scale in um/px, type code -> name, and the input/output sides (``geometry``)."""
        extra: dict[str, Any] = {
            "phase": self.phase,
            "model_config": unwrap(self.models[MODEL]).config(),
            "init": self.init_report.as_dict(),
            "mpp": float(self.geometry.mpp),
            "geometry": self.geometry.to_dict(),
        }
        if self.class_names is not None:
            extra["class_names"] = dict(self.class_names)
        return extra


__all__ = ["ARCH", "MODEL", "HoVerNetTrainer", "type_palette"]
