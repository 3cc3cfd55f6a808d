"""``histostain prepare bci``: the BCI paired H&E / HER2-IHC release -> prepared patches with leak-free splits.

The published layout (``BCI_dataset/{HE,IHC}/{train,test}/<number>_<train|test>_<HER2>.png``, the same file
name in HE and IHC, 1024 x 1024 RGB) is validated as a whole before anything is written: names, HER2 levels,
the split word against its folder, HE/IHC partners, and the image sizes (read from the PNG headers). Then every
pair is cut into non-overlapping ``patch x patch`` tiles (row-major), each resized to ``size x size``
(anti-aliased) or kept whole with ``size == 0``, and written as ``<split>/{HE,IHC}/<stem>_r<row>c<col>.png``.

Splits: the official ``test`` folder stays ``test``; the official ``train`` folder is split into
``train``/``val`` **by source image** (:func:`histostain.datasets.prepared.split_groups`), so the patches of one
1024 x 1024 image never land in two splits. The release does not say which of its 51 WSIs an image came from,
so the source image is the finest grouping available. Format: docs/formats.md; user page:
docs/commands/prepare-bci.md.
"""

from __future__ import annotations

import logging
import re
from collections import Counter, deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from histostain.datasets.prepared import (
    PreparedContent,
    PrepareSummary,
    SourceInfo,
    prepare_dataset,
    split_groups,
)
from histostain.errors import ConfigError, DatasetLayoutError, InputError
from histostain.io.images import read_image, write_image
from histostain.provenance import Provenance
from histostain.runtime.progress import track
from histostain.vocabulary import BCI_HER2_LEVELS

log = logging.getLogger(__name__)

DATASET = "bci"
ROOT_NAME = "BCI_dataset"
MODALITIES = ("HE", "IHC")
OFFICIAL_SPLITS = ("train", "test")
NAME_PATTERN = re.compile(r"^(\d+)_(train|test)_([0-3]\+?)$")
EXPECTED_NAME = "<number>_<train|test>_<HER2 level>.png with the level 0, 1+, 2+ or 3+ (e.g. 00012_train_2+.png)"
SPLIT_ORDER = {"train": 0, "val": 1, "test": 2}
_IO_THREADS = 2  # PNG decoding/encoding overlapped with resizing
_MAX_PENDING_WRITES = 32


@dataclass(frozen=True)
class BCIPair:
    """One HE/IHC pair of the release, validated: both files exist, parse, and have the same size."""

    stem: str  # e.g. "00012_train_2+"
    official_split: str  # the folder it came from: "train" or "test"
    her2: str  # "0", "1+", "2+" or "3+"
    he: Path
    ihc: Path
    height: int
    width: int


@dataclass
class _Display:
    """Turns a file path into the name shown in messages: relative to the dataset's parent (or zip)."""

    base: Path
    prefix: str = ""

    def __call__(self, path: Path) -> str:
        try:
            relative = path.relative_to(self.base).as_posix()
        except ValueError:
            relative = str(path)
        return f"{self.prefix}{relative}"


def prepare_bci(
    source: Path,
    out: Path,
    *,
    patch: int = 512,
    size: int = 256,
    val_fraction: float = 0.2,
    seed: int = 0,
    overwrite: bool = False,
    provenance: Provenance | None = None,
) -> PrepareSummary:
    """Validate, tile, resize, split and write the BCI release under ``out``; return what was done.

    ``source`` is the ``BCI_dataset`` folder, its parent, or a zip holding either. Re-running with the same
    source and options is a no-op (``skipped=True``); different options are refused unless ``overwrite``.
    Raises :class:`DatasetLayoutError` / :class:`InputError` naming the offending file, and
    :class:`ConfigError` for invalid options; on any error no ``out`` folder is left behind.
    """
    source, out = Path(source), Path(out)
    _check_options(patch, size, val_fraction, seed)
    _check_out_outside_source(source, out)
    options: dict[str, Any] = {"patch": patch, "size": size, "val_fraction": float(val_fraction), "seed": seed}

    def build(root: Path, folder: Path, info: SourceInfo) -> PreparedContent:
        dataset_root = locate_dataset_root(root, source)
        display = _Display(dataset_root.parent, f"{source.name}:" if info.kind == "zip" else "")
        counters: Counter[str] = Counter()
        pairs = scan_pairs(dataset_root, display, counters)
        check_sizes(pairs, patch, display, counters)
        assignment = assign_splits(pairs, val_fraction, seed)
        samples = _write_patches(pairs, assignment, folder, patch, size, display)
        return PreparedContent(samples, dict(sorted(counters.items())))

    return prepare_dataset(DATASET, source, out, options, build, overwrite=overwrite, provenance=provenance)


# --------------------------------------------------------------------------------------------- validation


def _check_options(patch: int, size: int, val_fraction: float, seed: int) -> None:
    if isinstance(patch, bool) or not isinstance(patch, int) or patch <= 0:
        raise ConfigError(f"--patch must be a positive number of pixels, got {patch}")
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise ConfigError(f"--size must be 0 (keep whole patches) or a positive number of pixels, got {size}")
    if not 0.0 <= float(val_fraction) < 1.0:
        raise ConfigError(f"--val-fraction must be at least 0 and below 1, got {val_fraction}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"--seed must be a non-negative integer, got {seed}")


def _check_out_outside_source(source: Path, out: Path) -> None:
    """Writing into the source folder would change its fingerprint and break idempotency."""
    if source.is_dir() and out.resolve().is_relative_to(source.resolve()):
        raise ConfigError(f"--out {out} is inside the source folder {source}", hint="choose a folder outside it")


def _is_dataset_root(folder: Path) -> bool:
    return all((folder / modality).is_dir() for modality in MODALITIES)


def locate_dataset_root(root: Path, source: Path) -> Path:
    """The folder holding ``HE/`` and ``IHC/``: ``root`` itself or exactly one folder directly inside it."""
    if _is_dataset_root(root):
        return root
    candidates = sorted(
        child
        for child in root.iterdir()
        if child.is_dir() and not child.name.startswith((".", "__MACOSX")) and _is_dataset_root(child)
    )
    if len(candidates) == 1:
        return candidates[0]
    if len(candidates) > 1:
        names = ", ".join(child.name for child in candidates)
        raise DatasetLayoutError(
            f"{source}: several folders look like a BCI release ({names})", hint="pass one of them directly"
        )
    raise DatasetLayoutError(
        f"{source}: no {ROOT_NAME}/HE and {ROOT_NAME}/IHC folders found",
        hint=f"pass the unpacked {ROOT_NAME} folder (holding HE/ and IHC/), its parent, or the zip",
    )


def parse_name(name: str) -> tuple[str, str, str] | None:
    """``"00012_train_2+.png"`` -> ``("00012", "train", "2+")``; None when the name is not a BCI name.

    The regex accepts ``[0-3]`` with an optional ``+``; only ``0`` (no plus) and ``1+``, ``2+``, ``3+`` are
    HER2 levels, so ``1``, ``2``, ``3`` and ``0+`` are rejected here as well.
    """
    path = Path(name)
    if path.suffix.lower() != ".png":
        return None
    match = NAME_PATTERN.match(path.stem)
    if match is None or match.group(3) not in BCI_HER2_LEVELS:
        return None
    number, split, level = match.groups()
    return number, split, level


def _is_png(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() == ".png" and not path.name.startswith(".")


def _count_ignored(dataset_root: Path, images: set[Path], counters: Counter[str]) -> None:
    """Count every file of the release that is not a pair image (README, ``*Zone.Identifier``, ...)."""
    for path in sorted(dataset_root.rglob("*")):
        if path.is_file() and path not in images:
            key = "ignored_zone_identifier_files" if path.name.endswith("Zone.Identifier") else "ignored_other_files"
            counters[key] += 1
            log.debug("ignoring %s", path)


def scan_pairs(dataset_root: Path, display: _Display, counters: Counter[str]) -> list[BCIPair]:
    """Find, parse and pair every image (cheap: names only); raise on the first inconsistency found."""
    present = [split for split in OFFICIAL_SPLITS if any((dataset_root / m / split).is_dir() for m in MODALITIES)]
    if not present:
        raise DatasetLayoutError(
            f"{display(dataset_root)}: neither HE/train nor HE/test exists",
            hint="the release holds HE/{train,test} and IHC/{train,test}",
        )
    for split in OFFICIAL_SPLITS:
        if split not in present:
            log.warning("%s has no HE/%s or IHC/%s folder; preparing the other split only", dataset_root, split, split)
    for split in present:
        for modality in MODALITIES:
            folder = dataset_root / modality / split
            if not folder.is_dir():
                raise DatasetLayoutError(
                    f"{display(folder)}: missing; HE/{split} and IHC/{split} must both exist",
                    hint="unpack the complete release",
                )
    found: dict[tuple[str, str], dict[str, Path]] = {}  # (modality, split) -> stem -> path
    levels: dict[str, str] = {}
    images: set[Path] = set()
    for split in present:
        for modality in MODALITIES:
            folder = dataset_root / modality / split
            stems: dict[str, Path] = {}
            numbers: dict[str, Path] = {}
            for path in sorted(folder.iterdir()):
                if not _is_png(path):
                    continue
                parsed = parse_name(path.name)
                if parsed is None:
                    raise DatasetLayoutError(
                        f"{display(path)}: name does not follow {EXPECTED_NAME}",
                        hint="rename or remove the file; BCI names carry the pair number, split and HER2 level",
                    )
                number, word, level = parsed
                if word != split:
                    raise DatasetLayoutError(
                        f"{display(path)}: name says '{word}' but the file is in the {modality}/{split} folder",
                        hint="move the file to the folder its name names",
                    )
                if number in numbers:
                    raise DatasetLayoutError(
                        f"{display(path)}: pair number {number} is also used by {numbers[number].name}",
                        hint="every pair has its own number within a split",
                    )
                numbers[number] = path
                stems[path.stem] = path
                levels[path.stem] = level
                images.add(path)
            found[(modality, split)] = stems
    pairs: list[BCIPair] = []
    for split in present:
        he, ihc = found[("HE", split)], found[("IHC", split)]
        for have, other, have_name, other_name in (
            (he, ihc, "HE", "IHC"),
            (ihc, he, "IHC", "HE"),
        ):
            missing = sorted(set(have) - set(other))
            if missing:
                first = have[missing[0]]
                expected = dataset_root / other_name / split / first.name
                more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
                raise DatasetLayoutError(
                    f"{display(expected)}: missing{more}; every {have_name} image needs an {other_name} partner"
                    " with the same name",
                    hint=_partner_hint(missing[0], other),
                )
        for stem in sorted(he):
            pairs.append(BCIPair(stem, split, levels[stem], he[stem], ihc[stem], 0, 0))
    if not pairs:
        raise DatasetLayoutError(
            f"{display(dataset_root)}: no images found in HE/{{train,test}}",
            hint=f"image names follow {EXPECTED_NAME}",
        )
    _count_ignored(dataset_root, images, counters)
    return pairs


def _partner_hint(stem: str, other: dict[str, Path]) -> str:
    """Point at a same-numbered file with another HER2 level, the likely cause of a missing partner."""
    number = stem.split("_", 1)[0]
    near = [name for name in other if name.split("_", 1)[0] == number]
    if near:
        return f"the other folder has {other[near[0]].name}: the HER2 level differs"
    return "restore the missing file or remove its partner"


def _header(path: Path, display: _Display) -> tuple[int, int, str]:
    """Width, height and Pillow mode from the PNG header, without decoding the pixels."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            width, height = image.size
            return width, height, image.mode
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise InputError(f"cannot read image {display(path)}: {exc}", hint="download the release again") from exc


def check_sizes(pairs: list[BCIPair], patch: int, display: _Display, counters: Counter[str]) -> None:
    """Read every header: HE and IHC sizes must agree and be divisible by ``patch``. Fills in the sizes."""
    for i, pair in enumerate(track(pairs, "Checking BCI pairs", total=len(pairs), unit="pair")):
        he_w, he_h, he_mode = _header(pair.he, display)
        ihc_w, ihc_h, ihc_mode = _header(pair.ihc, display)
        if (he_w, he_h) != (ihc_w, ihc_h):
            raise DatasetLayoutError(
                f"{display(pair.ihc)}: {ihc_w} x {ihc_h} pixels but its HE partner is {he_w} x {he_h}; a pair must"
                " have the same size",
                hint="the images of a pair are aligned pixel by pixel",
            )
        if he_w % patch or he_h % patch:
            raise DatasetLayoutError(
                f"{display(pair.he)}: {he_w} x {he_h} pixels is not divisible by --patch {patch}",
                hint="choose a --patch that divides the image size (BCI images are 1024 x 1024: 1024, 512, 256, ...)",
            )
        for mode in (he_mode, ihc_mode):
            if mode != "RGB":
                counters["converted_non_rgb_images"] += 1
        pairs[i] = BCIPair(pair.stem, pair.official_split, pair.her2, pair.he, pair.ihc, he_h, he_w)


def assign_splits(pairs: list[BCIPair], val_fraction: float, seed: int) -> dict[str, str]:
    """Source stem -> prepared split: official test stays test; official train -> train/val by source image."""
    assignment = {pair.stem: "test" for pair in pairs if pair.official_split == "test"}
    train = [pair.stem for pair in pairs if pair.official_split == "train"]
    if train:
        assignment.update(split_groups(train, {"train": 1.0 - val_fraction, "val": val_fraction}, seed))
    return assignment


# --------------------------------------------------------------------------------------------- conversion


def tile_grid(height: int, width: int, patch: int) -> list[tuple[int, int]]:
    """(row, col) of every non-overlapping patch, row-major."""
    return [(row, col) for row in range(height // patch) for col in range(width // patch)]


def resize_patch(crop: np.ndarray, size: int) -> np.ndarray:
    """Resize an RGB uint8 crop to ``size x size`` (anti-aliased, range preserved), rounded back to uint8."""
    if size == 0 or crop.shape[:2] == (size, size):
        return crop
    from skimage.transform import resize

    resized = resize(crop, (size, size, crop.shape[2]), anti_aliasing=True, preserve_range=True)
    return np.clip(np.rint(resized), 0, 255).astype(np.uint8)


def _read(path: Path, display: _Display) -> np.ndarray:
    try:
        return read_image(path)
    except InputError as exc:
        raise InputError(exc.message.replace(str(path), display(path)), hint=exc.hint) from exc


def _read_pair(pair: BCIPair, display: _Display) -> tuple[np.ndarray, np.ndarray]:
    he, ihc = _read(pair.he, display), _read(pair.ihc, display)
    for image, path in ((he, pair.he), (ihc, pair.ihc)):
        if image.shape[:2] != (pair.height, pair.width):  # the header promised another size
            raise InputError(f"cannot read image {display(path)}: decoded size differs from its header")
    return he, ihc


def _write_patches(
    pairs: list[BCIPair], assignment: dict[str, str], tmp: Path, patch: int, size: int, display: _Display
) -> list[dict[str, Any]]:
    """Tile, resize and write every pair; return the sample records in split, stem, row, col order.

    Resizing runs here; decoding the next pair and encoding the written PNGs run in a small thread pool
    (Pillow releases the GIL while it decodes and compresses), which overlaps them with the resizing. At most
    ``_MAX_PENDING_WRITES`` patches wait for their write, so memory stays flat.
    """
    ordered = sorted(pairs, key=lambda pair: (SPLIT_ORDER[assignment[pair.stem]], pair.stem))
    side = size or patch
    samples: list[dict[str, Any]] = []
    pool = ThreadPoolExecutor(max_workers=_IO_THREADS, thread_name_prefix="histostain-bci")
    try:
        pending: deque[Future[Path]] = deque()
        upcoming = pool.submit(_read_pair, ordered[0], display) if ordered else None
        for index, pair in enumerate(track(ordered, "Preparing BCI", total=len(ordered), unit="pair")):
            assert upcoming is not None
            he, ihc = upcoming.result()
            nxt = index + 1
            upcoming = pool.submit(_read_pair, ordered[nxt], display) if nxt < len(ordered) else None
            split = assignment[pair.stem]
            for row, col in tile_grid(pair.height, pair.width, patch):
                sample_id = f"{pair.stem}_r{row}c{col}"
                window = np.s_[row * patch : (row + 1) * patch, col * patch : (col + 1) * patch]
                for modality, image in (("HE", he), ("IHC", ihc)):
                    target = tmp / split / modality / f"{sample_id}.png"
                    pending.append(pool.submit(write_image, target, resize_patch(image[window], size)))
                while len(pending) > _MAX_PENDING_WRITES:
                    pending.popleft().result()
                samples.append(
                    {
                        "id": sample_id,
                        "split": split,
                        "source_image": pair.stem,
                        "her2": pair.her2,
                        "row": row,
                        "col": col,
                        "patch": patch,
                        "size": side,
                    }
                )
        while pending:
            pending.popleft().result()
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    return samples


__all__ = ["BCIPair", "locate_dataset_root", "parse_name", "prepare_bci", "resize_patch"]
