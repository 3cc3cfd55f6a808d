"""Translator service: a CycleGAN generator applied to images of any size, alone or as the batch engine's step.

Conventions (those of the reference's training and test code, except the rounding):

* input ``uint8`` RGB is scaled to ``[-1, 1]`` as ``x / 127.5 - 1`` (= ``Normalize(0.5, 0.5)`` on ``x / 255``);
* the ``tanh`` output is mapped back with ``(y + 1) / 2 * 255`` and **rounded** to the nearest level (the
  reference's ``tensor2im`` truncates, which darkens every pixel by half a level on average);
* the output has exactly the input's size. An image that fits in one tile is run whole, reflect-padded at the
  bottom/right to a multiple of 4 (the generator's two stride-2 stages need it) and cropped back. Larger images
  are cut into overlapping tiles (``io.tiling.plan_image``) whose side is adapted to the image so that as few
  pixels as possible are computed twice, and blended back with raised-cosine ramps (no seams).
* pix2pix U-Net generators (``unet_256``) need sides that are multiples of 256: their tiles are multiples of 256
  (the largest not above ``--tile``, at least 256) and a smaller or odd-sized input is padded by the network
  itself (``pix2pix.pad_to_multiple``) and cropped back.
* batch-norm generators (pix2pix) run with ``norm_mode`` ``eval`` (stored running statistics) or ``per-input``
  (each network input's own statistics); see ``pix2pix.set_norm_mode``. Instance-norm CycleGAN generators have
  no batch norm: the option does not apply to them and changes nothing.

Many files go through the batch engine (``io.batch``: inputs, sharding, resume, run record, I/O threads);
this module supplies its step, :class:`TranslateStep`, which streams the tiles of consecutive images through
the network in batches of equal-size tiles (``io.tiling.TileBatcher``).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from histostain.errors import ConfigError, InputError
from histostain.io.batch import BatchItem, BatchPlan, BatchReport, BatchStep, Sink, plan_batch, run_batch
from histostain.io.defaults import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_IMAGE_FORMAT,
    DEFAULT_OVERLAP,
    DEFAULT_TILE,
    IMAGE_FORMATS,
)
from histostain.io.images import write_image
from histostain.io.inputs import OutputNames, outputs_with
from histostain.io.ome_writer import DEFAULT_COMPRESSION as DEFAULT_SLIDE_COMPRESSION
from histostain.io.ome_writer import check_compression
from histostain.io.sharding import shard_device
from histostain.io.tiling import (
    MIN_SIDE,
    Stitcher,
    TileBatcher,
    TilePlan,
    extract_region,
    plan_image,
    plan_tiles,
)
from histostain.provenance import Provenance
from histostain.runtime.checkpoint import LoadedWeights
from histostain.runtime.device import DeviceManager
from histostain.segmentation.chunks import DEFAULT_CHUNK as DEFAULT_SLIDE_CHUNK
from histostain.translation.compat import DIRECTIONS, load_generator
from histostain.translation.pix2pix import DEFAULT_NORM_MODE, batch_norm_layers, check_norm_mode, set_norm_mode

if TYPE_CHECKING:
    from histostain.io.slide_inputs import SlideInput
    from histostain.settings import Settings
    from histostain.weights.registry import ModelCard

log = logging.getLogger(__name__)

COMMAND = "translate"
CONVENTIONS = "input x/127.5-1; output (y+1)/2*255 rounded to nearest; same size as input"


def to_uint8(values: np.ndarray) -> np.ndarray:
    """Float pixel values on the 0..255 scale -> ``uint8``, rounded to nearest and clipped."""
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def _check_options(tile: int, overlap: int, batch_size: int) -> None:
    """The user's --tile, --overlap and --batch-size, each named with the value given when it cannot work."""
    if batch_size < 1:
        raise ConfigError(f"--batch-size {batch_size}: must be at least 1", hint=f"the default is {DEFAULT_BATCH_SIZE}")
    if tile < MIN_SIDE:
        raise ConfigError(
            f"--tile {tile}: must be at least {MIN_SIDE} pixels (it is rounded down to a multiple of 4)",
            hint=f"the default is {DEFAULT_TILE}",
        )
    if overlap < 0:
        raise ConfigError(f"--overlap {overlap}: must be 0 or more", hint=f"the default is {DEFAULT_OVERLAP}")
    try:
        plan_image(tile, tile, tile, overlap)  # the remaining rule: an overlap below half the tile
    except ConfigError as exc:
        raise ConfigError(f"--overlap {overlap} with --tile {tile}: {exc.message}", hint=exc.hint) from exc


def plan_for_multiple(height: int, width: int, tile: int, overlap: int, multiple: int) -> TilePlan:
    """:func:`plan_image` for a generator whose input sides must be multiples of ``multiple`` (U-Net: 256).

    An image whose 4-aligned size fits in ``tile`` runs whole (the network pads it to the multiple itself);
    larger images are cut into tiles whose side is the largest multiple of ``multiple`` not above ``tile``
    (``multiple`` itself when ``tile`` is smaller), so no tile is padded inside the network.
    """
    if multiple <= 4:
        return plan_image(height, width, tile, overlap)
    plan = plan_image(height, width, tile, overlap)  # validates the image and the options
    if plan.grid is None:
        return plan
    side = max(multiple, (tile // multiple) * multiple)
    if 2 * overlap + 4 > side:
        raise ConfigError(
            f"--overlap {overlap}: too large for this generator's {side}-pixel tiles (sides must be multiples of "
            f"{multiple})",
            hint=f"use --overlap {(side - 4) // 2} or less",
        )
    return TilePlan(height, width, (side, side), plan_tiles(height, width, side, overlap))


@dataclass
class _Job:
    """One image in flight: its tiles go through the network (possibly batched with other images' tiles)."""

    plan: TilePlan
    item: BatchItem | None = None
    pending: int = 0
    stitcher: Stitcher | None = None
    whole: np.ndarray | None = None

    def tiles(self, image: np.ndarray) -> Iterable[tuple[int, np.ndarray]]:
        plan = self.plan
        if plan.grid is None:
            yield 0, extract_region(image, 0, 0, plan.padded[0], plan.padded[1])
            return
        for index, (y, x) in enumerate(plan.grid.origins):
            yield index, extract_region(image, y, x, plan.grid.tile, plan.grid.tile)

    def accept(self, index: int, output: np.ndarray) -> None:
        if self.plan.grid is None:
            self.whole = output[: self.plan.height, : self.plan.width]
        else:
            if self.stitcher is None:
                self.stitcher = Stitcher(self.plan.grid, channels=output.shape[-1])
            self.stitcher.add(index, output)
        self.pending -= 1

    def result(self) -> np.ndarray:
        values = self.whole if self.stitcher is None else self.stitcher.result()
        assert values is not None
        return to_uint8(values)


class Translator:
    """Apply an image-to-image generator (``[-1, 1]`` in, ``tanh`` out) to uint8 RGB images of any size."""

    def __init__(
        self,
        model: nn.Module,
        device: DeviceManager | None = None,
        *,
        tile: int = DEFAULT_TILE,
        overlap: int = DEFAULT_OVERLAP,
        batch_size: int = DEFAULT_BATCH_SIZE,
        direction: str | None = None,
        source: LoadedWeights | None = None,
        norm_mode: str | None = None,
    ) -> None:
        """``norm_mode`` (batch-norm generators only, e.g. pix2pix; None: the mode the weights record, as
        `train pix2pix` does after measuring both, else ``eval``): ``eval`` normalises with the running
        statistics stored in the weights, as the reference ``test.py --eval``; ``per-input`` with the statistics
        of each network input (the whole image, or one tile), as the reference ``test.py`` without ``--eval``
        (train-mode batch norm at batch size 1). Dropout stays off in both, so outputs are deterministic: the
        reference without ``--eval`` also keeps dropout on, which makes every run and every overlapping tile
        differ, and a resumed or sharded run would mix samples. The model is switched in place. Generators
        without batch norm (CycleGAN's instance norm) ignore the option."""
        _check_options(tile, overlap, batch_size)
        recorded = source.config.get("norm_mode") if source is not None else None
        self.norm_mode = check_norm_mode(norm_mode or recorded or DEFAULT_NORM_MODE)
        self.batch_norms = batch_norm_layers(model)
        if self.batch_norms:
            set_norm_mode(model, self.norm_mode)
        # input sides the network needs multiples of: 256 for a unet_256 (read before any device wrapping)
        self.size_multiple = int(getattr(model, "size_multiple", 4))
        self.device = device if device is not None else DeviceManager.create()
        self.model = self.device.prepare_model(model).eval()
        self.tile, self.overlap, self.batch_size = tile, overlap, batch_size
        self.direction = direction
        self.source = source
        self.model_record: dict[str, Any] | None = None  # the registry card or run the weights came from
        # the input scale (um/px) the generator was trained at, when its weights or model card say; whole
        # slides are then read at that scale (None: at the slide's own level 0)
        self.mpp: float | None = None if source is None else source.mpp

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike[str],
        direction: str | None = None,
        device: DeviceManager | None = None,
        **options: Any,
    ) -> Translator:
        """Load a generator from any supported checkpoint format (see ``compat.py``)."""
        model, loaded = load_generator(path, direction)
        return cls(model, device, direction=loaded.direction, source=loaded, **options)

    def weights_record(self) -> dict[str, Any]:
        """What the weights were (the loader's record, with the registry model or run they came from); {} for a
        model built in memory."""
        if self.source is None:
            return {}
        return self.source.record(self.model_record, absolute=False)

    def plan(self, height: int, width: int) -> TilePlan:
        return plan_for_multiple(height, width, self.tile, self.overlap, self.size_multiple)

    def weights_sha256(self) -> str:
        """The weights file's SHA-256, or for a model built in memory one over its tensors (names, shapes, bytes)."""
        if self.source is not None and self.source.sha256:
            return self.source.sha256
        digest = hashlib.sha256()
        for name, tensor in sorted(self.model.state_dict().items()):
            digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
            digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        return digest.hexdigest()

    def forward_batch(self, tiles: np.ndarray) -> np.ndarray:
        """``N x H x W x 3`` uint8 -> ``N x H x W x 3`` float32 on the 0..255 scale (not yet rounded)."""
        with torch.inference_mode():
            tiles = np.ascontiguousarray(tiles)
            if not tiles.flags.writeable:  # torch warns on read-only arrays (decoded images can be)
                tiles = tiles.copy()
            batch = torch.from_numpy(tiles).permute(0, 3, 1, 2)
            batch = self.device.to_device(batch).float().div_(127.5).sub_(1.0)
            with self.device.autocast():
                output = self.model(batch)
            output = output.float().add_(1.0).mul_(127.5)
            return output.permute(0, 2, 3, 1).cpu().numpy()

    def _run(self, work: Iterable[tuple[_Job, np.ndarray]], on_done: Callable[[_Job], None]) -> None:
        """Feed the tiles of every job through the network in batches of equal-size tiles."""

        def deliver(job: _Job, index: int, output: np.ndarray) -> None:
            job.accept(index, output)
            if job.pending == 0:
                on_done(job)

        batcher: TileBatcher[_Job] = TileBatcher(self.forward_batch, self.batch_size, deliver)
        for job, image in work:
            job.pending = job.plan.tiles
            for index, tile in job.tiles(image):
                batcher.add(job, index, tile)
        batcher.flush()

    def translate(self, rgb: np.ndarray) -> np.ndarray:
        """Translate one ``H x W x 3`` uint8 RGB image; the result has the same size."""
        image = np.asarray(rgb)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise InputError(f"expected a uint8 H x W x 3 RGB image, got {image.dtype} array of shape {image.shape}")
        done: list[_Job] = []
        self._run([(_Job(self.plan(*image.shape[:2])), image)], done.append)
        return done[0].result()

    def translate_files(
        self,
        inputs: Sequence[str | os.PathLike[str]],
        out_dir: str | os.PathLike[str],
        *,
        recursive: bool = False,
        fmt: str = DEFAULT_IMAGE_FORMAT,
        overwrite: bool = False,
        num_parts: int | None = None,
        part_id: int | None = None,
        provenance: Provenance | None = None,
        workers: int = 2,
    ) -> TranslateReport:
        """Translate files, folders or globs into ``out_dir`` on the batch engine (record, resume, sharding)."""
        outputs = image_outputs(fmt)
        plan = plan_batch(
            inputs, out_dir, outputs, command=COMMAND, recursive=recursive, num_parts=num_parts, part_id=part_id
        )
        return self.run_plan(plan, fmt=fmt, overwrite=overwrite, provenance=provenance, workers=workers)

    def run_plan(
        self,
        plan: BatchPlan,
        *,
        fmt: str = DEFAULT_IMAGE_FORMAT,
        overwrite: bool = False,
        provenance: Provenance | None = None,
        workers: int = 2,
    ) -> TranslateReport:
        """Run a prepared batch plan (:func:`io.batch.plan_batch`) with this translator."""
        step = TranslateStep(self, fmt)
        lookahead = self.batch_size + 2  # decoded images waiting: enough to fill a batch, few enough for big images
        batch = run_batch(plan, step, overwrite=overwrite, provenance=provenance, workers=workers, lookahead=lookahead)
        return step.report(batch)


def image_outputs(fmt: str) -> OutputNames:
    """One image per input, ``<stem>.png`` or ``<stem>.tif``."""
    suffix = IMAGE_FORMATS.get(fmt.lower().lstrip("."))
    if suffix is None:
        raise ConfigError(f"unknown output format {fmt!r}", hint="use png or tif")
    return outputs_with(suffix)


class TranslateStep(BatchStep[np.ndarray, _Job]):
    """The batch engine's translate step: tiles of consecutive images batched, outputs written by workers."""

    def __init__(self, translator: Translator, fmt: str = DEFAULT_IMAGE_FORMAT) -> None:
        self.translator = translator
        self.format = IMAGE_FORMATS[fmt.lower().lstrip(".")].lstrip(".")
        self.megapixels = 0.0
        self.computed_megapixels = 0.0

    def settings(self) -> dict[str, Any]:
        t = self.translator
        settings: dict[str, Any] = {
            "weights_sha256": t.weights_sha256(),
            "direction": t.direction,
            "tile": t.tile,
            "overlap": t.overlap,
            "format": self.format,
        }
        if t.batch_norms:  # only where it changes the pixels: CycleGAN records stay as they were
            settings["norm_mode"] = t.norm_mode
        return settings

    def describe(self) -> dict[str, Any]:
        t = self.translator
        weights = None if t.source is None else t.source.record(t.model_record)
        return {
            "weights": weights,
            "details": {
                "device": t.device.plan.device,
                "precision": t.device.plan.precision,
                "batch_size": t.batch_size,
                "conventions": CONVENTIONS,
            },
        }

    def process(self, work: Iterable[tuple[BatchItem, np.ndarray]], sink: Sink[_Job]) -> None:
        def jobs() -> Iterable[tuple[_Job, np.ndarray]]:
            for item, image in work:
                try:
                    plan = self.translator.plan(*image.shape[:2])
                except InputError as error:
                    sink.failed(item, error)
                    continue
                yield _Job(plan, item), image

        def finished(job: _Job) -> None:
            assert job.item is not None
            self.megapixels += job.plan.height * job.plan.width / 1e6
            self.computed_megapixels += job.plan.computed_pixels / 1e6
            sink.done(job.item, job)

        self.translator._run(jobs(), finished)

    def write(self, item: BatchItem, result: _Job) -> None:
        write_image(item.targets[0], result.result())  # blending and rounding happen here, in a worker thread

    def report(self, batch: BatchReport) -> TranslateReport:
        return TranslateReport(
            inputs=batch.inputs,
            translated=batch.done,
            skipped=batch.skipped,
            failed=list(batch.failed),
            megapixels=self.megapixels,
            computed_megapixels=self.computed_megapixels,
            seconds=batch.seconds,
            out_dir=batch.out_dir,
            record=batch.record,
            shard=batch.shard.to_dict(),
            weights=self.translator.weights_record(),
        )

    def summary(self, report: BatchReport) -> dict[str, Any]:
        data = self.report(report).to_dict()
        return {k: v for k, v in data.items() if k not in ("weights", "record", "out_dir")}


@dataclass
class TranslateReport:
    """What a ``translate`` run did (also the body of the CLI summary, ``--json`` and the record's result)."""

    inputs: int = 0
    translated: int = 0
    skipped: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    megapixels: float = 0.0
    computed_megapixels: float = 0.0
    seconds: float = 0.0
    out_dir: str = ""
    record: str = ""
    shard: dict[str, Any] = field(default_factory=dict)
    weights: dict[str, Any] = field(default_factory=dict)
    # whole slides (translate_slide), one dict per slide: path, output, status, size, level, mpp, roi, chunks,
    # done, resumed, glass, seconds, megapixels_per_second, ... (they also count in the totals above)
    slides: list[dict[str, Any]] = field(default_factory=list)

    @property
    def images_per_second(self) -> float:
        return self.translated / self.seconds if self.seconds > 0 else 0.0

    @property
    def megapixels_per_second(self) -> float:
        return self.megapixels / self.seconds if self.seconds > 0 else 0.0

    @property
    def overlap_overhead(self) -> float:
        return self.computed_megapixels / self.megapixels - 1.0 if self.megapixels else 0.0

    def to_dict(self) -> dict[str, Any]:
        derived = ("images_per_second", "megapixels_per_second", "overlap_overhead")
        failed = [{"path": p, "error": e} for p, e in self.failed]
        return {**asdict(self), "failed": failed, **{name: getattr(self, name) for name in derived}}


def _card_direction(card: ModelCard | None, direction: str | None) -> str | None:
    """The direction to run: ``direction`` when the model card allows it (a one-line error otherwise), else the
    card's own when it has one."""
    if card is None:
        return direction
    from histostain.weights.importer import card_directions

    allowed = card_directions(card)
    wanted = direction.strip().lower().replace("-", "").replace("_", "") if direction else None
    if wanted is not None and wanted not in DIRECTIONS:
        raise ConfigError(f"unknown direction {direction!r}", hint="use ihc2he or he2ihc")
    if wanted is not None and allowed and wanted not in allowed:
        raise ConfigError(
            f"{card.name} translates {' and '.join(allowed)}, not {wanted}",
            hint=f"use --direction {allowed[0]}, or a model of the other direction",
        )
    return wanted or (allowed[0] if allowed else None)


def load_translator(
    weights: str | os.PathLike[str],
    direction: str | None,
    device: DeviceManager,
    *,
    settings: Settings | None = None,
    **options: Any,
) -> Translator:
    """The Translator ``weights`` names (a generator file, a ``train cyclegan`` run folder or a registry name),
    with the direction checked against the model card; ``options``: tile, overlap, batch_size, norm_mode."""
    from histostain.weights.resolve import resolve_weights

    resolved = resolve_weights(weights, task="translation", settings=settings)
    direction = _card_direction(resolved.card, direction)
    translator = Translator.from_checkpoint(resolved.path, direction, device, **options)
    translator.model_record = resolved.record() if resolved.card is not None else None
    if resolved.card is not None and resolved.card.mpp is not None:
        translator.mpp = float(resolved.card.mpp)
    return translator


def _slide_outputs(slide: SlideInput) -> tuple[Path, ...]:
    """A slide's ``<key>.ome.tif`` and its work folder, relative to ``--out``."""
    from histostain.translation.slide_translate import slide_output, work_folder

    target = slide_output(slide.source, Path(), slide.key)
    return target, work_folder(target)


def translate_paths(
    inputs: Sequence[str | os.PathLike[str]],
    weights: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    direction: str | None = None,
    settings: Settings | None = None,
    device: DeviceManager | None = None,
    tile: int = DEFAULT_TILE,
    overlap: int = DEFAULT_OVERLAP,
    batch_size: int = DEFAULT_BATCH_SIZE,
    fmt: str = DEFAULT_IMAGE_FORMAT,
    recursive: bool = False,
    overwrite: bool = False,
    num_parts: int | None = None,
    part_id: int | None = None,
    provenance: Provenance | None = None,
    roi: str | None = None,
    tissue_mask: str | os.PathLike[str] | None = "auto",
    chunk: int = DEFAULT_SLIDE_CHUNK,
    mpp: float | None = None,
    compression: str = DEFAULT_SLIDE_COMPRESSION,
    norm_mode: str | None = None,
) -> TranslateReport:
    """The ``translate`` command: check inputs and options, load the weights, run the batch engine.

    ``weights``: a generator file, a ``histostain train cyclegan`` run folder or a registry name (cached, or
    downloaded unless offline; ``settings`` gives the cache and the registry, default: the loaded settings).
    Everything a user can get wrong without the weights (inputs, output folder, shard, tile, format) is checked
    before the weights are loaded; each torchrun process moves to its own GPU (``io.sharding.shard_device``).

    Whole slides among the inputs (``io.slides.is_slide``) are translated one by one into tiled pyramidal
    OME-TIFFs (``slide_translate.translate_slide``; ``roi``, ``tissue_mask``, ``chunk``, ``mpp`` and
    ``compression`` apply to them only); every other input goes through the batch engine as before.
    ``norm_mode``: batch-norm (pix2pix) generators only, see :class:`Translator`.
    """
    from histostain.io.slide_inputs import prepare_inputs
    from histostain.io.slide_regions import parse_roi
    from histostain.segmentation.chunks import check_chunk
    from histostain.translation.slide_translate import check_slide, check_tissue_option, translate_slide

    _check_options(tile, overlap, batch_size)
    if norm_mode is not None:
        norm_mode = check_norm_mode(norm_mode)
    outputs = image_outputs(fmt)
    batch = prepare_inputs(
        inputs, out_dir, command=COMMAND, image_outputs=lambda: outputs, slide_outputs=_slide_outputs,
        recursive=recursive, num_parts=num_parts, part_id=part_id,
    )  # fmt: skip
    plan, slides, shard, out = batch.plan, batch.slides, batch.shard, batch.out_dir
    area = choice = None
    if batch.any_slides:  # the slide options are checked on every shard, whether its share holds slides or not
        area = parse_roi(roi)
        choice = check_tissue_option(tissue_mask)
        check_chunk(chunk)
        check_compression(compression)
        if mpp is not None and not 0 < mpp < float("inf"):
            raise ConfigError(f"--mpp {mpp}: must be a positive number of micrometres per pixel")
        for slide in slides:  # every slide opens, the ROI starts inside it, a mask fits it: else stop now
            check_slide(slide.source, mpp=mpp, roi=area, tissue=choice)
    manager = shard_device(device if device is not None else DeviceManager.create(), shard)
    translator = load_translator(
        weights,
        direction,
        manager,
        settings=settings,
        tile=tile,
        overlap=overlap,
        batch_size=batch_size,
        norm_mode=norm_mode,
    )
    assert translator.source is not None
    log.info("translating with the %s (%s)", translator.source.describe(), translator.direction or "?")
    if plan is not None and batch.runs_images:
        report = translator.run_plan(plan, fmt=fmt, overwrite=overwrite, provenance=provenance)
    else:
        report = TranslateReport(out_dir=str(out), shard=shard.to_dict(), weights=translator.weights_record())
    for slide in slides:
        report.inputs += 1
        try:
            result = translate_slide(
                slide.source,
                out,
                translator,
                mpp=mpp,
                roi=area,
                tissue=choice,
                chunk=chunk,
                overwrite=overwrite,
                compression=compression,
                key=slide.key,
            )
        except InputError as error:
            log.error("skipped %s", error.one_line())
            report.failed.append((str(slide.source), error.message))
            continue
        report.slides.append(result.to_dict())
        if result.status == "skipped":
            report.skipped += 1
        else:
            report.translated += 1
            report.megapixels += result.megapixels
            report.computed_megapixels += result.computed_megapixels
            report.seconds += result.seconds
    return report


__all__ = [
    "COMMAND",
    "load_translator",
    "plan_for_multiple",
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_OVERLAP",
    "DEFAULT_TILE",
    "TranslateReport",
    "TranslateStep",
    "Translator",
    "image_outputs",
    "to_uint8",
    "translate_paths",
]
