"""Segmenters behind one protocol, at the scale they were made for, on images of any size.

A segmenter turns one RGB image into :class:`~histostain.segmentation.nuclei.Nuclei`. Two exist:

* ``hovernet``: a HoVer-Net from any weights file ``load_hovernet`` reads; maps from
  :class:`~histostain.segmentation.inference.HoVerNetPredictor`, instances from the reference post-processing
  (``postprocess.instances_from_hovernet_maps``);
* ``classical``: weight-free colour deconvolution and watershed, with IHC positivity
  (``segmentation.classical``).

Both run chunk by chunk on large images (``segmentation.chunks``). :func:`segment_at_scale` resamples an input
whose micrometres per pixel differ from the model's and maps the nuclei back to input pixels, so coordinates
are always those of the input image.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from histostain.errors import ConfigError
from histostain.segmentation.chunks import DEFAULT_CHUNK, DEFAULT_MARGIN, segment_in_chunks
from histostain.segmentation.nuclei import Nuclei

if TYPE_CHECKING:
    from histostain.runtime.checkpoint import LoadedWeights
    from histostain.runtime.device import DeviceManager
    from histostain.segmentation.hovernet import HoVerNet

log = logging.getLogger(__name__)

MODELS = ("classical", "hovernet")
SCALE_TOLERANCE = 0.05  # inputs within 5 % of the model's um/px are used as they are


class Segmenter(Protocol):
    """What every segmenter offers the segment command."""

    kind: str
    mpp: float | None  # the input scale it expects (None: any)

    def segment(self, rgb: np.ndarray) -> Nuclei:
        """Nuclei of one ``H x W x 3`` uint8 RGB image, in its pixels."""
        ...

    def settings(self) -> dict[str, Any]:
        """What decides the output (weights digest, thresholds...): recorded and compared on re-runs."""
        ...

    def describe(self) -> dict[str, Any]:
        """What else the run record should say (the weights record, device, batch size)."""
        ...


class HoVerNetSegmenter:
    """HoVer-Net maps, the reference post-processing, chunk by chunk."""

    kind = "hovernet"

    def __init__(
        self,
        model: HoVerNet,
        weights: LoadedWeights,
        device: DeviceManager,
        *,
        batch_size: int = 8,
        chunk: int = DEFAULT_CHUNK,
        margin: int = DEFAULT_MARGIN,
    ) -> None:
        from histostain.segmentation.inference import HoVerNetPredictor

        self.predictor = HoVerNetPredictor(model, device, batch_size)
        self.weights = weights
        self.mpp = weights.mpp
        self.type_names = dict(weights.class_names) if weights.class_names else None
        self.chunk, self.margin = int(chunk), int(margin)

    @classmethod
    def load(cls, path: str | os.PathLike[str], device: DeviceManager, **options: Any) -> HoVerNetSegmenter:
        """From a weights file in any container ``load_hovernet`` reads."""
        from histostain.segmentation.compat import load_hovernet

        model, weights = load_hovernet(path)
        return cls(model, weights, device, **options)

    def _region(self, rgb: np.ndarray) -> Nuclei:
        from histostain.segmentation.postprocess import instances_from_hovernet_maps

        maps = self.predictor.maps(rgb)
        return instances_from_hovernet_maps(
            maps.np_prob, maps.hv, maps.tp_prob, type_names=self.type_names, mpp=self.mpp
        )

    def segment(self, rgb: np.ndarray) -> Nuclei:
        return segment_in_chunks(
            self._region, rgb, chunk=self.chunk, margin=self.margin, type_names=self.type_names, mpp=self.mpp
        )

    def settings(self) -> dict[str, Any]:
        return {"model": self.kind, "weights_sha256": self.weights.sha256, "chunk": self.chunk, "margin": self.margin}

    def describe(self) -> dict[str, Any]:
        weights = self.weights.to_dict()
        weights["path"] = str(Path(weights["path"]).resolve())
        device = self.predictor.device
        return {
            "weights": weights,
            "details": {
                "device": device.plan.device,
                "precision": device.plan.precision,
                "batch_size": self.predictor.batch_size,
                "geometry": {"patch_in": self.predictor.patch_in, "patch_out": self.predictor.patch_out},
            },
        }


class ClassicalSegmenterAdapter:
    """The weight-free segmenter (``segmentation.classical``), chunk by chunk like every other."""

    kind = "classical"

    def __init__(self, stain: str = "auto", mpp: float = 0.5, *, chunk: int = DEFAULT_CHUNK, **options: Any) -> None:
        from histostain.segmentation.classical import ClassicalSegmenter

        self.inner = ClassicalSegmenter(stain=stain, mpp=mpp, **options)
        self.mpp = None  # it works at the input's own scale (its size limits are in um^2, from mpp)
        self.input_mpp = float(mpp)
        self.chunk = int(chunk)

    def segment(self, rgb: np.ndarray) -> Nuclei:
        nuclei = segment_in_chunks(self.inner.segment, rgb, chunk=self.chunk, mpp=self.input_mpp)
        return nuclei

    def settings(self) -> dict[str, Any]:
        return {"model": self.kind, "chunk": self.chunk, **self.inner.describe()}

    def describe(self) -> dict[str, Any]:
        return {"weights": None, "details": {"model": "classical (no weights)"}}


def build_segmenter(
    model: str,
    *,
    weights: str | os.PathLike[str] | None,
    device: DeviceManager,
    stain: str = "auto",
    mpp: float | None = None,
    batch_size: int = 8,
    chunk: int = DEFAULT_CHUNK,
    positivity: tuple[float, float, float] | None = None,
) -> Segmenter:
    """The segmenter a command asked for; ``classical`` needs no weights, ``hovernet`` does."""
    kind = model.strip().lower()
    if kind not in MODELS:
        raise ConfigError(f"--model {model}: unknown model", hint=f"use one of {', '.join(MODELS)}")
    if kind == "hovernet":
        if weights is None:
            raise ConfigError("--model hovernet needs --weights FILE", hint="or use --model classical (no weights)")
        return HoVerNetSegmenter.load(weights, device, batch_size=batch_size, chunk=chunk)
    if weights is not None:
        raise ConfigError("--weights is for --model hovernet; the classical model uses no weights")
    options: dict[str, Any] = {}
    if positivity is not None:
        options["thresholds"] = tuple(positivity)
    return ClassicalSegmenterAdapter(stain=stain, mpp=mpp if mpp is not None else 0.5, chunk=chunk, **options)


def segment_at_scale(segmenter: Segmenter, rgb: np.ndarray, input_mpp: float | None) -> Nuclei:
    """Segment ``rgb`` at the segmenter's scale and return nuclei in ``rgb``'s pixels.

    When the input's um/px (``input_mpp``) and the model's differ by more than 5 %, the image is resampled
    (anti-aliased) to the model's scale, segmented, and the label maps are mapped back to the input's size
    (nearest neighbour), from which every nucleus row is computed again. Without either scale the input is
    used as it is.
    """
    model_mpp = segmenter.mpp
    if input_mpp is None or model_mpp is None or abs(input_mpp / model_mpp - 1.0) <= SCALE_TOLERANCE:
        nuclei = segmenter.segment(rgb)
        if nuclei.mpp is None and input_mpp is not None:
            nuclei.mpp = input_mpp
        return nuclei
    from skimage.transform import resize

    from histostain.segmentation.postprocess import nuclei_from_labels, source_ids

    height, width = rgb.shape[:2]
    factor = input_mpp / model_mpp
    size = (max(1, round(height * factor)), max(1, round(width * factor)))
    scaled = resize(rgb, size, order=1, anti_aliasing=factor < 1, preserve_range=True)
    found = segmenter.segment(np.clip(np.rint(scaled), 0, 255).astype(np.uint8))
    inst = resize(found.inst_map, (height, width), order=0, preserve_range=True, anti_aliasing=False).astype(np.int32)
    types = None
    if found.type_map is not None:
        types = resize(found.type_map, (height, width), order=0, preserve_range=True, anti_aliasing=False)
        types = types.astype(np.uint8)
    nuclei = nuclei_from_labels(inst, types, type_names=found.type_names, mpp=input_mpp)
    if found.measurements:
        # rows are renumbered (a nucleus may vanish in the resampling): carry columns over by the found ids
        rows = {int(v): i for i, v in enumerate(found.ids.tolist())}
        origin = source_ids(inst, nuclei).tolist()
        for name, column in found.measurements.items():
            nuclei.measurements[name] = np.array([column[rows[v]] if v in rows else np.nan for v in origin])
    log.debug("segmented at %.3f um/px (input %.3f): %d nuclei", model_mpp, input_mpp, len(nuclei))
    return nuclei


__all__ = [
    "MODELS",
    "ClassicalSegmenterAdapter",
    "HoVerNetSegmenter",
    "Segmenter",
    "build_segmenter",
    "segment_at_scale",
]
