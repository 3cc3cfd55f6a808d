"""The CycleGAN trainer: the reference's losses, alternating G / D updates, image pools and validation.

Losses per step, as in junyanz/pytorch-CycleGAN-and-pix2pix (``--model cycle_gan``)::

    G:   L_GAN(D_A(G_A(A)), 1) + L_GAN(D_B(G_B(B)), 1)
         + lambda_A |G_B(G_A(A)) - A|_1 + lambda_B |G_A(G_B(B)) - B|_1
         + lambda_idt (lambda_B |G_A(B) - B|_1 + lambda_A |G_B(A) - A|_1)
    D_A: (L_GAN(D_A(B), 1) + L_GAN(D_A(pool_B(G_A(A))), 0)) / 2     (D_B likewise with pool_A)

with one Adam over both generators and one over both discriminators. Domain A is IHC and B is H&E by
default (``direction="ihc2he"``: G_A translates IHC to H&E). The options and their reference defaults are
:class:`~histostain.translation.train_config.CycleGANConfig`; the loop, checkpoints, resume, NaN guard, Ctrl-C
handling and DDP come from :class:`histostain.runtime.training.Trainer`.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from histostain.runtime.distributed import DistContext, unwrap
from histostain.runtime.training import RunDirectory, Trainer, seed_everything, set_deterministic
from histostain.translation.cyclegan import NLayerDiscriminator, ResnetGenerator, generator_config, init_weights
from histostain.translation.train_config import CycleGANConfig

ARCH = "cyclegan"


def linear_decay(epochs: int, epochs_decay: int) -> Any:
    """The reference ``linear`` rule: factor ``1 - max(0, e + 1 - epochs) / (epochs_decay + 1)`` for epoch e.

    ``e`` is the 0-based epoch index (the reference's ``epoch + epoch_count - n_epochs`` with ``epoch_count=1``
    and the scheduler stepped at the end of each epoch): ``epochs`` epochs at full rate, then factors
    ``d/(d+1), (d-1)/(d+1), ..., 1/(d+1)``.
    """

    def factor(epoch: int) -> float:
        return 1.0 - max(0, epoch + 1 - epochs) / float(epochs_decay + 1)

    return factor


class ImagePool:
    """The reference's history of generated images: once full, each query returns a stored old fake with
    probability 0.5 (swapping the new one in), else the new one. Own RNG, so its state is checkpointed."""

    def __init__(self, size: int, seed: int) -> None:
        self.size = int(size)
        self.images: list[torch.Tensor] = []
        self.rng = random.Random(seed)

    def query(self, images: torch.Tensor) -> torch.Tensor:
        if self.size == 0:
            return images.detach()
        out = []
        for image in images.detach():
            image = image.unsqueeze(0)
            if len(self.images) < self.size:
                self.images.append(image.clone())
                out.append(image)
            elif self.rng.random() > 0.5:
                index = self.rng.randrange(self.size)
                out.append(self.images[index].clone())
                self.images[index] = image.clone()
            else:
                out.append(image)
        return torch.cat(out, 0)

    def state_dict(self) -> dict[str, Any]:
        return {"size": self.size, "images": [image.cpu() for image in self.images], "rng": self.rng.getstate()}

    def load_state_dict(self, state: Mapping[str, Any], device: torch.device) -> None:
        self.size = int(state["size"])
        self.images = [image.to(device) for image in state["images"]]
        version, internal, gauss = state["rng"]
        self.rng.setstate((version, tuple(internal), gauss))


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """``N x 3 x H x W`` in [-1, 1] -> uint8 ``N x H x W x 3`` (rounded; the reference truncates)."""
    scaled = ((images.detach().float().clamp(-1, 1) + 1.0) * 127.5).round()
    return scaled.to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def _set_requires_grad(models: Sequence[nn.Module], flag: bool) -> None:
    for model in models:
        for parameter in model.parameters():
            parameter.requires_grad_(flag)


class CycleGANTrainer(Trainer):
    """Two generators and two discriminators trained with the reference's alternating G / D updates."""

    arch = ARCH
    status_keys = ("G", "D_A", "D_B", "cycle_A", "cycle_B")

    def __init__(
        self,
        config: CycleGANConfig,
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
        for name in ("G_A", "G_B"):
            net = ResnetGenerator(3, 3, config.ngf, config.n_blocks, config.norm, config.dropout)
            self.models[name] = manager.prepare_model(init_weights(net, config.init_gain))
        for name in ("D_A", "D_B"):
            net = NLayerDiscriminator(3, config.ndf, config.n_layers_d, config.norm)
            self.models[name] = manager.prepare_model(init_weights(net, config.init_gain))
        self.nets = {name: self.dist.wrap(model) for name, model in self.models.items()}
        betas = (config.beta1, config.beta2)
        generators = [*self.models["G_A"].parameters(), *self.models["G_B"].parameters()]
        discriminators = [*self.models["D_A"].parameters(), *self.models["D_B"].parameters()]
        self.optimizers = {
            "G": torch.optim.Adam(generators, lr=config.lr, betas=betas),
            "D": torch.optim.Adam(discriminators, lr=config.lr, betas=betas),
        }
        rule = linear_decay(config.epochs, config.epochs_decay)
        self.schedulers = {
            name: torch.optim.lr_scheduler.LambdaLR(optimizer, rule) for name, optimizer in self.optimizers.items()
        }
        rank = self.dist.rank
        self.pools = {
            "fake_A": ImagePool(config.pool_size, seed=config.seed * 1000 + 2 * rank),
            "fake_B": ImagePool(config.pool_size, seed=config.seed * 1000 + 2 * rank + 1),
        }
        self._visuals: dict[str, torch.Tensor] = {}

    # ------------------------------------------------------------------ losses
    def _gan_loss(self, prediction: torch.Tensor, real: bool) -> torch.Tensor:
        prediction = prediction.float()
        target = torch.ones_like(prediction) if real else torch.zeros_like(prediction)
        if self.cfg.gan_mode == "lsgan":
            return F.mse_loss(prediction, target)
        return F.binary_cross_entropy_with_logits(prediction, target)

    def train_step(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        real_a = self.manager.to_device(batch["A"])
        real_b = self.manager.to_device(batch["B"])
        g_a, g_b, d_a, d_b = (self.nets[name] for name in ("G_A", "G_B", "D_A", "D_B"))
        raw_d_a, raw_d_b = self.models["D_A"], self.models["D_B"]
        opt_g, opt_d = self.optimizers["G"], self.optimizers["D"]
        losses: dict[str, torch.Tensor] = {}

        # generators: the discriminators are used unwrapped and frozen (no gradients for them, no DDP sync)
        _set_requires_grad([raw_d_a, raw_d_b], False)
        opt_g.zero_grad(set_to_none=True)
        with self.manager.autocast():
            fake_b = g_a(real_a)
            rec_a = g_b(fake_b)
            fake_a = g_b(real_b)
            rec_b = g_a(fake_a)
            pred_fake_b = raw_d_a(fake_b)
            pred_fake_a = raw_d_b(fake_a)
            if cfg.lambda_identity > 0:
                idt_a = g_a(real_b)
                idt_b = g_b(real_a)
        zero = real_a.new_zeros((), dtype=torch.float32)
        if cfg.lambda_identity > 0:
            losses["idt_A"] = F.l1_loss(idt_a.float(), real_b.float()) * cfg.lambda_b * cfg.lambda_identity
            losses["idt_B"] = F.l1_loss(idt_b.float(), real_a.float()) * cfg.lambda_a * cfg.lambda_identity
        else:
            losses["idt_A"] = losses["idt_B"] = zero
        losses["G_A"] = self._gan_loss(pred_fake_b, True)
        losses["G_B"] = self._gan_loss(pred_fake_a, True)
        losses["cycle_A"] = F.l1_loss(rec_a.float(), real_a.float()) * cfg.lambda_a
        losses["cycle_B"] = F.l1_loss(rec_b.float(), real_b.float()) * cfg.lambda_b
        loss_g = (
            losses["G_A"] + losses["G_B"] + losses["cycle_A"] + losses["cycle_B"] + losses["idt_A"] + losses["idt_B"]
        )
        losses["G"] = loss_g
        self.guard(losses)
        self.scaler.scale(loss_g).backward()
        self.scaler.step(opt_g)

        # discriminators: real vs. a fake from the history pool
        _set_requires_grad([raw_d_a, raw_d_b], True)
        opt_d.zero_grad(set_to_none=True)
        pooled_b = self.pools["fake_B"].query(fake_b)
        pooled_a = self.pools["fake_A"].query(fake_a)
        with self.manager.autocast():
            pred_real_b, pred_pool_b = d_a(real_b), d_a(pooled_b)
            pred_real_a, pred_pool_a = d_b(real_a), d_b(pooled_a)
        loss_d_a = (self._gan_loss(pred_real_b, True) + self._gan_loss(pred_pool_b, False)) * 0.5
        loss_d_b = (self._gan_loss(pred_real_a, True) + self._gan_loss(pred_pool_a, False)) * 0.5
        self.guard({"D_A": loss_d_a, "D_B": loss_d_b})
        self.scaler.scale(loss_d_a + loss_d_b).backward()
        self.scaler.step(opt_d)
        self.scaler.update()
        losses["D_A"], losses["D_B"] = loss_d_a, loss_d_b

        self._visuals = {
            "real_A": real_a[:1],
            "fake_B": fake_b[:1],
            "rec_A": rec_a[:1],
            "real_B": real_b[:1],
            "fake_A": fake_a[:1],
            "rec_B": rec_b[:1],
        }
        return {name: value.detach() for name, value in losses.items()}

    # ------------------------------------------------------------------ reporting
    def sample_image(self) -> np.ndarray | None:
        """2 x 3 grid: real A | fake B | reconstructed A over real B | fake A | reconstructed B."""
        if not self._visuals:
            return None
        v = {name: to_uint8(tensor)[0] for name, tensor in self._visuals.items()}
        top = np.concatenate([v["real_A"], v["fake_B"], v["rec_A"]], axis=1)
        bottom = np.concatenate([v["real_B"], v["fake_A"], v["rec_B"]], axis=1)
        if top.shape != bottom.shape:  # unpaired crops of different sizes: pad the narrower row
            width = max(top.shape[1], bottom.shape[1])
            top, bottom = (np.pad(row, ((0, 0), (0, width - row.shape[1]), (0, 0))) for row in (top, bottom))
        return np.concatenate([top, bottom], axis=0)

    def validate(self) -> dict[str, float]:
        """Paired PSNR/SSIM (BCI protocol) of G_A on the val split, and FID against real B with ``val_fid``."""
        if self.val_dataset is None:
            return {}
        from torch.utils.data import DataLoader, Subset

        from histostain.metrics.paired import psnr, ssim
        from histostain.runtime.progress import track

        generator = self.models["G_A"]
        was_training = generator.training
        generator.eval()
        count = min(len(self.val_dataset), self.cfg.val_max_images)
        loader = DataLoader(Subset(self.val_dataset, range(count)), batch_size=self.cfg.batch_size, num_workers=0)
        psnrs: list[float] = []
        ssims: list[float] = []
        fid_model = self._fid_network() if self.cfg.val_fid else None
        fake_features: list[np.ndarray] = []
        real_features: list[np.ndarray] = []
        try:
            with torch.inference_mode():
                for batch in track(loader, "validation", unit="batch"):
                    with self.manager.autocast():
                        fake = generator(self.manager.to_device(batch["A"]))
                    fake_u8, real_u8 = to_uint8(fake), to_uint8(batch["B"])
                    for made, target in zip(fake_u8, real_u8, strict=True):
                        psnrs.append(psnr(target, made))
                        ssims.append(ssim(target, made))
                    if fid_model is not None:
                        fake_features.append(self._fid_features(fid_model, fake_u8))
                        real_features.append(self._fid_features(fid_model, real_u8))
        finally:
            generator.train(was_training)
        finite = [value for value in psnrs if math.isfinite(value)]
        scores = {
            "val_psnr": float(np.mean(finite)) if finite else math.inf,
            "val_ssim": float(np.mean(ssims)),
        }
        if fid_model is not None and count >= 2:
            from histostain.metrics.fid import fid_from_features

            scores["val_fid"] = fid_from_features(np.concatenate(real_features), np.concatenate(fake_features))
        return scores

    def _fid_network(self) -> torch.nn.Module:
        """The FID-Inception network, loaded once (the weights were checked to exist before training)."""
        if getattr(self, "_fid_model", None) is None:
            from histostain.metrics.inception import load_fid_inception

            model, _ = load_fid_inception(Path(self.cfg.fid_weights) if self.cfg.fid_weights else None)
            self._fid_model = model.to(self.manager.device).eval()
        return self._fid_model

    def _fid_features(self, model: torch.nn.Module, images: np.ndarray) -> np.ndarray:
        """2048-d pool3 features of uint8 NHWC images (the network resizes to 299 and scales to [-1, 1])."""
        batch = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div(255.0)
        return model(batch.to(self.manager.device)).double().cpu().numpy()

    # ------------------------------------------------------------------ checkpoint contents
    def extra_state(self) -> dict[str, Any]:
        return {name: pool.state_dict() for name, pool in self.pools.items()}

    def load_extra_state(self, state: Mapping[str, Any]) -> None:
        for name, pool in self.pools.items():
            if name in state:
                pool.load_state_dict(state[name], self.manager.device)

    def primary_state_dict(self) -> dict[str, Any]:
        return self.models["G_A"].state_dict()

    def checkpoint_extra(self) -> dict[str, Any]:
        domain_a, domain_b = self.cfg.domains
        forward, backward = self.cfg.direction, "he2ihc" if self.cfg.direction == "ihc2he" else "ihc2he"
        return {
            "direction": self.cfg.direction,
            "domains": {"A": domain_a, "B": domain_b},
            "generators": {
                forward: {"model": "G_A", "config": generator_config(unwrap(self.models["G_A"]))},
                backward: {"model": "G_B", "config": generator_config(unwrap(self.models["G_B"]))},
            },
        }


__all__ = ["ARCH", "CycleGANTrainer", "ImagePool", "linear_decay", "to_uint8"]
