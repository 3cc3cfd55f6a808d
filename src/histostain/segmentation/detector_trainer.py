"""The keypoint-detector trainer on the shared loop: focal loss on Gaussian heatmaps, F1 validation, threshold.

Training batches come from :class:`DetectorCrops`: a random ``crop x crop`` window of a prepared EndoNuke tile
(after the exact dihedral transform and colour jitter of
:class:`~histostain.datasets.torch_data.KeypointSamples`) and the Gaussian heatmap targets of the keypoints
inside it (:func:`~histostain.segmentation.detector_targets.gaussian_targets`, sigma from ``target_radius_um``
at the prepared um/px). The targets are drawn in the dataset so DataLoader workers build them in parallel and
the default collation applies; they depend only on the crop's keypoints.

Validation (rank 0, every ``val_every`` epochs): every val tile whole, no augmentation; the heatmaps are decoded
once at the lowest threshold (:func:`~histostain.segmentation.detector.decode_heatmaps`, after smoothing by
``smooth_um``; a higher threshold keeps
exactly the peaks scoring at least that much) and matched to the true points with
:func:`~histostain.metrics.detection.match_points` at ``radius_um``, class-agnostic; TP/FP/FN are pooled over
the tiles for each threshold and the threshold with the highest F1 is kept (ties: the lowest). Its F1 selects
best.pt; the checkpoint stores it with the network's arguments, the class names, um/px and sigma.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from histostain.datasets.torch_data import KeypointSamples
from histostain.runtime.distributed import DistContext, unwrap
from histostain.runtime.training import RunDirectory, Trainer, seed_everything, set_deterministic
from histostain.segmentation.detector_config import NUM_CLASSES, DetectorConfig
from histostain.segmentation.detector_targets import gaussian_targets, keypoint_pixels, penalty_reduced_focal_loss
from histostain.vocabulary import ENDONUKE_CLASS_NAMES

log = logging.getLogger(__name__)

ARCH = "detector"
MODEL = "detector"
DEFAULT_THRESHOLD = 0.5  # recorded until a validation has chosen one
PAD_VALUE = 1.0  # tiles smaller than the crop are padded with white (bright-field background)


def prepared_mpp(samples: KeypointSamples) -> float:
    """The um/px every tile of a prepared EndoNuke folder was resampled to (its manifest's ``mpp`` option)."""
    from histostain.errors import DatasetLayoutError

    value = samples.manifest.options.get("mpp")
    if not isinstance(value, int | float) or not value > 0:
        raise DatasetLayoutError(
            f"{samples.folder / 'manifest.json'}: no positive 'mpp' option recorded",
            hint="re-run `histostain prepare endonuke` with --overwrite",
        )
    return float(value)


class DetectorCrops(Dataset):
    """Random crops of augmented keypoint tiles with their heatmap targets: ``{"image": 3 x S x S in [0, 1],
    "heatmap": C x S x S, "count": points inside}``; the crop is drawn from ``[seed, epoch, index, 1]``, so it
    depends only on the seed, the epoch and the index (exact resume, any number of workers)."""

    def __init__(self, samples: KeypointSamples, crop: int, sigma_px: float, num_classes: int = NUM_CLASSES) -> None:
        self.samples = samples
        self.crop = int(crop)
        self.sigma_px = float(sigma_px)
        self.num_classes = int(num_classes)

    def __len__(self) -> int:
        return len(self.samples)

    def set_epoch(self, epoch: int) -> None:
        self.samples.set_epoch(epoch)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.samples[index]
        image, points, classes = sample["image"], sample["points"].numpy(), sample["classes"].numpy()
        height, width = image.shape[-2:]
        rng = np.random.default_rng([self.samples.seed, self.samples.epoch, int(index), 1])
        x0 = int(rng.integers(0, width - self.crop + 1)) if width > self.crop else 0
        y0 = int(rng.integers(0, height - self.crop + 1)) if height > self.crop else 0
        window = torch.full((image.shape[0], self.crop, self.crop), PAD_VALUE, dtype=image.dtype)
        h, w = min(height, self.crop), min(width, self.crop)
        window[:, :h, :w] = image[:, y0 : y0 + h, x0 : x0 + w]
        rows, cols = keypoint_pixels(points, (height, width))  # the pixel holding each point, as the targets use
        keep = (cols >= x0) & (cols < x0 + w) & (rows >= y0) & (rows < y0 + h)
        inside = np.stack([cols[keep] - x0, rows[keep] - y0], axis=1).astype(np.float64)
        heatmap = gaussian_targets(inside, classes[keep], (self.crop, self.crop), self.num_classes, self.sigma_px)
        return {"image": window, "heatmap": torch.from_numpy(heatmap), "count": int(keep.sum())}


def cosine_factor(epoch: int, epochs: int, floor: float = 0.01) -> float:
    """The learning-rate factor of epoch ``epoch`` (0-based) of ``epochs``: half a cosine from 1 down to
    ``floor`` at the last epoch."""
    if epochs <= 1:
        return 1.0
    progress = min(max(epoch / (epochs - 1), 0.0), 1.0)
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def pooled_f1(
    decoded: list[tuple[np.ndarray, np.ndarray]], truths: list[np.ndarray], thresholds: list[float], radius: float
) -> list[dict[str, float]]:
    """Class-agnostic P/R/F1 pooled over tiles at each threshold: ``decoded`` holds ``(points, scores)`` per tile
    (decoded at the lowest threshold), ``truths`` the true ``(x, y)`` per tile, ``radius`` in pixels."""
    from histostain.metrics.detection import DetectionCounts, match_points

    rows = []
    for threshold in thresholds:
        total = DetectionCounts()
        for (points, scores), true in zip(decoded, truths, strict=True):
            kept = points[scores >= threshold]
            pairs, free_true, free_pred = match_points(true, kept, radius)
            total = total + DetectionCounts(len(pairs), len(free_pred), len(free_true))
        rows.append(
            {
                "threshold": float(threshold),
                "tp": float(total.tp),
                "fp": float(total.fp),
                "fn": float(total.fn),
                "precision": total.precision,
                "recall": total.recall,
                "f1": total.f1,
            }
        )
    return rows


def best_row(rows: list[dict[str, float]]) -> dict[str, float]:
    """The row with the highest finite F1 (ties: the lowest threshold); the first row if none is finite."""
    best = rows[0]
    for row in rows:
        if math.isfinite(row["f1"]) and (not math.isfinite(best["f1"]) or row["f1"] > best["f1"]):
            best = row
    return best


class DetectorTrainer(Trainer):
    """:class:`~histostain.segmentation.detector.DetectorNet` on the shared loop, with one Adam."""

    arch = ARCH
    status_keys = ("loss",)

    def __init__(
        self,
        config: DetectorConfig,
        run: RunDirectory,
        manager: Any,
        dist: DistContext | None = None,
        val_dataset: KeypointSamples | None = None,
        *,
        mpp: float,
        class_names: Mapping[int, str] | None = None,
    ) -> None:
        """``mpp``: the um/px of the prepared data (:func:`prepared_mpp`), which turns ``target_radius_um`` and
        ``radius_um`` into pixels."""
        from histostain.segmentation.detector_targets import sigma_from_um

        super().__init__(
            run, config.loop_config(validation=val_dataset is not None), manager, dist, config.model_dump()
        )
        self.cfg = config
        self.val_dataset = val_dataset
        self.mpp = float(mpp)
        self.sigma_px = sigma_from_um(config.target_radius_um, self.mpp)
        self.smooth_px = config.smooth_um / self.mpp  # the decoding's smoothing, in pixels of the data
        self.class_names = dict(class_names) if class_names is not None else dict(ENDONUKE_CLASS_NAMES)
        self.threshold = DEFAULT_THRESHOLD
        if config.deterministic:
            set_deterministic(True)
        seed_everything(config.seed)  # identical initial weights on every rank
        network = config.build_network()
        self.models[MODEL] = manager.prepare_model(network)
        self.net = self.dist.wrap(self.models[MODEL])
        params = list(self.models[MODEL].parameters())
        self.optimizers["adam"] = torch.optim.Adam(params, lr=config.lr, betas=(config.beta1, config.beta2))
        if config.lr_schedule == "cosine":  # stepped after each epoch (Trainer.on_epoch_end)
            self.schedulers["cosine"] = torch.optim.lr_scheduler.LambdaLR(
                self.optimizers["adam"], lambda epoch: cosine_factor(epoch, config.epochs)
            )
        self._visual: dict[str, torch.Tensor] = {}

    # ------------------------------------------------------------------ step
    def train_step(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        images = self.manager.to_device(batch["image"])
        targets = batch["heatmap"].to(self.manager.device)
        optimiser = self.optimizers["adam"]
        optimiser.zero_grad(set_to_none=True)
        with self.manager.autocast():
            logits = self.net(images)
        loss = penalty_reduced_focal_loss(logits.float(), targets, self.cfg.focal_alpha, self.cfg.focal_beta)
        losses = {"loss": loss}
        self.guard(losses)
        self.scaler.scale(loss).backward()
        self.scaler.step(optimiser)
        self.scaler.update()
        self._visual = {"image": images[:1].detach(), "pred": logits[:1].detach().float(), "true": targets[:1]}
        return {"loss": loss.detach()}

    # ------------------------------------------------------------------ reporting
    def sample_image(self) -> np.ndarray | None:
        """input crop | predicted heatmap (max over classes) | target heatmap."""
        if not self._visual:
            return None
        v = self._visual

        def grey(values: torch.Tensor) -> np.ndarray:
            plane = (values.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
            return np.repeat(plane[..., None], 3, axis=2)

        image = (v["image"][0].float().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
        pred = grey(torch.sigmoid(v["pred"][0]).amax(0))
        true = grey(v["true"][0].float().amax(0))
        return np.concatenate([image, pred, true], axis=1)

    def validate(self) -> dict[str, float]:
        """Precision, recall and F1 at ``radius_um`` (class-agnostic, pooled over the val tiles) at the best
        threshold, and that threshold (kept for the checkpoint)."""
        if self.val_dataset is None:
            return {}
        from histostain.runtime.progress import track
        from histostain.segmentation.detector import decode_heatmaps

        model = self.models[MODEL]
        was_training = model.training
        model.eval()
        count = len(self.val_dataset)
        if self.cfg.val_max_images is not None:
            count = min(count, self.cfg.val_max_images)
        thresholds = self.cfg.thresholds()
        decoded: list[tuple[np.ndarray, np.ndarray]] = []
        truths: list[np.ndarray] = []
        try:
            with torch.inference_mode():
                for index in track(range(count), "validation", unit="tile"):
                    sample = self.val_dataset[index]
                    with self.manager.autocast():
                        logits = model(self.manager.to_device(sample["image"][None]))
                    heatmaps = torch.sigmoid(logits.float())[0]
                    points, _, scores = decode_heatmaps(
                        heatmaps, thresholds[0], self.cfg.nms_kernel, smooth=self.smooth_px
                    )
                    decoded.append((points, scores))
                    truths.append(sample["points"].numpy().astype(np.float64))
        finally:
            model.train(was_training)
        rows = pooled_f1(decoded, truths, thresholds, self.cfg.radius_um / self.mpp)
        best = best_row(rows)
        self.threshold = best["threshold"]
        return {
            "f1": best["f1"],
            "precision": best["precision"],
            "recall": best["recall"],
            "threshold": best["threshold"],
            "f1_at_0.5": next((r["f1"] for r in rows if abs(r["threshold"] - 0.5) < 1e-9), math.nan),
        }

    # ------------------------------------------------------------------ checkpoint contents
    def extra_state(self) -> dict[str, Any]:
        return {"threshold": float(self.threshold)}

    def load_extra_state(self, state: Mapping[str, Any]) -> None:
        if "threshold" in state:
            self.threshold = float(state["threshold"])

    def primary_state_dict(self) -> dict[str, Any]:
        return unwrap(self.models[MODEL]).state_dict()

    def checkpoint_extra(self) -> dict[str, Any]:
        """For inference: the network's arguments, class code -> name, the input scale (um/px), the target
        sigma in pixels (and its radius in um), and the score threshold chosen on the val split."""
        return {
            "model_config": self.cfg.model_args(),
            "class_names": dict(self.class_names),
            "mpp": self.mpp,
            "sigma_px": float(self.sigma_px),
            "target_radius_um": float(self.cfg.target_radius_um),
            "threshold": float(self.threshold),
            "nms_kernel": int(self.cfg.nms_kernel),
            "smooth_px": float(self.smooth_px),
            "radius_um": float(self.cfg.radius_um),
        }


__all__ = [
    "ARCH",
    "DEFAULT_THRESHOLD",
    "MODEL",
    "DetectorCrops",
    "DetectorTrainer",
    "best_row",
    "cosine_factor",
    "pooled_f1",
    "prepared_mpp",
]
