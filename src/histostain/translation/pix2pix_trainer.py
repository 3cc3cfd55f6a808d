"""The pix2pix trainer: conditional GAN with L1 (or PyramidPix2pix's multi-scale L1), BCI validation.

Per step, as junyanz/pytorch-CycleGAN-and-pix2pix ``--model pix2pix`` (``optimize_parameters``): the generator
makes ``fake = G(A)``; the discriminator is updated first with

    L_D = (L_GAN(D(A, fake.detach()), 0) + L_GAN(D(A, B), 1)) / 2

(``D(A, X)`` = the PatchGAN on the 6-channel concatenation), then the generator, D frozen, with

    L_G = L_GAN(D(A, fake), 1) + lambda_l1 * R(fake, B)

where ``R`` is the mean absolute difference (``loss = "l1"``, lambda 100) or the pyramid loss of
:mod:`histostain.translation.pyramid_loss` (``loss = "pyramid"``, lambda 25). ``L_GAN`` is BCE with logits
(``vanilla``) or the mean squared error (``lsgan``). One Adam each for G and D; the reference's linear decay.

Validation (every ``val_every`` epochs, rank 0): the BCI protocol on the val split: each whole val patch at its
prepared resolution (no crop, no flip) is translated, both images go to uint8 RGB, and PSNR / SSIM are
``skimage`` with data range 255 and SSIM's default 7 x 7 uniform window, ``channel_axis=-1``, averaged over the
images (:mod:`histostain.metrics.paired`). Batch norm runs in ``norm_mode`` (``eval``: running statistics;
``per-input``: each image's own, as the reference's test.py without ``--eval``), dropout off; with
``val_compare_modes`` the other mode is scored too (``val_psnr_<mode>``). The identity baseline (PSNR/SSIM of the
input A against the target B) is computed once and reported with every validation as ``val_identity_*``.
``best.pt`` follows ``best_metric`` (``val_ssim`` by default).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from histostain.runtime.distributed import DistContext, unwrap
from histostain.runtime.training import RunDirectory, Trainer, seed_everything, set_deterministic
from histostain.translation.cyclegan import NLayerDiscriminator, generator_config, init_weights
from histostain.translation.pix2pix import (
    NORM_MODES,
    UnetGenerator,
    build_unet,
    define_pix2pix_generator,
    set_norm_mode,
    unet_config,
)
from histostain.translation.pix2pix_config import Pix2PixConfig
from histostain.translation.pyramid_loss import PyramidL1Loss
from histostain.translation.trainer import linear_decay, to_uint8

ARCH = "pix2pix"
log = logging.getLogger(__name__)


def build_pix2pix_generator(config: Pix2PixConfig) -> torch.nn.Module:
    """The generator ``config.net_g`` names (``unet_<2^k>`` or ``resnet_*blocks``), not yet initialised."""
    if config.net_g.startswith("unet_"):
        return build_unet({"arch": config.net_g, "ngf": config.ngf, "norm": config.norm, "use_dropout": config.dropout})
    return define_pix2pix_generator(config.net_g, 3, 3, config.ngf, config.norm, config.dropout)


def describe_generator(model: torch.nn.Module) -> dict[str, Any]:
    """Plain-value description of a pix2pix generator (U-Net or ResNet) for the checkpoint."""
    model = unwrap(model)
    return unet_config(model) if isinstance(model, UnetGenerator) else generator_config(model)


def paired_scores(fakes: np.ndarray, reals: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-image PSNR and SSIM (BCI protocol) of uint8 ``N x H x W x 3`` batches."""
    from histostain.metrics.paired import psnr, ssim

    psnrs, ssims = [], []
    for made, target in zip(fakes, reals, strict=True):
        psnrs.append(psnr(target, made))
        ssims.append(ssim(target, made))
    return psnrs, ssims


def _mean_finite(values: list[float]) -> float:
    finite = [value for value in values if math.isfinite(value)]
    return float(np.mean(finite)) if finite else math.inf


class Pix2PixTrainer(Trainer):
    """One generator and one conditional discriminator, the reference's D-then-G updates."""

    arch = ARCH
    status_keys = ("G_GAN", "G_L1", "D")

    def __init__(
        self,
        config: Pix2PixConfig,
        run: RunDirectory,
        manager: Any,
        dist: DistContext | None = None,
        val_dataset: Any = None,
    ) -> None:
        loop = config.loop_config(validation=val_dataset is not None)
        super().__init__(run, loop, manager, dist, config.model_dump())
        self.cfg = config
        self.val_dataset = val_dataset
        if config.deterministic:
            set_deterministic(True)
        seed_everything(config.seed)  # identical initial weights on every rank
        generator = init_weights(build_pix2pix_generator(config), config.init_gain)
        n_layers = 3 if config.net_d == "basic" else config.n_layers_d
        discriminator = init_weights(NLayerDiscriminator(6, config.ndf, n_layers, config.norm), config.init_gain)
        self.models["G"] = manager.prepare_model(generator)
        self.models["D"] = manager.prepare_model(discriminator)
        self.nets = {name: self.dist.wrap(model) for name, model in self.models.items()}
        betas = (config.beta1, config.beta2)
        self.optimizers = {
            "G": torch.optim.Adam(self.models["G"].parameters(), lr=config.lr, betas=betas),
            "D": torch.optim.Adam(self.models["D"].parameters(), lr=config.lr, betas=betas),
        }
        rule = linear_decay(config.epochs, config.epochs_decay)
        self.schedulers = {
            name: torch.optim.lr_scheduler.LambdaLR(optimizer, rule) for name, optimizer in self.optimizers.items()
        }
        self.pyramid = PyramidL1Loss().to(manager.device) if config.loss == "pyramid" else None
        self._visuals: dict[str, torch.Tensor] = {}
        self._identity: dict[str, float] | None = None

    # ------------------------------------------------------------------ losses
    def _gan_loss(self, prediction: torch.Tensor, real: bool) -> torch.Tensor:
        prediction = prediction.float()
        target = torch.ones_like(prediction) if real else torch.zeros_like(prediction)
        if self.cfg.gan_mode == "lsgan":
            return F.mse_loss(prediction, target)
        return F.binary_cross_entropy_with_logits(prediction, target)

    def reconstruction(self, fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        """``R(fake, B)`` before ``lambda_l1``: L1, or the pyramid loss."""
        if self.pyramid is not None:
            return self.pyramid(fake.float(), real.float())
        return F.l1_loss(fake.float(), real.float())

    def train_step(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        real_a = self.manager.to_device(batch["A"])
        real_b = self.manager.to_device(batch["B"])
        generator, discriminator = self.nets["G"], self.nets["D"]
        raw_d = self.models["D"]
        opt_g, opt_d = self.optimizers["G"], self.optimizers["D"]

        with self.manager.autocast():
            fake_b = generator(real_a)

        # discriminator first (the reference's order): real pairs vs. the detached fake
        for parameter in raw_d.parameters():
            parameter.requires_grad_(True)
        opt_d.zero_grad(set_to_none=True)
        with self.manager.autocast():
            pred_fake = discriminator(torch.cat([real_a, fake_b.detach()], 1))
            pred_real = discriminator(torch.cat([real_a, real_b], 1))
        loss_d_fake = self._gan_loss(pred_fake, False)
        loss_d_real = self._gan_loss(pred_real, True)
        loss_d = (loss_d_fake + loss_d_real) * 0.5
        self.guard({"D": loss_d, "D_real": loss_d_real, "D_fake": loss_d_fake})  # a NaN step changes nothing
        self.scaler.scale(loss_d).backward()
        self.scaler.step(opt_d)

        # then the generator against the updated D, used unwrapped and frozen (no gradients for it, no DDP sync)
        for parameter in raw_d.parameters():
            parameter.requires_grad_(False)
        opt_g.zero_grad(set_to_none=True)
        with self.manager.autocast():
            pred_fake_g = raw_d(torch.cat([real_a, fake_b], 1))
        loss_g_gan = self._gan_loss(pred_fake_g, True)
        loss_g_l1 = self.reconstruction(fake_b, real_b) * self.cfg.lambda_l1
        loss_g = loss_g_gan + loss_g_l1
        self.guard({"G": loss_g, "G_GAN": loss_g_gan, "G_L1": loss_g_l1})
        self.scaler.scale(loss_g).backward()
        self.scaler.step(opt_g)
        self.scaler.update()
        for parameter in raw_d.parameters():
            parameter.requires_grad_(True)
        losses = {"G": loss_g, "G_GAN": loss_g_gan, "G_L1": loss_g_l1, "D": loss_d}
        losses.update(D_real=loss_d_real, D_fake=loss_d_fake)

        self._visuals = {"real_A": real_a[:1], "fake_B": fake_b[:1], "real_B": real_b[:1]}
        return {name: value.detach() for name, value in losses.items()}

    # ------------------------------------------------------------------ reporting
    def sample_image(self) -> np.ndarray | None:
        """One row: real A | fake B | real B."""
        if not self._visuals:
            return None
        v = {name: to_uint8(tensor)[0] for name, tensor in self._visuals.items()}
        return np.concatenate([v["real_A"], v["fake_B"], v["real_B"]], axis=1)

    def _val_loader(self) -> Any:
        from torch.utils.data import DataLoader, Subset

        count = min(len(self.val_dataset), self.cfg.val_max_images)
        return DataLoader(Subset(self.val_dataset, range(count)), batch_size=1, num_workers=0)

    def identity_baseline(self) -> dict[str, float]:
        """PSNR/SSIM of the input A against the target B on the val images (computed once)."""
        if self._identity is None:
            psnrs: list[float] = []
            ssims: list[float] = []
            for batch in self._val_loader():
                p, s = paired_scores(to_uint8(batch["A"]), to_uint8(batch["B"]))
                psnrs += p
                ssims += s
            self._identity = {"val_identity_psnr": _mean_finite(psnrs), "val_identity_ssim": float(np.mean(ssims))}
            log.info(
                "identity baseline on val (input A vs. target B): PSNR %.3f dB, SSIM %.4f",
                self._identity["val_identity_psnr"],
                self._identity["val_identity_ssim"],
            )
        return dict(self._identity)

    def score(self, mode: str) -> dict[str, float]:
        """PSNR/SSIM of G on the val images with batch norm in ``mode`` (dropout off); the model is restored."""
        from histostain.runtime.progress import track

        generator = self.models["G"]
        was_training = generator.training
        generator.eval()
        set_norm_mode(generator, mode)
        psnrs: list[float] = []
        ssims: list[float] = []
        try:
            with torch.inference_mode():
                for batch in track(self._val_loader(), f"validation ({mode})", unit="image"):
                    with self.manager.autocast():
                        fake = generator(self.manager.to_device(batch["A"]))
                    p, s = paired_scores(to_uint8(fake), to_uint8(batch["B"]))
                    psnrs += p
                    ssims += s
        finally:
            set_norm_mode(generator, "eval")  # plain BatchNorm2d again: training mode uses batch statistics
            generator.train(was_training)
        return {"psnr": _mean_finite(psnrs), "ssim": float(np.mean(ssims))}

    def validate(self) -> dict[str, float]:
        """BCI PSNR/SSIM of G on val in ``norm_mode`` (and the other mode), with the identity baseline."""
        if self.val_dataset is None:
            return {}
        chosen = self.cfg.norm_mode
        scores = self.score(chosen)
        metrics = {"val_psnr": scores["psnr"], "val_ssim": scores["ssim"]}
        if self.cfg.val_compare_modes:
            for mode in NORM_MODES:
                values = scores if mode == chosen else self.score(mode)
                suffix = mode.replace("-", "_")
                metrics[f"val_psnr_{suffix}"] = values["psnr"]
                metrics[f"val_ssim_{suffix}"] = values["ssim"]
        metrics.update(self.identity_baseline())
        return metrics

    # ------------------------------------------------------------------ checkpoint contents
    def primary_state_dict(self) -> dict[str, Any]:
        return self.models["G"].state_dict()

    def checkpoint_extra(self) -> dict[str, Any]:
        domain_a, domain_b = self.cfg.domains
        generator = {"model": "G", "config": describe_generator(self.models["G"]), "norm_mode": self.cfg.norm_mode}
        return {
            "direction": self.cfg.direction if self.cfg.source == "bci" else None,
            "source": self.cfg.source,
            "domains": {"A": domain_a, "B": domain_b},
            "norm_mode": self.cfg.norm_mode,
            "generator": generator,
            "generators": {self.cfg.direction: generator} if self.cfg.source == "bci" else {},
        }


__all__ = ["ARCH", "Pix2PixTrainer", "build_pix2pix_generator", "describe_generator", "paired_scores"]
