"""``prepare endonuke``: EndoNuke keypoint tiles in, resampled (and optionally cropped) prepared tiles out.

Published layout (datasets.md section 2)::

    data/dataset/images/<id>.png                    RGBA (alpha 255), 200 x 200 or 400 x 400, always 100 um wide
    data/dataset/labels/bulk/<annotator>/<id>.txt   one "x y class" line per nucleus, pixels of that tile

Rules (docs/commands/prepare-endonuke.md is the user-facing version):

- Class codes are the dataset authors': 0 stroma, 1 epithelium, 2 other (the seed project's README had them
  wrong). They are copied unchanged.
- Every tile is resampled to ``--mpp``: the source scale is ``100 / width`` um/px, the output side
  ``round(100 / mpp)`` (400 at the default 0.25), with ``skimage.transform.resize`` (bilinear, anti-aliased)
  rounded to uint8. A tile already at the target size is copied unchanged.
- Keypoints use the pixel-centre convention that ``resize`` itself uses: integer coordinate ``x`` is the centre
  of pixel column ``x``, so ``x' = (x + 0.5) * s - 0.5`` with ``s = out_width / width`` (the same for y). Points
  on the far edge (``x == W`` or ``y == H``, legal in EndoNuke) are first clamped to ``W - 1`` / ``H - 1`` as the
  authors' resize script does; after scaling, points are clipped to ``[0, side - 1]`` (this only moves points
  when downsampling, and by less than half a pixel).
- Crops: ``none`` (whole tile), ``seed`` (the seed project's three crops: top-left, top-right, bottom-centre),
  ``grid`` (overlapping grid, last row/column flush with the edge). A point belongs to a crop when
  ``x0 <= x < x0 + c`` and ``y0 <= y < y0 + c``; the others are dropped from that crop and counted.
- Only ``labels/bulk`` is read. Label folders of unknown annotators are skipped with a warning and counted;
  images without a label file (the agreement tiles, among others) are skipped and counted; a label file whose
  image is missing, a bad file name, a class outside {0, 1, 2}, a point outside ``[0, W] x [0, H]``, a
  non-square tile, or one tile labelled in two annotator folders (after ``--annotator``) is an error.
- Splits are drawn by source tile (:func:`split_groups`), so all crops of one tile share a split.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from histostain.datasets.prepared import (
    PreparedContent,
    PrepareSummary,
    SourceInfo,
    parse_fractions,
    prepare_dataset,
    split_groups,
)
from histostain.errors import ConfigError, DatasetLayoutError, InputError
from histostain.io.annotations import Nucleus, read_centroids_txt, write_centroids_txt
from histostain.io.images import read_image, write_image
from histostain.provenance import Provenance
from histostain.runtime.progress import track
from histostain.vocabulary import ENDONUKE_ANNOTATORS, ENDONUKE_CLASS_NAMES

log = logging.getLogger(__name__)

DATASET = "endonuke"
CROP_MODES: tuple[str, ...] = ("none", "seed", "grid")
TILE_WIDTH_UM = 100.0
MIN_SIDE, MAX_SIDE = 16, 4096  # resampled tile side in pixels (mpp between 0.0244 and 6.25)


@dataclass
class _Tile:
    """One labelled source tile, validated: its files, size and keypoints (source pixels)."""

    stem: str
    image: Path
    label: Path
    annotator: str
    width: int
    height: int
    points: np.ndarray  # (N, 2) float64 x, y as read (x == W allowed)
    classes: np.ndarray  # (N,) int64 in {0, 1, 2}


@dataclass(frozen=True)
class _Crop:
    suffix: str | None  # None: the whole tile, id = stem
    x0: int
    y0: int
    width: int
    height: int


class _Paths:
    """Paths as the user knows them (``data/dataset/...``, or ``data.zip:data/dataset/...``) for messages."""

    def __init__(self, base: Path, prefix: str) -> None:
        self.base = base
        self.prefix = prefix

    def show(self, path: Path) -> str:
        try:
            return self.prefix + path.relative_to(self.base).as_posix()
        except ValueError:
            return str(path)


# ------------------------------------------------------------------------------------------------ public API


def prepare_endonuke(
    source: Path,
    out: Path,
    *,
    mpp: float = 0.25,
    crops: str = "none",
    crop_size: int = 256,
    grid_overlap: int = 64,
    fractions: str = "0.6,0.2,0.2",
    seed: int = 0,
    annotators: list[str] | None = None,
    overwrite: bool = False,
    provenance: Provenance | None = None,
) -> PrepareSummary:
    """Validate, resample, crop, split and write an EndoNuke download (folder ``data/``, its parent or data.zip).

    Returns the summary; ``skipped`` is True when ``out`` already held exactly this preparation.
    """
    source, out = Path(source), Path(out)
    split_fractions = parse_fractions(fractions)
    selected = _check_options(mpp, crops, crop_size, grid_overlap, seed, annotators)
    side = _output_side(mpp)
    options: dict[str, Any] = {
        "mpp": float(mpp),
        "crops": crops,
        "crop_size": int(crop_size),
        "grid_overlap": int(grid_overlap),
        "fractions": split_fractions,
        "seed": int(seed),
        "annotators": selected,
    }

    def build(root: Path, folder: Path, info: SourceInfo) -> PreparedContent:
        data_dir = _locate(root, str(source))
        paths = _Paths(data_dir.parent, f"{source.name}:" if info.kind == "zip" else "")
        counters: dict[str, int] = {}
        tiles = _scan(data_dir, paths, selected, counters)
        plans = {tile.stem: _plan_crops(tile, side, crops, crop_size, grid_overlap, paths) for tile in tiles}
        assignment = split_groups([tile.stem for tile in tiles], split_fractions, seed)
        samples: list[dict[str, Any]] = []
        counters.update(dropped_points=0, points_outside_all_crops=0)
        for tile in track(tiles, "Preparing EndoNuke tiles", total=len(tiles), unit="tile"):
            samples += _convert_tile(tile, side, plans[tile.stem], assignment[tile.stem], folder, counters, paths)
        return PreparedContent(samples, counters)

    return prepare_dataset(DATASET, source, out, options, build, overwrite=overwrite, provenance=provenance)


def resample_points(points: np.ndarray, width: int, height: int, out_width: int, out_height: int) -> np.ndarray:
    """Source keypoints -> resampled-image keypoints (pixel-centre convention, edge clamp, sub-pixel precision).

    ``x == W`` (and ``y == H``) is clamped to ``W - 1`` first, then ``x' = (x + 0.5) * out_width / width - 0.5``,
    and the result is clipped to the valid pixel centres ``[0, out - 1]``.
    """
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    x = np.minimum(pts[:, 0], width - 1)
    y = np.minimum(pts[:, 1], height - 1)
    sx, sy = out_width / width, out_height / height
    xs = np.clip((x + 0.5) * sx - 0.5, 0.0, out_width - 1)
    ys = np.clip((y + 0.5) * sy - 0.5, 0.0, out_height - 1)
    return np.stack([xs, ys], axis=1)


def crop_windows(width: int, height: int, mode: str, crop_size: int, grid_overlap: int) -> list[_Crop]:
    """The crops of a resampled ``width x height`` tile, in output order (see the module docstring)."""
    c = crop_size
    if mode == "none":
        return [_Crop(None, 0, 0, width, height)]
    if mode == "seed":
        return [
            _Crop("tl", 0, 0, c, c),
            _Crop("tr", width - c, 0, c, c),
            _Crop("bc", (width - c) // 2, height - c, c, c),
        ]
    stride = c - grid_overlap
    ys, xs = _grid_starts(height, c, stride), _grid_starts(width, c, stride)
    return [_Crop(f"y{y0}_x{x0}", x0, y0, c, c) for y0 in ys for x0 in xs]


# ------------------------------------------------------------------------------------------------ validation


def _check_options(
    mpp: float, crops: str, crop_size: int, grid_overlap: int, seed: int, annotators: Sequence[str] | None
) -> list[str] | None:
    """Raise ConfigError for invalid option values; return the annotators in canonical order (None = all)."""
    if not (isinstance(mpp, int | float) and np.isfinite(mpp) and mpp > 0):
        raise ConfigError(f"--mpp must be a positive number of micrometres per pixel, got {mpp}")
    if crops not in CROP_MODES:
        raise ConfigError(f"--crops {crops!r} is not one of {', '.join(CROP_MODES)}")
    if crop_size < 1:
        raise ConfigError(f"--crop-size must be a positive number of pixels, got {crop_size}")
    if crops == "grid" and not 0 <= grid_overlap < crop_size:
        raise ConfigError(
            f"--grid-overlap must be between 0 and --crop-size - 1 ({crop_size - 1}), got {grid_overlap}",
            hint="the grid stride is crop-size minus overlap and must be positive",
        )
    if seed < 0:
        raise ConfigError(f"--seed must be a non-negative integer, got {seed}")
    _output_side(mpp)
    if not annotators:
        return None
    unknown = sorted(set(annotators) - set(ENDONUKE_ANNOTATORS))
    if unknown:
        raise ConfigError(
            f"unknown --annotator {', '.join(unknown)}",
            hint=f"EndoNuke's annotators are {', '.join(ENDONUKE_ANNOTATORS)}",
        )
    return [name for name in ENDONUKE_ANNOTATORS if name in set(annotators)]


def _output_side(mpp: float) -> int:
    side = round(TILE_WIDTH_UM / mpp)
    if not MIN_SIDE <= side <= MAX_SIDE:
        raise ConfigError(
            f"--mpp {mpp} gives {side} x {side} px tiles (EndoNuke tiles are 100 um wide)",
            hint=f"choose --mpp between {TILE_WIDTH_UM / MAX_SIDE:.4f} and {TILE_WIDTH_UM / MIN_SIDE:g}",
        )
    return side


def _locate(root: Path, shown: str) -> Path:
    """The folder holding ``dataset/`` (the published ``data/``): ``root`` itself or ``root/data``.

    ``root/dataset`` given directly (the folder with images/ and labels/) is accepted too.
    """
    for candidate in (root, root / "data"):
        if (candidate / "dataset" / "images").is_dir():
            return candidate
    if root.name == "dataset" and (root / "images").is_dir():
        return root.parent
    raise DatasetLayoutError(
        f"{shown}: no EndoNuke layout found (expected data/dataset/images/<id>.png and "
        "data/dataset/labels/bulk/<annotator>/<id>.txt)",
        hint="pass the unpacked data/ folder, its parent, or data.zip",
    )


def _visible(folder: Path) -> list[Path]:
    """Entries of a folder without hidden names (macOS ``._*`` files, our own temp files), sorted."""
    return sorted(p for p in folder.iterdir() if not p.name.startswith("."))


def _stem_key(stem: str) -> tuple[int, str]:
    return (int(stem), stem)


def _scan(data_dir: Path, paths: _Paths, selected: list[str] | None, counters: dict[str, int]) -> list[_Tile]:
    """Find, pair and validate every selected label file with its image, before anything is written."""
    images_dir = data_dir / "dataset" / "images"
    bulk_dir = data_dir / "dataset" / "labels" / "bulk"
    if not bulk_dir.is_dir():
        raise DatasetLayoutError(
            f"{paths.show(bulk_dir)}: missing; expected one folder of <id>.txt keypoint files per annotator",
            hint="EndoNuke's labels live in data/dataset/labels/bulk/<annotator>/",
        )
    images: dict[str, Path] = {}
    for path in _visible(images_dir):
        if not (path.is_file() and path.suffix.lower() == ".png"):
            continue
        if not path.stem.isdigit():
            raise DatasetLayoutError(
                f"{paths.show(path)}: unexpected name; EndoNuke images are named <integer id>.png",
                hint="remove or rename files that are not part of the dataset",
            )
        images[path.stem] = path

    labels: dict[str, tuple[str, Path]] = {}
    unknown_files = 0
    not_selected: set[str] = set()
    for folder in _visible(bulk_dir):
        if not folder.is_dir():
            continue
        txts = [p for p in _visible(folder) if p.is_file() and p.suffix.lower() == ".txt"]
        if folder.name not in ENDONUKE_ANNOTATORS:
            log.warning(
                "skipping %s: unknown annotator folder (%d label files); EndoNuke's annotators are %s",
                paths.show(folder),
                len(txts),
                ", ".join(ENDONUKE_ANNOTATORS),
            )
            unknown_files += len(txts)
            continue
        if selected is not None and folder.name not in selected:
            not_selected.update(p.stem for p in txts)
            continue
        for txt in txts:
            if not txt.stem.isdigit():
                raise DatasetLayoutError(
                    f"{paths.show(txt)}: unexpected name; EndoNuke label files are named <integer id>.txt",
                    hint="remove or rename files that are not part of the dataset",
                )
            if txt.stem in labels:
                raise DatasetLayoutError(
                    f"{paths.show(txt)}: tile {txt.stem} is also labelled in {paths.show(labels[txt.stem][1])}; "
                    "each bulk tile must have one annotator",
                    hint="choose annotators with --annotator",
                )
            if txt.stem not in images:
                raise DatasetLayoutError(
                    f"{paths.show(txt)}: its image {paths.show(images_dir / (txt.stem + '.png'))} is missing; "
                    "every label file needs the image with the same id",
                    hint="the download may be incomplete; unpack data.zip again",
                )
            labels[txt.stem] = (folder.name, txt)

    unlabelled = set(images) - set(labels)
    filtered = unlabelled & not_selected
    counters["images_without_labels"] = len(unlabelled - filtered)
    if selected is not None:
        counters["images_of_unselected_annotators"] = len(filtered)
    counters["unknown_annotator_files"] = unknown_files
    if counters["images_without_labels"]:
        log.info("%d images have no bulk label file and are skipped", counters["images_without_labels"])
    if not labels:
        raise DatasetLayoutError(
            f"{paths.show(bulk_dir)}: no label files"
            + (f" from annotators {', '.join(selected)}" if selected else "")
            + f" ({len(images)} images found)",
            hint="check the download, or the --annotator selection",
        )

    tiles: list[_Tile] = []
    counters["empty_label_files"] = 0
    counters["edge_points_clamped"] = 0
    for stem in track(sorted(labels, key=_stem_key), "Checking EndoNuke labels", total=len(labels), unit="file"):
        annotator, label = labels[stem]
        tile = _read_tile(stem, images[stem], label, annotator, paths)
        counters["empty_label_files"] += int(len(tile.points) == 0)
        counters["edge_points_clamped"] += int(
            np.count_nonzero((tile.points[:, 0] == tile.width) | (tile.points[:, 1] == tile.height))
        )
        tiles.append(tile)
    return tiles


def _image_size(path: Path, paths: _Paths) -> tuple[int, int]:
    """Width and height from the PNG header (no decoding)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return image.size
    except UnidentifiedImageError as exc:
        raise InputError(
            f"cannot read image {paths.show(path)}: not a recognised image format", hint="the file may be damaged"
        ) from exc
    except (OSError, SyntaxError, ValueError) as exc:
        reason = " ".join(str(exc).replace(str(path), paths.show(path)).split())
        raise InputError(f"cannot read image {paths.show(path)}: {reason}", hint="the file may be damaged") from exc


def _read_tile(stem: str, image: Path, label: Path, annotator: str, paths: _Paths) -> _Tile:
    width, height = _image_size(image, paths)
    if width != height:
        raise DatasetLayoutError(
            f"{paths.show(image)}: {width}x{height} pixels; EndoNuke tiles are square (100 x 100 um)",
            hint="the physical scale is taken from the width, so a non-square tile is not an EndoNuke tile",
        )
    try:
        nuclei = read_centroids_txt(label)
    except InputError as exc:
        raise DatasetLayoutError(exc.message.replace(str(label), paths.show(label)), hint=exc.hint) from exc
    points = np.array([n.centroid for n in nuclei], dtype=np.float64).reshape(-1, 2)
    for index, nucleus in enumerate(nuclei):
        if nucleus.type not in ENDONUKE_CLASS_NAMES:
            found = "no class code" if nucleus.type is None else f"class {nucleus.type}"
            raise DatasetLayoutError(
                f"{paths.show(label)}:{_line_number(label, index)}: {found}; expected 'x y class' with class "
                "0 (stroma), 1 (epithelium) or 2 (other)",
            )
        x, y = points[index]
        if not (0 <= x <= width and 0 <= y <= height):
            raise DatasetLayoutError(
                f"{paths.show(label)}:{_line_number(label, index)}: point ({x:g}, {y:g}) lies outside the "
                f"{width}x{height} tile; expected 0 <= x <= {width} and 0 <= y <= {height}",
                hint="coordinates are (x, y) pixels of the tile with x = column",
            )
    classes = np.array([n.type for n in nuclei], dtype=np.int64)
    return _Tile(stem, image, label, annotator, width, height, points, classes)


def _line_number(path: Path, index: int) -> int:
    """The 1-based line of the ``index``-th point (blank lines are skipped by the reader); error path only."""
    lines = [n for n, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1) if line.split()]
    return lines[index] if index < len(lines) else index + 1


def _grid_starts(length: int, size: int, stride: int) -> list[int]:
    starts = list(range(0, length - size + 1, stride))
    if starts[-1] != length - size:
        starts.append(length - size)
    return starts


def _plan_crops(tile: _Tile, side: int, mode: str, crop_size: int, grid_overlap: int, paths: _Paths) -> list[_Crop]:
    if mode != "none" and side < crop_size:
        raise ConfigError(
            f"{paths.show(tile.image)}: {side}x{side} px after resampling to 100 um, smaller than "
            f"--crop-size {crop_size}",
            hint="use --crops none, a smaller --crop-size, or a smaller --mpp",
        )
    return crop_windows(side, side, mode, crop_size, grid_overlap)


# ------------------------------------------------------------------------------------------------ conversion


def _resample(image: np.ndarray, side: int) -> np.ndarray:
    """Bilinear, anti-aliased resize to ``side x side``, rounded to uint8 (identity when already that size)."""
    if image.shape[:2] == (side, side):
        return image
    from skimage.transform import resize

    resized = resize(image, (side, side, image.shape[2]), order=1, anti_aliasing=True, preserve_range=True)
    return np.clip(np.rint(resized), 0, 255).astype(np.uint8)


def _convert_tile(
    tile: _Tile,
    side: int,
    crops: Iterable[_Crop],
    split: str,
    tmp: Path,
    counters: dict[str, int],
    paths: _Paths,
) -> list[dict[str, Any]]:
    """Resample one tile, cut its crops, write images and labels; return the sample records."""
    image = read_image(tile.image)
    if image.shape[:2] != (tile.height, tile.width):  # the header promised another size: a damaged file
        raise InputError(f"cannot read image {paths.show(tile.image)}: decoded size differs from its header")
    resampled = _resample(image, side)
    points = resample_points(tile.points, tile.width, tile.height, side, side)
    scale = side / tile.width
    covered = np.zeros(len(points), dtype=bool)
    records = []
    for crop in crops:
        sample_id = tile.stem if crop.suffix is None else f"{tile.stem}_{crop.suffix}"
        inside = (
            (points[:, 0] >= crop.x0)
            & (points[:, 0] < crop.x0 + crop.width)
            & (points[:, 1] >= crop.y0)
            & (points[:, 1] < crop.y0 + crop.height)
        )
        covered |= inside
        _write_sample(tmp / split, sample_id, resampled, crop, points[inside], tile.classes[inside])
        dropped = int(len(points) - np.count_nonzero(inside))
        counters["dropped_points"] += dropped
        records.append(
            {
                "id": sample_id,
                "split": split,
                "source_image": tile.stem,
                "annotator": tile.annotator,
                "source_size": [tile.width, tile.height],
                "scale": scale,
                "crop": [crop.x0, crop.y0, crop.width, crop.height],
                "n_points": int(np.count_nonzero(inside)),
                "dropped_points": dropped,
            }
        )
    counters["points_outside_all_crops"] += int(len(points) - np.count_nonzero(covered))
    return records


def _write_sample(
    folder: Path, sample_id: str, image: np.ndarray, crop: _Crop, points: np.ndarray, classes: np.ndarray
) -> None:
    window = image[crop.y0 : crop.y0 + crop.height, crop.x0 : crop.x0 + crop.width]
    write_image(folder / "images" / f"{sample_id}.png", np.ascontiguousarray(window))
    nuclei = [
        Nucleus(id=i + 1, centroid=(x - crop.x0, y - crop.y0), type=int(code))
        for i, ((x, y), code) in enumerate(zip(points.tolist(), classes.tolist(), strict=True))
    ]
    write_centroids_txt(folder / "labels" / f"{sample_id}.txt", nuclei)


__all__ = ["crop_windows", "prepare_endonuke", "resample_points"]
