"""Segmenters behind one protocol, at the scale they were made for, on images of any size.

A segmenter turns one RGB image into :class:`~histostain.segmentation.nuclei.Nuclei`. Three exist:

* ``hovernet``: a HoVer-Net from any weights file ``load_hovernet`` reads; maps from
  :class:`~histostain.segmentation.inference.HoVerNetPredictor`, instances from the reference post-processing
  (``postprocess.instances_from_hovernet_maps``);
* ``classical``: weight-free colour deconvolution and watershed, with IHC positivity
  (``segmentation.classical``);
* ``detector``: a keypoint detector trained on IHC nuclei centres, nuclei as points
  (``segmentation.detector_segment``; default weights: the packaged ``detector-endonuke``).

Both run chunk by chunk on large images (``segmentation.chunks``). :func:`segment_at_scale` resamples an input
whose micrometres per pixel differ from the model's and maps the nuclei back to input pixels, so coordinates
are always those of the input image.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections import deque
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from histostain.errors import ConfigError
from histostain.segmentation.chunks import DEFAULT_CHUNK, DEFAULT_MARGIN, segment_in_chunks
from histostain.segmentation.nuclei import Nuclei

if TYPE_CHECKING:
    from concurrent.futures import Future

    from histostain.runtime.checkpoint import LoadedWeights
    from histostain.runtime.device import DeviceManager
    from histostain.segmentation.hovernet import HoVerNet
    from histostain.segmentation.postprocess_pool import PostprocessPool
    from histostain.settings import ResolvedSettings, Settings
    from histostain.weights.registry import ModelCard
    from histostain.weights.resolve import ResolvedWeights

log = logging.getLogger(__name__)

MODELS = ("classical", "detector", "hovernet")
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
    """HoVer-Net maps, the reference post-processing, chunk by chunk.

    Speed options (they never change the nuclei): ``compile`` (``auto`` | ``on`` | ``off``, see
    ``segmentation.inference``) and ``postprocess_workers``, the worker processes that post-process one image
    (or chunk) while the network computes the next (``None``: 0 on CPU, where the network already uses every
    core and post-processing is under 1 % of the time, else 2). The workers are used inside :meth:`overlapping`.

    ``card``: the registry's (or a training run's) model card. Its class names name the types in every output,
    its um/px is the scale inputs are resampled to, and its patch geometry is used; ``model_record`` (the
    card's name, licence and source) goes into the run record.
    """

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
        compile: str = "auto",
        postprocess_workers: int | None = None,
        card: ModelCard | None = None,
        model_record: dict[str, Any] | None = None,
    ) -> None:
        from histostain.segmentation.inference import HoVerNetPredictor

        self.predictor = HoVerNetPredictor(model, device, batch_size, compile=compile)
        self.weights = weights
        self.card = card
        self.model_record = model_record
        self.mpp = weights.mpp
        self.type_names = dict(weights.class_names) if weights.class_names else None
        if card is not None:
            self._apply_card(card)
        self.chunk, self.margin = int(chunk), int(margin)
        if postprocess_workers is not None and postprocess_workers < 0:
            raise ConfigError(f"--postprocess-workers {postprocess_workers}: must be 0 or more")
        if postprocess_workers is None:
            postprocess_workers = 0 if device.plan.kind == "cpu" else 2
        self.postprocess_workers = int(postprocess_workers)
        self._pool: PostprocessPool | None = None

    def _apply_card(self, card: ModelCard) -> None:
        """The card's class names, scale and patch geometry. A HoVer-Net patch's output is its input less a border
        fixed by the network's layers, so a card geometry with another border cannot be run: the network's own
        geometry is kept, with a warning (the file, which loaded into the card's architecture, is the truth)."""
        if card.type_names:
            self.type_names = dict(card.type_names)
        if card.mpp is not None:
            self.mpp = float(card.mpp)
        geometry = card.geometry
        patch_in, patch_out = geometry["patch_in"], geometry["patch_out"]
        predictor = self.predictor
        if patch_in is None or patch_out is None or (patch_in, patch_out) == (predictor.patch_in, predictor.patch_out):
            return
        if patch_in - patch_out != predictor.patch_in - predictor.patch_out:
            log.warning(
                "model %s: its card's patch %d -> %d does not fit this network (%d -> %d); using the network's",
                card.name, patch_in, patch_out, predictor.patch_in, predictor.patch_out,
            )  # fmt: skip
            return
        predictor.patch_in, predictor.patch_out = int(patch_in), int(patch_out)
        predictor.margin = (predictor.patch_in - predictor.patch_out) // 2

    @classmethod
    def load(
        cls, path: str | os.PathLike[str], device: DeviceManager, card: ModelCard | None = None, **options: Any
    ) -> HoVerNetSegmenter:
        """From a weights file in any container ``load_hovernet`` reads; with a model card, the file must hold
        the card's network (mode and number of types), and the card's names, scale and geometry are used."""
        from histostain.segmentation.compat import load_hovernet

        args = card.arch_args if card is not None else {}
        model, weights = load_hovernet(path, mode=args.get("mode"), num_types=args.get("num_types"))
        return cls(model, weights, device, card=card, **options)

    @classmethod
    def resolve(
        cls,
        spec: str | os.PathLike[str],
        device: DeviceManager,
        settings: Settings | ResolvedSettings | None = None,
        **options: Any,
    ) -> HoVerNetSegmenter:
        """From what ``--weights`` names: a file, a ``train hovernet`` run folder or a registry model
        (``histostain.weights.resolve``)."""
        from histostain.weights.resolve import resolve_weights

        resolved: ResolvedWeights = resolve_weights(spec, task="segmentation", settings=settings)
        if resolved.card is not None and resolved.card.arch != "hovernet":
            raise ConfigError(
                f"{resolved.card.name} is a {resolved.card.arch} model, not HoVer-Net weights",
                hint=f"use --model {resolved.card.arch}",
            )
        record = resolved.record() if resolved.card is not None else None
        return cls.load(resolved.path, device, card=resolved.card, model_record=record, **options)

    @property
    def licence(self) -> str | None:
        """The model's licence when its card gives one (PanNuke-derived weights are non-commercial)."""
        return None if self.card is None else self.card.stated_licence

    # ------------------------------------------------------------------------------------------- planning
    def expect(self, height: int, width: int, input_mpp: float | None = None) -> None:
        """Announce an image to come (``compile="auto"`` decides from the whole run's patches)."""
        if input_mpp is not None and self.mpp is not None and abs(input_mpp / self.mpp - 1.0) > SCALE_TOLERANCE:
            height, width = round(height * input_mpp / self.mpp), round(width * input_mpp / self.mpp)
        if height <= self.chunk and width <= self.chunk:
            patches = self.predictor.patches_for(height, width)
        else:
            from histostain.segmentation.chunks import plan_chunks

            parts = plan_chunks(height, width, self.chunk, self.margin)
            patches = sum(self.predictor.patches_for(p.ey1 - p.ey0, p.ex1 - p.ex0) for p in parts)
        self.predictor.expect(patches)

    @contextlib.contextmanager
    def overlapping(self) -> Iterator[PostprocessPool | None]:
        """Within the block, post-processing runs in ``postprocess_workers`` processes (yields the pool, or None
        without workers): :meth:`start` overlaps an image's post-processing with the next image's network, and
        :meth:`segment` a chunk's with the next chunk's."""
        if not self.postprocess_workers:
            yield None
            return
        from histostain.segmentation.postprocess_pool import PostprocessPool

        with PostprocessPool(self.postprocess_workers) as pool:
            self._pool = pool
            try:
                yield pool
            finally:
                self._pool = None

    # ------------------------------------------------------------------------------------------- segmenting
    def segment_region(self, rgb: np.ndarray) -> Nuclei:
        """One region whole, with no chunking (for callers that cut their own chunks: slides)."""
        from histostain.segmentation.postprocess import instances_from_hovernet_maps

        maps = self.predictor.maps(rgb)
        return instances_from_hovernet_maps(
            maps.np_prob, maps.hv, maps.tp_prob, type_names=self.type_names, mpp=self.mpp
        )

    def _submit(self, pool: PostprocessPool, rgb: np.ndarray) -> Future[Nuclei]:
        maps = self.predictor.maps(rgb)
        return pool.submit(maps.np_prob, maps.hv, maps.tp_prob, type_names=self.type_names, mpp=self.mpp)

    def segment(self, rgb: np.ndarray) -> Nuclei:
        height, width = rgb.shape[:2]
        pool = self._pool
        if pool is None or (height <= self.chunk and width <= self.chunk):
            region = self.segment_region
        else:
            # the chunks come in plan_chunks' order: infer chunk k + 1 while a worker post-processes chunk k
            from histostain.segmentation.chunks import plan_chunks

            parts = iter(plan_chunks(height, width, self.chunk, self.margin))
            futures: deque[tuple[tuple[int, ...], Future[Nuclei]]] = deque()

            def submit_next() -> None:
                part = next(parts, None)
                if part is not None:
                    crop = rgb[part.ey0 : part.ey1, part.ex0 : part.ex1]
                    futures.append((crop.shape, self._submit(pool, crop)))

            submit_next()

            def region(crop: np.ndarray) -> Nuclei:
                submit_next()
                shape, future = futures.popleft()
                if shape != crop.shape:  # pragma: no cover - segment_in_chunks walks plan_chunks in order
                    raise RuntimeError("chunk order differs from plan_chunks")
                return future.result()

        return segment_in_chunks(
            region, rgb, chunk=self.chunk, margin=self.margin, type_names=self.type_names, mpp=self.mpp
        )

    def start(self, rgb: np.ndarray, input_mpp: float | None) -> Callable[[], Nuclei]:
        """Begin segmenting one image and return what finishes it: with workers (inside :meth:`overlapping`) an
        image that fits one chunk at the model's scale is handed to a worker after its network pass, so the
        caller can run the next image's network before asking for these nuclei; otherwise it is done now."""
        pool = self._pool
        at_scale = input_mpp is None or self.mpp is None or abs(input_mpp / self.mpp - 1.0) <= SCALE_TOLERANCE
        height, width = rgb.shape[:2]
        if pool is None or not at_scale or height > self.chunk or width > self.chunk:
            nuclei = segment_at_scale(self, rgb, input_mpp)
            return lambda: nuclei
        future = self._submit(pool, rgb)

        def finish() -> Nuclei:
            nuclei = future.result()
            if nuclei.mpp is None and input_mpp is not None:
                nuclei.mpp = input_mpp
            return nuclei

        return finish

    def settings(self) -> dict[str, Any]:
        return {"model": self.kind, "weights_sha256": self.weights.sha256, "chunk": self.chunk, "margin": self.margin}

    def describe(self) -> dict[str, Any]:
        device = self.predictor.device
        return {
            "weights": self.weights.record(self.model_record),
            "details": {
                "device": device.plan.device,
                "precision": device.plan.precision,
                "batch_size": self.predictor.batch_size,
                "compile": self.predictor.compile,
                "postprocess_workers": self.postprocess_workers,
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
    chunk: int | None = None,
    positivity: tuple[float, float, float] | None = None,
    compile: str = "auto",
    postprocess_workers: int | None = None,
    dab: str = "nuclear",
    settings: Settings | ResolvedSettings | None = None,
) -> Segmenter:
    """The segmenter a command asked for; ``classical`` needs no weights, ``hovernet`` does (a file, a run
    folder or a registry name; ``settings`` gives the registry and the weights cache), ``detector`` uses the
    packaged ``detector-endonuke`` unless given others. ``chunk`` None: each model's own chunk side."""
    chunk_side = chunk if chunk is not None else DEFAULT_CHUNK
    kind = model.strip().lower()
    if kind not in MODELS:
        raise ConfigError(f"--model {model}: unknown model", hint=f"use one of {', '.join(MODELS)}")
    if kind == "detector":
        from histostain.segmentation.detector_segment import DetectorSegmenter

        sizes = {"chunk": chunk} if chunk is not None else {}  # else its own (DETECTOR_CHUNK)
        return DetectorSegmenter.resolve(weights, device, settings, stain=stain, thresholds=positivity, **sizes)
    if kind == "hovernet":
        if weights is None:
            raise ConfigError(
                "--model hovernet needs --weights FILE|RUN|NAME",
                hint="e.g. --weights hovernet_fast-pannuke (see `histostain weights list`), or --model classical",
            )
        return HoVerNetSegmenter.resolve(
            weights,
            device,
            settings,
            batch_size=batch_size,
            chunk=chunk_side,
            compile=compile,
            postprocess_workers=postprocess_workers,
        )
    if weights is not None:
        raise ConfigError("--weights is for --model hovernet|detector; the classical model uses no weights")
    options: dict[str, Any] = {"dab": dab}
    if positivity is not None:
        options["thresholds"] = tuple(positivity)
    return ClassicalSegmenterAdapter(stain=stain, mpp=mpp if mpp is not None else 0.5, chunk=chunk_side, **options)


def segment_at_scale(segmenter: Segmenter, rgb: np.ndarray, input_mpp: float | None) -> Nuclei:
    """Segment ``rgb`` at the segmenter's scale and return nuclei in ``rgb``'s pixels.

    When the input's um/px (``input_mpp``) and the model's differ by more than 5 %, the image is resampled
    (anti-aliased) to the model's scale, segmented, and the label maps are mapped back to the input's size
    (nearest neighbour), from which every nucleus row is computed again; a detector's points are mapped back
    directly (:func:`~histostain.segmentation.points.rescale_points`). Without either scale the input is used
    as it is.
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
    if found.point_radius is not None:  # a detector's points map back exactly, with every column
        from histostain.segmentation.points import rescale_points

        return rescale_points(found, (height, width), input_mpp)
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
