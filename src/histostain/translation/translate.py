"""Translator service: a CycleGAN generator applied to images of any size, one at a time or to many files.

Conventions (those of the reference's training and test code, except the rounding):

* input ``uint8`` RGB is scaled to ``[-1, 1]`` as ``x / 127.5 - 1`` (= ``Normalize(0.5, 0.5)`` on ``x / 255``);
* the ``tanh`` output is mapped back with ``(y + 1) / 2 * 255`` and **rounded** to the nearest level (the
  reference's ``tensor2im`` truncates, which darkens every pixel by half a level on average);
* the output has exactly the input's size. An image that fits in one tile is run whole, reflect-padded at the
  bottom/right to a multiple of 4 (the generator's two stride-2 stages need it) and cropped back. Larger images
  are cut into overlapping tiles (``io.tiling``) whose side is adapted to the image so that as few pixels as
  possible are computed twice, with at most ``tile`` pixels and at least ``overlap`` pixels shared by
  neighbours, and blended back with raised-cosine ramps (no seams).

``translate_files`` overlaps work: a small thread pool decodes the next images and encodes/writes finished ones
while the network runs; tiles of the same size (from one image or from consecutive images) are batched.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from histostain.errors import ConfigError, InputError
from histostain.io.atomic import atomic_write_text
from histostain.io.images import IMAGE_EXTENSIONS, list_images, read_image, write_image
from histostain.io.tiling import Stitcher, TileGrid, extract_region, plan_tiles
from histostain.runtime.checkpoint import LoadedWeights
from histostain.runtime.device import DeviceManager
from histostain.runtime.progress import progress_task
from histostain.translation.compat import load_generator

log = logging.getLogger(__name__)

DEFAULT_TILE = 512
DEFAULT_OVERLAP = 64
DEFAULT_BATCH_SIZE = 4
MIN_SIDE = 16  # smallest network input: the residual blocks reflect-pad a H/4 x W/4 map by 1
OUTPUT_FORMATS = {"png": ".png", "tif": ".tif", "tiff": ".tif"}
RECORD_NAME = "translate.json"
_GLOB_CHARS = set("*?[")


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def to_uint8(values: np.ndarray) -> np.ndarray:
    """Float pixel values on the 0..255 scale -> ``uint8``, rounded to nearest and clipped."""
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------- tile plans


@dataclass(frozen=True)
class TilePlan:
    """How one image is run: whole (``grid is None``, padded to ``padded``) or as a tile grid."""

    height: int
    width: int
    padded: tuple[int, int]  # network input size of the whole-image pass (or the tile size)
    grid: TileGrid | None

    @property
    def tiles(self) -> int:
        return 1 if self.grid is None else len(self.grid)

    @property
    def computed_pixels(self) -> int:
        """Pixels the network computes for this image (tiles x tile area)."""
        return self.tiles * self.padded[0] * self.padded[1]

    @property
    def overhead(self) -> float:
        """Extra computed pixels per output pixel (0.0 = none recomputed)."""
        return self.computed_pixels / (self.height * self.width) - 1.0


def _count(size: int, side: int, overlap: int) -> int:
    """Tiles along one axis (the rule of ``io.tiling.plan_tiles``)."""
    return 1 if size <= side else 1 + -(-(size - side) // (side - overlap))


def plan_image(height: int, width: int, tile: int = DEFAULT_TILE, overlap: int = DEFAULT_OVERLAP) -> TilePlan:
    """Choose the whole-image pass or the tile side (multiple of 4, <= ``tile``) computing the fewest pixels."""
    if height < 1 or width < 1:
        raise InputError(f"cannot translate an empty image of size {height} x {width}")
    tile = (tile // 4) * 4
    if tile < MIN_SIDE:
        raise ConfigError(f"tile must be at least {MIN_SIDE} pixels, got {tile}")
    if not 0 <= overlap < tile // 2:
        raise ConfigError(
            f"overlap {overlap} must be >= 0 and less than half the tile ({tile})", hint="the default is 64 of 512"
        )
    ph, pw = max(_round_up(height, 4), MIN_SIDE), max(_round_up(width, 4), MIN_SIDE)
    if ph <= tile and pw <= tile:
        return TilePlan(height, width, (ph, pw), None)
    best: tuple[int, int] | None = None  # (computed pixels, -side)
    lowest = max(MIN_SIDE, _round_up(2 * overlap + 4, 4), _round_up(tile // 2, 4))
    for side in range(tile, lowest - 1, -4):
        cost = (_count(height, side, overlap) * _count(width, side, overlap) * side * side, -side)
        if best is None or cost < best:
            best = cost
    assert best is not None
    side = -best[1]
    return TilePlan(height, width, (side, side), plan_tiles(height, width, side, overlap))


@dataclass
class _Job:
    """One image in flight: its tiles go through the network (possibly batched with other images' tiles)."""

    plan: TilePlan
    source: Path | None = None
    target: Path | None = None
    pending: int = 0
    stitcher: Stitcher | None = None
    whole: np.ndarray | None = None

    def tiles(self, image: np.ndarray) -> Iterable[tuple[int, np.ndarray]]:
        plan = self.plan
        if plan.grid is None:
            yield 0, extract_region(image, 0, 0, plan.padded[0], plan.padded[1])
            return
        grid = plan.grid
        for index, (y, x) in enumerate(grid.origins):
            yield index, extract_region(image, y, x, grid.tile, grid.tile)

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


# ---------------------------------------------------------------------------------------------- translator


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
    ) -> None:
        if batch_size < 1:
            raise ConfigError(f"batch size must be at least 1, got {batch_size}")
        plan_image(tile, tile, tile, overlap)  # validates tile / overlap early
        self.device = device if device is not None else DeviceManager.create()
        self.model = self.device.prepare_model(model).eval()
        self.tile, self.overlap, self.batch_size = tile, overlap, batch_size
        self.direction = direction
        self.source = source

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

    def plan(self, height: int, width: int) -> TilePlan:
        return plan_image(height, width, self.tile, self.overlap)

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

    def _run(
        self,
        work: Iterable[tuple[_Job, np.ndarray | None]],
        on_done: Callable[[_Job], None],
    ) -> None:
        """Feed the tiles of every job through the network in batches of equal-size tiles."""
        pending: list[tuple[_Job, int, np.ndarray]] = []

        def flush() -> None:
            if not pending:
                return
            outputs = self.forward_batch(np.stack([tile for _, _, tile in pending]))
            for (job, index, _), output in zip(pending, outputs, strict=True):
                job.accept(index, output)
                if job.pending == 0:
                    on_done(job)
            pending.clear()

        for job, image in work:
            if image is None:
                continue
            job.pending = job.plan.tiles
            for index, tile in job.tiles(image):
                if pending and pending[0][2].shape != tile.shape:
                    flush()
                pending.append((job, index, tile))
                if len(pending) >= self.batch_size:
                    flush()
        flush()

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
        inputs: Sequence[InputItem] | Sequence[str | os.PathLike[str]],
        out_dir: str | os.PathLike[str] | None = None,
        *,
        recursive: bool = False,
        fmt: str = "png",
        overwrite: bool = False,
        num_parts: int = 1,
        part_id: int = 0,
        workers: int = 2,
    ) -> TranslateReport:
        """Translate files, folders or globs into ``out_dir`` (or prepared :class:`InputItem` pairs).

        Existing outputs are skipped unless ``overwrite``. Unreadable inputs are skipped and reported
        (``report.failed``); everything else is still written. ``translate.json`` is written by
        :func:`translate_paths`, not here.
        """
        if all(isinstance(item, InputItem) for item in inputs):
            items = list(inputs)
        elif out_dir is None:
            raise ConfigError("translate_files needs out_dir when given paths")
        else:
            items = collect_inputs(inputs, out_dir, recursive=recursive, fmt=fmt, num_parts=num_parts, part_id=part_id)
        report = TranslateReport(inputs=len(items), out_dir=str(out_dir or ""))
        todo = []
        for item in items:
            if item.target.exists() and not overwrite:
                report.skipped += 1
            else:
                todo.append(item)
        start = time.perf_counter()
        lookahead = self.batch_size + 2  # decoded images waiting: bounded so huge images do not pile up
        with (
            ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="translate-io") as pool,
            progress_task("translate", total=len(todo), unit="img") as task,
        ):
            writes: list[Future[None]] = []

            def finish(job: _Job) -> None:
                assert job.target is not None
                report.translated += 1
                report.megapixels += job.plan.height * job.plan.width / 1e6
                report.computed_megapixels += job.plan.computed_pixels / 1e6
                writes.append(pool.submit(_write, job))
                task.advance(status=job.target.name)

            def work() -> Iterable[tuple[_Job, np.ndarray | None]]:
                reads: list[tuple[InputItem, Future[np.ndarray]]] = []
                queue = iter(todo)
                for item in queue:
                    reads.append((item, pool.submit(read_image, item.source)))
                    if len(reads) >= lookahead:
                        break
                while reads:
                    item, future = reads.pop(0)
                    nxt = next(queue, None)
                    if nxt is not None:
                        reads.append((nxt, pool.submit(read_image, nxt.source)))
                    try:
                        image = future.result()
                    except InputError as error:
                        log.error("skipped %s", error.one_line())
                        report.failed.append((str(item.source), error.message))
                        task.advance(status=f"failed: {item.source.name}")
                        continue
                    yield _Job(self.plan(*image.shape[:2]), item.source, item.target), image

            self._run(work(), finish)
            for future in writes:
                future.result()
        report.seconds = time.perf_counter() - start
        return report


def _write(job: _Job) -> None:
    assert job.target is not None
    job.target.parent.mkdir(parents=True, exist_ok=True)
    write_image(job.target, job.result())


# ---------------------------------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class InputItem:
    """One image to translate and where its output goes."""

    source: Path
    target: Path


def _expand(spec: str | os.PathLike[str], recursive: bool) -> list[tuple[Path, Path]]:
    """(file, path relative to the output folder without suffix) for one file, folder or glob."""
    path = Path(spec)
    if not path.exists() and _GLOB_CHARS & set(str(spec)):
        matches = sorted(Path(m) for m in glob.glob(str(spec), recursive=True))
        files = [m for m in matches if m.is_file() and m.suffix.lower() in IMAGE_EXTENSIONS]
        if not files:
            raise InputError(
                f"no images match {spec}", hint="check the pattern; quote it to stop the shell expanding it"
            )
        return [(f, Path(f.stem)) for f in files]
    files = list_images(path, recursive=recursive)
    if path.is_file():
        return [(path, Path(path.stem))]
    return [(f, f.relative_to(path).parent / f.stem) for f in files]


def collect_inputs(
    inputs: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    *,
    recursive: bool = False,
    fmt: str = "png",
    num_parts: int = 1,
    part_id: int = 0,
) -> list[InputItem]:
    """Expand files, folders and globs into (input, output) pairs, sorted, and keep this shard's share.

    Output names keep the input stem (and the sub-folders of recursive folder inputs). Two inputs that would
    write the same output are an error. Sharding takes every ``num_parts``-th item starting at ``part_id`` of
    the sorted list, so the parts are disjoint and cover everything on every machine.
    """
    suffix = OUTPUT_FORMATS.get(fmt.lower().lstrip("."))
    if suffix is None:
        raise ConfigError(f"unknown output format {fmt!r}", hint="use png or tif")
    if num_parts < 1 or not 0 <= part_id < num_parts:
        raise ConfigError(f"invalid shard: part {part_id} of {num_parts}", hint="use 0 <= --part-id < --num-parts")
    if not inputs:
        raise InputError("no inputs given", hint="pass image files, folders or glob patterns")
    out = Path(out_dir)
    by_target: dict[Path, Path] = {}
    for spec in inputs:
        for source, relative in _expand(spec, recursive):
            target = out / relative.parent / (relative.name + suffix)
            previous = by_target.get(target)
            if previous is not None and previous.resolve() != source.resolve():
                raise InputError(
                    f"{previous} and {source} would both be written to {target}",
                    hint="translate them into different --out folders, or rename one",
                )
            by_target[target] = source
    items = sorted((InputItem(s, t) for t, s in by_target.items()), key=lambda i: i.target.as_posix())
    return items[part_id::num_parts]


# ---------------------------------------------------------------------------------------------------- report


@dataclass
class TranslateReport:
    """What a ``translate`` run did (also the body of the CLI summary and ``--json``)."""

    inputs: int = 0
    translated: int = 0
    skipped: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    megapixels: float = 0.0
    computed_megapixels: float = 0.0
    seconds: float = 0.0
    out_dir: str = ""
    record: str = ""
    weights: dict[str, Any] = field(default_factory=dict)

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
        data = asdict(self)
        data["failed"] = [{"path": p, "error": e} for p, e in self.failed]
        data.update(
            images_per_second=self.images_per_second,
            megapixels_per_second=self.megapixels_per_second,
            overlap_overhead=self.overlap_overhead,
        )
        return data


def _record_name(num_parts: int, part_id: int) -> str:
    return RECORD_NAME if num_parts == 1 else f"translate.part-{part_id}-of-{num_parts}.json"


def _check_previous(out: Path, record: dict[str, Any], overwrite: bool) -> None:
    """Refuse to resume into a folder whose outputs came from other weights or settings."""
    if overwrite:
        return
    for previous_file in sorted(out.glob("translate*.json")):
        try:
            previous = json.loads(previous_file.read_text())
        except (OSError, ValueError):
            continue
        keys = ("weights_sha256", "direction", "tile", "overlap")
        old = {k: previous.get(k) for k in keys}
        new = {k: record.get(k) for k in keys}
        if old != new:
            changed = ", ".join(k for k in keys if old[k] != new[k])
            raise ConfigError(
                f"{out} holds outputs of an earlier run with different {changed} ({previous_file.name})",
                hint="use --overwrite to replace them, or another --out folder",
            )


def translate_paths(
    inputs: Sequence[str | os.PathLike[str]],
    weights: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    direction: str | None = None,
    device: DeviceManager | None = None,
    tile: int = DEFAULT_TILE,
    overlap: int = DEFAULT_OVERLAP,
    batch_size: int = DEFAULT_BATCH_SIZE,
    fmt: str = "png",
    recursive: bool = False,
    overwrite: bool = False,
    num_parts: int = 1,
    part_id: int = 0,
    command: Sequence[str] | None = None,
) -> TranslateReport:
    """The ``translate`` command: collect inputs, load weights, translate, and record ``translate.json``."""
    from histostain import __version__

    out = Path(out_dir)
    items = collect_inputs(inputs, out, recursive=recursive, fmt=fmt, num_parts=num_parts, part_id=part_id)
    translator = Translator.from_checkpoint(
        weights, direction, device, tile=tile, overlap=overlap, batch_size=batch_size
    )
    source = translator.source
    assert source is not None
    record: dict[str, Any] = {
        "tool": "histostain translate",
        "histostain_version": __version__,
        "weights": str(Path(weights).resolve()),
        "weights_format": source.format,
        "weights_entry": source.entry,
        "weights_sha256": source.sha256,
        "generator": source.config,
        "direction": translator.direction,
        "tile": tile,
        "overlap": overlap,
        "batch_size": batch_size,
        "format": fmt,
        "device": translator.device.plan.device,
        "precision": translator.device.plan.precision,
        "num_parts": num_parts,
        "part_id": part_id,
        "inputs": [str(i) for i in inputs],
        "recursive": recursive,
        "command": list(command) if command is not None else None,
        "conventions": "input x/127.5-1; output (y+1)/2*255 rounded to nearest; same size as input",
    }
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    _check_previous(out, record, overwrite)
    log.info("translating %d image(s) with the %s (%s)", len(items), source.describe(), translator.direction or "?")
    report = translator.translate_files(items, overwrite=overwrite)
    report.out_dir = str(out)
    report.weights = {k: record[k] for k in ("weights", "weights_format", "weights_entry", "weights_sha256")}
    record["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    record["result"] = {k: v for k, v in report.to_dict().items() if k not in ("weights", "record", "out_dir")}
    path = out / _record_name(num_parts, part_id)
    atomic_write_text(path, json.dumps(record, indent=2, default=str) + "\n")
    report.record = str(path)
    return report


__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_OVERLAP",
    "DEFAULT_TILE",
    "InputItem",
    "TilePlan",
    "TranslateReport",
    "Translator",
    "collect_inputs",
    "plan_image",
    "to_uint8",
    "translate_paths",
]
