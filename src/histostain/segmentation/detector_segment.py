"""The keypoint detector as a segmenter: nuclei as points, with IHC positivity measured in a disk around each.

``segment --model detector`` and ``pipeline --segmenter detector`` run :class:`DetectorSegmenter`: the network's
heatmaps (:class:`~histostain.segmentation.detector.DetectorNet`, float32, no gradient) are decoded at the
threshold, NMS window and smoothing stored with the weights
(:func:`~histostain.segmentation.detector.decode_heatmaps`), and the points become
:func:`~histostain.segmentation.points.nuclei_from_points` nuclei whose disks have the radius
:data:`DISK_RADIUS_UM`. Per point:

* ``type`` the class of the highest heatmap at the peak (EndoNuke: 0 stroma, 1 epithelium, 2 other) and
  ``type_prob`` that heatmap's share of the classes' sum there;
* ``detection_score`` the peak's class-agnostic heatmap value;
* for IHC (``stain="ihc"``, or ``"auto"`` deciding IHC as the classical model does), ``dab_od``: the mean DAB
  optical density over the point's disk (the classical model averages it over its segmented nucleus; the
  same unit and the same 1+/2+/3+ thresholds), and ``positivity``.

Large images go chunk by chunk like every segmenter (points kept by the chunk whose core holds them); inputs at
another scale are resampled by :func:`~histostain.segmentation.segment.segment_at_scale`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from histostain.errors import ConfigError
from histostain.segmentation.chunks import DEFAULT_MARGIN, segment_in_chunks
from histostain.segmentation.nuclei import Nuclei

if TYPE_CHECKING:
    from histostain.runtime.device import DeviceManager
    from histostain.segmentation.detector import DetectorNet
    from histostain.segmentation.detector_weights import DetectorWeights
    from histostain.settings import ResolvedSettings, Settings
    from histostain.weights.registry import ModelCard

log = logging.getLogger(__name__)

DEFAULT_DETECTOR = "detector-endonuke"  # the packaged weights `--model detector` uses without --weights
DISK_RADIUS_UM = 2.5  # the disk a point's DAB is measured in: a typical nucleus (EndoNuke: 5-8 um across)
DETECTOR_CHUNK = 1024  # a U-Net pass holds every level's activations: 1024 px keeps it under ~1 GB
SCORE = "detection_score"


class DetectorSegmenter:
    """A :class:`DetectorNet` and its weights' threshold, scale and classes, behind the segmenter protocol."""

    kind = "detector"

    def __init__(
        self,
        model: DetectorNet,
        weights: DetectorWeights,
        device: DeviceManager,
        *,
        stain: str = "auto",
        thresholds: Sequence[float] | None = None,
        chunk: int = DETECTOR_CHUNK,
        margin: int = DEFAULT_MARGIN,
        card: ModelCard | None = None,
        model_record: dict[str, Any] | None = None,
    ) -> None:
        from histostain.segmentation.classical import STAINS
        from histostain.segmentation.positivity import DEFAULT_THRESHOLDS, check_thresholds

        if stain not in STAINS:
            raise ConfigError(f"--stain {stain}: unknown", hint=f"use one of {', '.join(STAINS)}")
        self.device = device
        self.model = device.prepare_model(model)
        self.model.eval()
        self.weights = weights
        self.stain = stain
        self.positivity = check_thresholds(thresholds if thresholds is not None else DEFAULT_THRESHOLDS)
        self.chunk, self.margin = int(chunk), int(margin)
        self.card = card
        self.model_record = model_record
        self.mpp = weights.mpp
        self.type_names = weights.class_names or None
        if card is not None:
            if card.mpp is not None:
                self.mpp = float(card.mpp)
            if card.classes:  # a detector's classes start at code 0 (EndoNuke: stroma): no background entry
                self.type_names = dict(enumerate(card.classes))

    @classmethod
    def resolve(
        cls,
        spec: str | os.PathLike[str] | None,
        device: DeviceManager,
        settings: Settings | ResolvedSettings | None = None,
        **options: Any,
    ) -> DetectorSegmenter:
        """From what ``--weights`` names (a file, a ``train detector`` run, a registry name; None: the packaged
        :data:`DEFAULT_DETECTOR`)."""
        from histostain.segmentation.detector_weights import load_detector
        from histostain.weights.resolve import resolve_weights

        resolved = resolve_weights(
            spec if spec is not None else DEFAULT_DETECTOR, task="segmentation", settings=settings
        )
        card = resolved.card
        if card is not None and card.arch != "detector":
            raise ConfigError(
                f"{card.name} is a {card.arch} model; --model detector needs detector weights",
                hint=f"e.g. --weights {DEFAULT_DETECTOR}, or --model {card.arch}",
            )
        model, weights = load_detector(resolved.path)
        record = resolved.record() if card is not None else None
        return cls(model, weights, device, card=card, model_record=record, **options)

    @property
    def licence(self) -> str | None:
        return None if self.card is None else self.card.stated_licence

    @property
    def radius_px(self) -> float:
        """The disk radius in pixels at the model's scale."""
        return DISK_RADIUS_UM / float(self.mpp or 0.5)

    # ------------------------------------------------------------------------------------------- segmenting
    def heatmaps(self, rgb: np.ndarray) -> np.ndarray:
        """``C x H x W`` float32 heatmap probabilities of one uint8 RGB image."""
        import torch

        image = torch.from_numpy(np.asarray(rgb, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
        with torch.inference_mode(), self.device.autocast():
            logits = self.model(self.device.to_device(image))
        return torch.sigmoid(logits.float())[0].cpu().numpy()

    def segment_region(self, rgb: np.ndarray) -> Nuclei:
        """One region whole (no chunking)."""
        from scipy import ndimage as ndi

        from histostain.segmentation.classical import optical_densities, resolve_stain
        from histostain.segmentation.detector import decode_heatmaps
        from histostain.segmentation.points import keypoint_pixels, nuclei_from_points
        from histostain.segmentation.positivity import DAB_OD, POSITIVITY, positivity_classes

        rgb = np.asarray(rgb)
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ValueError(f"expected an H x W x 3 uint8 RGB image, got {rgb.dtype} of shape {rgb.shape}")
        heat = self.heatmaps(rgb)
        weights = self.weights
        points, classes, scores = decode_heatmaps(heat, weights.threshold, weights.nms_kernel, smooth=weights.smooth_px)
        rows, cols = keypoint_pixels(points, rgb.shape[:2])
        at_peak = heat[:, rows, cols]  # the class shares from the network's own (unsmoothed) maps
        share = at_peak[classes, np.arange(len(classes))] / np.maximum(at_peak.sum(axis=0), 1e-12)
        nuclei = nuclei_from_points(
            points,
            rgb.shape[:2],
            self.radius_px,
            types=classes,
            type_probs=share,
            type_names=self.type_names,
            measurements={SCORE: scores.astype(np.float64)},
            mpp=self.mpp,
        )
        if self.stain != "he" and (len(nuclei) or self.stain == "ihc"):  # H&E: no DAB to measure
            od = optical_densities(rgb)
            stain = resolve_stain(od) if self.stain == "auto" else self.stain
            if stain == "ihc":
                dab = np.asarray(ndi.mean(od[..., 2], labels=nuclei.inst_map, index=nuclei.ids), np.float64)
                empty = ~np.isfinite(dab)  # a point whose pixel another point holds: the DAB at its pixel
                dab[empty] = od[rows[empty], cols[empty], 2]
                nuclei.measurements[DAB_OD] = dab.reshape(len(nuclei))
                nuclei.measurements[POSITIVITY] = positivity_classes(nuclei.measurements[DAB_OD], self.positivity)
        return nuclei

    def segment(self, rgb: np.ndarray) -> Nuclei:
        return segment_in_chunks(
            self.segment_region, rgb, chunk=self.chunk, margin=self.margin, type_names=self.type_names, mpp=self.mpp
        )

    def settings(self) -> dict[str, Any]:
        return {
            "model": self.kind,
            "weights_sha256": self.weights.loaded.sha256,
            "threshold": self.weights.threshold,
            "smooth_px": self.weights.smooth_px,
            "stain": self.stain,
            "positivity": list(self.positivity),
            "disk_radius_um": DISK_RADIUS_UM,
            "chunk": self.chunk,
            "margin": self.margin,
        }

    def describe(self) -> dict[str, Any]:
        return {
            "weights": self.weights.loaded.record(self.model_record),
            "details": {
                "device": self.device.plan.device,
                "precision": self.device.plan.precision,
                "threshold": self.weights.threshold,
                "nms_kernel": self.weights.nms_kernel,
                "smooth_px": self.weights.smooth_px,
                "disk_radius_um": DISK_RADIUS_UM,
            },
        }


__all__ = ["DEFAULT_DETECTOR", "DISK_RADIUS_UM", "DetectorSegmenter"]
