"""``histostain prepare pannuke``: the published PanNuke fold arrays in, the prepared format out.

PanNuke ships three folds, each ``Fold K/images/foldK/{images,types}.npy`` and ``Fold K/masks/foldK/masks.npy``
(docs/formats.md, docs/commands/prepare-pannuke.md). A fold's masks are about 8 GB of float64, so every array is
read in chunks of patches with plain file reads into one reused buffer (no memory map, whose touched pages count
towards the resident size) and every output ``.npy`` is streamed: header first, then rows appended. Memory is
therefore flat in the number of patches and folds.

Conversion rules (one patch, masks ``(H, W, 6)``):

- image: values clipped to 0..255 (clipped values counted) and rounded to uint8;
- overlap: a pixel positive in two or more class channels (0-4) belongs to the **last** such channel, the rule
  of the PanNuke-metrics ``binarize`` (the official bPQ ground truth), CellViT and torch-em;
- instances: every 4-connected piece of one (channel, id) pair becomes its own instance, so ids split into
  several pieces are relabelled and an id reused in two channels gives two instances; the ids are then 1..n
  in raster order (first pixel of each instance);
- type map: channel + 1 of the winning channel, 0 elsewhere;
- the evaluation ground truth (``eval/masks.npy``) is the original six channels, unchanged, as int32.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from histostain.datasets.pannuke_masks import CONNECTIVITY, OVERLAP_RULE, convert_masks
from histostain.datasets.prepared import (
    PreparedContent,
    PrepareSummary,
    SourceInfo,
    open_source,
    parse_fractions,
    prepare_dataset,
    split_groups,
)
from histostain.errors import ConfigError, DatasetLayoutError
from histostain.io.npy import NpyChunkReader, NpyInfo, NpyWriter, inspect_npy
from histostain.provenance import Provenance
from histostain.runtime.progress import progress_task
from histostain.vocabulary import PANNUKE_TISSUES

log = logging.getLogger(__name__)

DATASET = "pannuke"
SPLITS = ("train", "val", "test")
FOLDS = (1, 2, 3)
MAX_ID = 2**31 - 1
COUNTERS = (
    "empty_patches",
    "background_all_zero_patches",
    "overlap_pixels",
    "overlap_patches",
    "instances_lost_to_overlap",
    "class_and_background_pixels",
    "split_ids",
    "extra_instances_from_splits",
    "colliding_ids",
    "clipped_image_values",
)

_NPY_ERRORS: dict[str, Any] = {"error": DatasetLayoutError, "hint": "download and unpack the fold again"}
_FOLD_NAME = re.compile(r"^fold[ _-]?(\d+)$", re.IGNORECASE)
_FOLD_ZIP = re.compile(r"^fold[ _-]?(\d+)\.zip$", re.IGNORECASE)


# ----------------------------------------------------------------------------------------------- layout


@dataclass
class _Fold:
    number: int
    folder: Path
    label: str  # how messages name the fold folder, e.g. "Fold 1"
    images: NpyInfo | None = None
    masks: NpyInfo | None = None
    tissues: list[str] | None = None

    def file(self, kind: str) -> Path:
        part = "masks" if kind == "masks" else "images"
        return self.folder / part / f"fold{self.number}" / f"{kind}.npy"

    def name(self, kind: str) -> str:
        part = "masks" if kind == "masks" else "images"
        return f"{self.label}/{part}/fold{self.number}/{kind}.npy"

    @property
    def count(self) -> int:
        assert self.images is not None
        return self.images.shape[0]


def _inner_fold_numbers(folder: Path) -> list[int]:
    numbers = []
    for part in ("images", "masks"):
        sub = folder / part
        if sub.is_dir():
            for child in sub.iterdir():
                match = re.fullmatch(r"fold(\d+)", child.name, re.IGNORECASE)
                if child.is_dir() and match:
                    numbers.append(int(match.group(1)))
    return sorted(set(numbers))


def _as_fold(folder: Path) -> _Fold | None:
    """The fold stored in ``folder`` (``Fold K`` or any folder holding ``images/foldK``), else None."""
    outer = _FOLD_NAME.match(folder.name)
    inner = _inner_fold_numbers(folder)
    if outer is None and not inner:
        return None
    if outer is not None:
        number = int(outer.group(1))
        if inner and number not in inner:
            raise DatasetLayoutError(
                f"{folder.name}/images: holds fold{inner[0]}/, expected fold{number}/ inside {folder.name}/",
                hint="each 'Fold K' folder holds images/foldK/ and masks/foldK/ as published",
            )
    elif len(inner) == 1:
        number = inner[0]
    else:
        raise DatasetLayoutError(
            f"{folder.name}/images: holds several folds ({', '.join(f'fold{k}' for k in inner)}); expected one",
            hint="pass the folder that holds the 'Fold K' folders",
        )
    if number not in FOLDS:
        raise DatasetLayoutError(
            f"{folder.name}: fold {number} is not a PanNuke fold; expected folds 1, 2 and 3",
            hint="PanNuke is published as fold_1.zip, fold_2.zip and fold_3.zip",
        )
    return _Fold(number, folder, folder.name)


def _folds_in(root: Path) -> list[_Fold]:
    """Folds in ``root``: root itself, its children, or the children of its only subfolder."""
    fold = _as_fold(root)
    if fold is not None:
        return [fold]
    children = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "__MACOSX")))
    folds = [f for f in (_as_fold(child) for child in children) if f is not None]
    if not folds and len(children) == 1:
        folds = _folds_in(children[0])
    return folds


@contextmanager
def _locate_folds(root: Path, scratch_parent: Path) -> Iterator[list[_Fold]]:
    """Find the folds under ``root``; a folder of published fold zips is extracted (safely) into scratch space."""
    folds = _folds_in(root)
    with ExitStack() as stack:
        if not folds:
            zips = sorted(p for p in root.iterdir() if p.is_file() and _FOLD_ZIP.match(p.name))
            for archive in zips:
                extracted = stack.enter_context(open_source(archive, scratch_parent))
                found = _folds_in(extracted)
                if not found:
                    raise DatasetLayoutError(
                        f"{archive.name}: holds no PanNuke fold; expected 'Fold K/images/foldK/images.npy'"
                    )
                for fold in found:
                    fold.label = f"{archive.name}:{fold.label}"
                folds += found
        if not folds:
            raise DatasetLayoutError(
                f"{root}: no PanNuke fold found; expected 'Fold K/images/foldK/images.npy', "
                "'Fold K/images/foldK/types.npy' and 'Fold K/masks/foldK/masks.npy'",
                hint="pass the folder holding 'Fold 1', 'Fold 2', 'Fold 3', one 'Fold K' folder, or a fold zip",
            )
        numbers = [fold.number for fold in folds]
        for number in set(numbers):
            if numbers.count(number) > 1:
                where = ", ".join(fold.label for fold in folds if fold.number == number)
                raise DatasetLayoutError(f"fold {number} found more than once ({where}); expected each fold once")
        yield sorted(folds, key=lambda fold: fold.number)


def _validate_fold(fold: _Fold) -> None:
    """Check a fold's three files (headers, shapes, dtypes, tissue names) without reading the big arrays."""
    import numpy as np

    for kind in ("images", "types", "masks"):
        if not fold.file(kind).is_file():
            raise DatasetLayoutError(
                f"{fold.name(kind)}: missing; every PanNuke fold needs images/fold{fold.number}/images.npy, "
                f"images/fold{fold.number}/types.npy and masks/fold{fold.number}/masks.npy",
                hint="unpack the published fold zip without moving its files",
            )
    images = inspect_npy(fold.file("images"), fold.name("images"), **_NPY_ERRORS)
    masks = inspect_npy(fold.file("masks"), fold.name("masks"), **_NPY_ERRORS)
    for info, kind, channels in ((images, "images", 3), (masks, "masks", 6)):
        if len(info.shape) != 4 or info.shape[-1] != channels:
            raise DatasetLayoutError(
                f"{fold.name(kind)}: shape {info.shape}; expected (N, H, W, {channels})",
                hint="PanNuke images are (N, 256, 256, 3) and masks (N, 256, 256, 6)",
            )
        if info.dtype.kind not in "fiu":
            raise DatasetLayoutError(
                f"{fold.name(kind)}: dtype {info.dtype}; expected a float (as published) or integer array"
            )
    if images.shape[:3] != masks.shape[:3]:
        raise DatasetLayoutError(
            f"{fold.name('masks')}: shape {masks.shape} does not match {fold.name('images')} {images.shape}; "
            "expected the same number of patches and patch size"
        )
    if images.shape[0] == 0:
        raise DatasetLayoutError(f"{fold.name('images')}: holds no patches")
    label = fold.name("types")
    try:
        types = np.load(fold.file("types"), allow_pickle=False)
    except ValueError as exc:
        raise DatasetLayoutError(
            f"{label}: not a plain unicode array of tissue names ({str(exc).splitlines()[0]})",
            hint="types.npy must hold one tissue name per patch, e.g. 'Breast'",
        ) from exc
    except (OSError, EOFError) as exc:
        raise DatasetLayoutError(f"{label}: not a readable .npy file ({exc})") from exc
    if types.dtype.kind == "S":
        types = types.astype(str)
    if types.dtype.kind != "U":
        raise DatasetLayoutError(f"{label}: dtype {types.dtype}; expected a unicode array of tissue names")
    if types.shape != (images.shape[0],):
        raise DatasetLayoutError(
            f"{label}: shape {types.shape}; expected ({images.shape[0]},), one tissue name per patch of "
            f"{fold.name('images')}"
        )
    tissues = types.tolist()
    for index, name in enumerate(tissues):
        if name not in PANNUKE_TISSUES:
            raise DatasetLayoutError(
                f"{label}: unknown tissue {name!r} at patch {index}; expected one of the 19 PanNuke tissues",
                hint=f"the names are {', '.join(PANNUKE_TISSUES)}",
            )
    fold.images, fold.masks, fold.tissues = images, masks, tissues


# ----------------------------------------------------------------------------------------------- service


def _options(split: str, test_fold: int, val_fold: int, fractions: str, seed: int, chunk: int) -> dict[str, Any]:
    """Validate the options; return the ones that decide the output (recorded in the manifest)."""
    if chunk < 1:
        raise ConfigError(f"--chunk must be at least 1, got {chunk}")
    options: dict[str, Any] = {"split": split, "overlap_rule": OVERLAP_RULE, "connectivity": CONNECTIVITY}
    if split == "official":
        for name, value in (("--test-fold", test_fold), ("--val-fold", val_fold)):
            if value not in FOLDS:
                raise ConfigError(f"{name} must be 1, 2 or 3, got {value}")
        if test_fold == val_fold:
            raise ConfigError(
                f"--test-fold and --val-fold must differ, both are {test_fold}",
                hint="the official protocol tests on one fold, validates on another and trains on the third",
            )
        train_fold = next(k for k in FOLDS if k not in (test_fold, val_fold))
        options.update(train_fold=train_fold, val_fold=val_fold, test_fold=test_fold)
    elif split == "random":
        if seed < 0:
            raise ConfigError(f"--seed must be a non-negative integer, got {seed}")
        options.update(fractions=parse_fractions(fractions), seed=seed)
    else:
        raise ConfigError(f"--split must be 'official' or 'random', got {split!r}")
    return options


def _assign(folds: list[_Fold], options: dict[str, Any]) -> dict[str, str]:
    """Split of every sample id ``fold<K>_<index>``."""
    ids = {fold.number: [f"fold{fold.number}_{i}" for i in range(fold.count)] for fold in folds}
    if options["split"] == "official":
        found = sorted(ids)
        missing = [k for k in FOLDS if k not in ids]
        if missing:
            raise DatasetLayoutError(
                f"--split official needs Fold 1, 2 and 3; found {', '.join(f'Fold {k}' for k in found)} "
                f"(missing {', '.join(f'Fold {k}' for k in missing)})",
                hint="pass the folder holding all three folds, or use --split random",
            )
        role = {options["train_fold"]: "train", options["val_fold"]: "val", options["test_fold"]: "test"}
        return {sample: role[k] for k, samples in ids.items() for sample in samples}
    every = [sample for samples in ids.values() for sample in samples]
    return split_groups(every, options["fractions"], options["seed"])


def prepare_pannuke(
    source: Path,
    out: Path,
    *,
    split: str = "official",
    test_fold: int = 3,
    val_fold: int = 2,
    fractions: str = "0.6,0.2,0.2",
    seed: int = 0,
    chunk: int = 64,
    overwrite: bool = False,
    provenance: Provenance | None = None,
) -> PrepareSummary:
    """Validate, convert and split PanNuke folds from ``source`` into the prepared format under ``out``.

    ``source`` is the folder holding ``Fold 1``..``Fold 3``, one ``Fold K`` folder, a published fold zip, or a
    folder of fold zips. ``split`` is ``official`` (test/val/train = one fold each) or ``random`` (by patch,
    ``fractions``, ``seed``). ``chunk`` patches are held in memory at a time (it does not change the output).
    """
    source, out = Path(source), Path(out)
    options = _options(split, test_fold, val_fold, fractions, seed, chunk)

    def build(root: Path, folder: Path, info: SourceInfo) -> PreparedContent:
        with _locate_folds(root, out.parent) as folds:
            for fold in folds:
                _validate_fold(fold)
            sizes = {fold.images.shape[1:3] for fold in folds if fold.images is not None}
            if len(sizes) > 1:
                raise DatasetLayoutError(
                    f"the folds have different patch sizes ({', '.join(f'{h}x{w}' for h, w in sorted(sizes))}); "
                    "expected one size"
                )
            return _convert(folds, _assign(folds, options), folder, chunk)

    return prepare_dataset(DATASET, source, out, options, build, overwrite=overwrite, provenance=provenance)


def _convert(folds: list[_Fold], assignment: dict[str, str], tmp: Path, chunk: int) -> PreparedContent:
    """Stream every fold through the conversion into the per-split arrays; return the sample records."""
    import numpy as np

    height, width = folds[0].images.shape[1:3]  # type: ignore[union-attr]
    counts = {name: sum(1 for s in assignment.values() if s == name) for name in SPLITS}
    counters = dict.fromkeys(COUNTERS, 0)
    samples: list[dict[str, Any]] = []
    tissues: dict[str, list[str]] = {name: [] for name in SPLITS}
    with ExitStack() as stack:
        writers: dict[str, dict[str, NpyWriter]] = {}
        for name in SPLITS:
            n = counts[name]
            if not n:
                continue
            folder = tmp / name
            writers[name] = {
                "images": NpyWriter(folder / "images.npy", np.uint8, (n, height, width, 3)),
                "inst_maps": NpyWriter(folder / "inst_maps.npy", np.int32, (n, height, width)),
                "type_maps": NpyWriter(folder / "type_maps.npy", np.uint8, (n, height, width)),
                "eval_masks": NpyWriter(folder / "eval" / "masks.npy", np.int32, (n, height, width, 6)),
            }
            for writer in writers[name].values():
                stack.callback(writer.handle.close)
        for fold in folds:
            assert fold.images is not None and fold.masks is not None and fold.tissues is not None
            rows = min(chunk, fold.count)
            with (
                NpyChunkReader(fold.images, fold.name("images"), rows, **_NPY_ERRORS) as images,
                NpyChunkReader(fold.masks, fold.name("masks"), rows, **_NPY_ERRORS) as masks,
                progress_task(f"PanNuke fold {fold.number}", total=fold.count, unit="patch") as task,
            ):
                for start in range(0, fold.count, chunk):
                    stop = min(start + chunk, fold.count)
                    rgb = _convert_images(images.read(start, stop), fold.name("images"), start, counters)
                    raw = _integer_masks(masks.read(start, stop), fold.name("masks"), start)
                    for offset in range(stop - start):
                        index = start + offset
                        sample = f"fold{fold.number}_{index}"
                        name = assignment[sample]
                        patch = raw[offset]
                        result = convert_masks(patch[..., :5])
                        out = writers[name]
                        out["images"].append(rgb[offset : offset + 1])
                        out["inst_maps"].append(result.inst_map[None])
                        out["type_maps"].append(result.type_map[None])
                        out["eval_masks"].append(patch[None])
                        tissue = fold.tissues[index]
                        tissues[name].append(tissue)
                        empty = result.n_nuclei == 0
                        background = patch[..., 5] > 0
                        counters["empty_patches"] += int(empty)
                        counters["background_all_zero_patches"] += int(not background.any())
                        counters["overlap_pixels"] += result.overlap_pixels
                        counters["overlap_patches"] += int(result.overlap_pixels > 0)
                        counters["instances_lost_to_overlap"] += result.instances_lost
                        counters["class_and_background_pixels"] += int((result.type_map > 0)[background].sum())
                        counters["split_ids"] += result.split_ids
                        counters["extra_instances_from_splits"] += result.extra_instances
                        counters["colliding_ids"] += result.colliding_ids
                        samples.append(
                            {
                                "id": sample,
                                "split": name,
                                "source_image": sample,
                                "fold": fold.number,
                                "index": index,
                                "tissue": tissue,
                                "n_nuclei": result.n_nuclei,
                                "empty": bool(empty),
                            }
                        )
                    del rgb, raw
                    task.advance(stop - start)
        for name, group in writers.items():
            for writer in group.values():
                writer.close()
            longest = max(len(t) for t in tissues[name])
            np.save(tmp / name / "eval" / "types.npy", np.array(tissues[name], dtype=f"<U{longest}"))
    for key, value in counters.items():
        if value:
            log.info("PanNuke: %s = %d", key, value)
    return PreparedContent(samples, counters)


def _first_bad(values: Any, bad: Any) -> int:
    """Index of the first patch (axis 0) that has a bad value."""
    import numpy as np

    return int(np.argmax(bad.reshape(values.shape[0], -1).any(axis=1)))


def _convert_images(values: Any, label: str, start: int, counters: dict[str, int]) -> Any:
    """Chunk of images -> uint8 RGB (clipped to 0..255, rounded); NaN/inf is an error. Works in place."""
    import numpy as np

    if values.dtype.kind == "f":
        finite = np.isfinite(values)
        if not finite.all():
            patch = start + _first_bad(values, ~finite)
            raise DatasetLayoutError(f"{label}: patch {patch} holds NaN or infinite values; expected 0..255")
        del finite
    low, high = values.min(), values.max()
    if low < 0 or high > 255:
        counters["clipped_image_values"] += int(np.count_nonzero((values < 0) | (values > 255)))
        if values.dtype.kind == "f":
            np.clip(values, 0, 255, out=values)
        else:
            values = np.clip(values, 0, 255)
    if values.dtype.kind == "f":
        np.rint(values, out=values)
    return values.astype(np.uint8)


def _integer_masks(values: Any, label: str, start: int) -> Any:
    """Chunk of masks -> int32; the values must be non-negative integers (instance ids and the 0/1 flag)."""
    import numpy as np

    low, high = values.min(), values.max()
    if values.dtype.kind == "f" and not (np.isfinite(low) and np.isfinite(high)):
        patch = start + _first_bad(values, ~np.isfinite(values))
        raise DatasetLayoutError(f"{label}: patch {patch} holds NaN or infinite values; expected integer ids")
    if low < 0 or high > MAX_ID:
        patch = start + _first_bad(values, (values < 0) | (values > MAX_ID))
        raise DatasetLayoutError(
            f"{label}: patch {patch} holds values outside 0..{MAX_ID}; expected non-negative integer instance ids"
        )
    ints = values.astype(np.int32)
    if values.dtype.kind == "f":
        fractional = ints != values
        if fractional.any():
            patch = start + _first_bad(values, fractional)
            raise DatasetLayoutError(f"{label}: patch {patch} holds non-integer values; expected integer instance ids")
    return ints
