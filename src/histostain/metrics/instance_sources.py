"""Instance maps from files, one side of an evaluation at a time: label TIFFs, hover_net ``.mat``, PanNuke arrays.

Everything here reads and checks inputs, and nothing scores: a :class:`LabelSource` lists the images of one side
(by file stem or by array row) and loads one map on demand, so the services hold one image per side at a time;
:func:`open_pannuke_masks` and :func:`read_tissues` open the ``masks.npy``/``types.npy`` layout of the official
PanNuke protocol. Large ``.npy`` files are read a chunk of rows at a time (:class:`NpyRows`). Problems with the
files are :class:`~histostain.errors.InputError` naming the file.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from histostain.errors import ConfigError, InputError
from histostain.io.npy import NpyRows
from histostain.metrics.defaults import SPLIT_ALL
from histostain.metrics.instance import as_labels
from histostain.metrics.pairing import pair_by_stem
from histostain.metrics.pannuke import N_CLASSES, binarize
from histostain.metrics.splits import SplitChoice, choose_split


@dataclass
class LabelSource:
    """Instance maps on one side of an evaluation: names, a loader per index, and whether they are an array."""

    description: str
    names: list[str]
    load: Callable[[int], np.ndarray]
    where: Callable[[int], str]
    is_array: bool
    split: SplitChoice | None = None  # prepared data: the split(s) read


LABEL_SUFFIXES = (".tif", ".tiff", ".mat")


def _inst_map_from_array(values: Any, where: str) -> np.ndarray:
    try:
        return as_labels(values, where)
    except ValueError as exc:
        raise InputError(f"{where}: {str(exc).split(': ', 1)[-1]}") from exc


def read_mat_inst_map(path: Path) -> np.ndarray:
    """``inst_map`` of a hover_net/CoNSeP ``.mat`` file (``inst_type`` is not needed for these metrics)."""
    from scipy.io import loadmat

    try:
        with Path(path).open("rb") as handle:
            header = handle.read(128)
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if header.startswith(b"MATLAB 7.3"):  # v7.3 files are HDF5 containers, which scipy cannot read
        raise InputError(
            f"cannot read {path}: MATLAB v7.3 (HDF5) files are not supported",
            hint="save it with scipy.io.savemat or MATLAB's save -v7",
        )
    try:
        content = loadmat(path, variable_names=["inst_map"])
    except Exception as exc:  # scipy raises several types for damaged files
        raise InputError(f"cannot read {path}: not a readable .mat file ({type(exc).__name__}: {exc})") from exc
    if "inst_map" not in content:
        raise InputError(f"{path}: no 'inst_map' variable", hint="hover_net .mat files hold inst_map (H x W ids)")
    inst = np.asarray(content["inst_map"])
    if inst.ndim != 2:
        raise InputError(f"{path}: inst_map has shape {inst.shape}; expected a 2-D map of instance ids")
    return _inst_map_from_array(inst, str(path))


def _file_source(files: list[Path], description: str) -> LabelSource:
    from histostain.io.images import read_label_tiff

    stems: dict[str, Path] = {}
    for path in files:
        if path.stem in stems:
            raise InputError(
                f"{description}: two label files share the stem {path.stem!r} ({stems[path.stem].name}, {path.name})"
            )
        stems[path.stem] = path
    names = sorted(stems)

    def load(index: int) -> np.ndarray:
        path = stems[names[index]]
        if path.suffix.lower() == ".mat":
            return read_mat_inst_map(path)
        return _inst_map_from_array(read_label_tiff(path), str(path))

    return LabelSource(description, names, load, lambda i: str(stems[names[i]]), is_array=False)


def prepared_pannuke_split(folder: Path, split: str | None) -> tuple[SplitChoice, dict[str, list[str]]]:
    """The split(s) a prepared PanNuke folder is evaluated on and the sample ids of each, in row order."""
    from histostain.datasets.prepared import load_prepared

    manifest = load_prepared(folder)
    if manifest.dataset != "pannuke":
        raise InputError(
            f"{folder}: prepared {manifest.dataset!r} data has no instance maps; expected prepared PanNuke data"
        )
    choice = choose_split(folder, list(manifest.splits), split)
    ids: dict[str, list[str]] = {}
    for name in choice.splits:
        rows = [sample for sample in manifest.samples if sample.get("split") == name]
        ids[name] = [str(sample.get("id", index)) for index, sample in enumerate(rows)]
    return choice, ids


def _pooled_source(sources: list[LabelSource], description: str, choice: SplitChoice) -> LabelSource:
    """Several splits' array sources read as one, in split order (``--split all``)."""
    if len(sources) == 1:
        sources[0].description, sources[0].split = description, choice
        return sources[0]
    index: list[tuple[LabelSource, int]] = [(source, i) for source in sources for i in range(len(source.names))]
    names = [source.names[i] for source, i in index]
    if len(set(names)) != len(names):
        raise InputError(f"{description}: a sample id appears in two splits; pooled splits pair by id")
    return LabelSource(
        description,
        names,
        lambda k: index[k][0].load(index[k][1]),
        lambda k: index[k][0].where(index[k][1]),
        is_array=True,
        split=choice,
    )


def _array_source(array: NpyRows, names: list[str], path: Path, description: str, merge: bool) -> LabelSource:
    """Rows of ``(N, H, W)`` instance maps, or (``merge``) ``(N, H, W, C>=5)`` PanNuke masks merged with binarize."""
    if merge:
        if array.ndim != 4 or array.shape[-1] < 5:
            raise InputError(f"{path}: shape {array.shape}; expected PanNuke masks (N, H, W, 6)")
    elif array.ndim != 3:
        raise InputError(f"{path}: shape {array.shape}; expected instance maps (N, H, W)")
    if len(names) != array.shape[0]:
        raise InputError(f"{path}: holds {array.shape[0]} maps but the manifest lists {len(names)} samples")

    def load(index: int) -> np.ndarray:
        row = np.asarray(array[index])
        if merge:
            return binarize(_inst_map_from_array(row[..., :5], f"{path} row {index}"))
        return _inst_map_from_array(row, f"{path} row {index}")

    return LabelSource(description, names, load, lambda i: f"{path} row {i}", is_array=True)


def open_label_source(path: Path, split: str | None = None, side: str = "true") -> LabelSource:
    """Instance maps from label TIFFs / ``.mat`` files (a folder or one file), prepared PanNuke data or masks.npy."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{side} not found: {path}")
    if path.is_file():
        if path.name.endswith(".npy"):
            array = NpyRows(path, "masks.npy")
            return _array_source(array, [str(i) for i in range(array.shape[0])], path, str(path), merge=True)
        if path.suffix.lower() not in LABEL_SUFFIXES:
            raise InputError(f"{path}: not a label file; expected .tif/.tiff label images or hover_net .mat files")
        return _file_source([path], str(path))
    if (path / "manifest.json").is_file():
        choice, ids = prepared_pannuke_split(path, split)
        sources = []
        for name, names in ids.items():
            maps = path / name / "inst_maps.npy"
            sources.append(_array_source(NpyRows(maps, "inst_maps.npy"), names, maps, f"{path} ({name})", merge=False))
        return _pooled_source(sources, f"{path} ({choice.label})", choice)
    if (path / "masks.npy").is_file():
        array = NpyRows(path / "masks.npy", "masks.npy")
        names = [str(i) for i in range(array.shape[0])]
        return _array_source(array, names, path / "masks.npy", str(path), merge=True)
    folder = path
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in LABEL_SUFFIXES)
    if not files and (folder / "mat").is_dir():  # a hover_net run_infer output folder
        folder = folder / "mat"
        files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() == ".mat")
    if not files:
        raise InputError(
            f"{path}: no instance maps found",
            hint="expected label TIFFs (.tif), hover_net .mat files (inst_map), a prepared PanNuke folder "
            "(manifest.json) or a PanNuke-layout folder with masks.npy",
        )
    return _file_source(files, str(folder))


def pair_sources(true: LabelSource, pred: LabelSource) -> tuple[list[tuple[int, int]], list[str], list[str]]:
    """Index pairs (true, pred): by position when both sides are arrays, else by file stem; plus unmatched names."""
    if true.is_array and pred.is_array:
        if len(true.names) != len(pred.names):
            raise InputError(
                f"{pred.description} holds {len(pred.names)} maps but {true.description} holds {len(true.names)}; "
                "array inputs are paired row by row"
            )
        return [(i, i) for i in range(len(true.names))], [], []
    paired = pair_by_stem(
        {name: i for i, name in enumerate(true.names)},
        {name: i for i, name in enumerate(pred.names)},
        no_match=InputError(
            f"no image of {true.description} has a prediction with the same name in {pred.description}",
            hint="ground truth and prediction files are paired by file stem (e.g. img_01.tif and img_01.mat)",
        ),
    )
    return [(t, p) for _, t, p in paired.matched], paired.only_true, paired.only_pred


# ------------------------------------------------------------------------------------------ PanNuke protocol


@dataclass
class PanNukeMasks:
    """One side of the PanNuke protocol: its ``masks.npy`` rows, ``types.npy`` (if any) and sample ids."""

    masks: NpyRows
    masks_path: Path
    types_path: Path | None
    names: list[str] | None
    description: str
    split: SplitChoice | None = None  # prepared data: the split read


def open_pannuke_masks(path: Path, split: str | None, side: str) -> PanNukeMasks:
    """masks.npy (and types.npy) of a PanNuke-metrics folder, a masks.npy file, or a prepared PanNuke split."""
    if not path.exists():
        raise InputError(f"{side} not found: {path}")
    names = None
    choice = None
    if path.is_file():
        if path.name.endswith(".npy"):
            folder, masks_path, description = path.parent, path, str(path)
        else:
            raise InputError(f"{path}: expected a folder holding masks.npy (the PanNuke-metrics layout)")
    elif (path / "manifest.json").is_file():
        if split == SPLIT_ALL:
            raise ConfigError(
                f"--split {SPLIT_ALL}: the PanNuke protocol scores one split at a time (the paper reports each fold "
                "and their mean)",
                hint="run it once per split with --split NAME, or use --protocol hovernet to pool the splits",
            )
        choice, ids = prepared_pannuke_split(path, split)
        names = ids[choice.name]
        folder = path / choice.name / "eval"
        masks_path, description = folder / "masks.npy", f"{path} ({choice.label})"
    else:
        folder, masks_path, description = path, path / "masks.npy", str(path)
    if not masks_path.is_file():
        raise InputError(
            f"{path}: no masks.npy",
            hint="the PanNuke protocol reads masks.npy (N, H, W, 6) and types.npy, as PanNuke-metrics run.py",
        )
    masks = NpyRows(masks_path, "masks.npy")
    if masks.ndim != 4 or masks.shape[-1] < N_CLASSES:
        raise InputError(f"{masks_path}: shape {masks.shape}; expected PanNuke masks (N, H, W, 6)")
    if masks.dtype.kind not in "iufb":
        raise InputError(f"{masks_path}: dtype {masks.dtype}; expected numeric instance ids")
    types_path = folder / "types.npy"
    return PanNukeMasks(masks, masks_path, types_path if types_path.is_file() else None, names, description, choice)


def read_tissues(path: Path | None, masks_path: Path, n: int) -> list[str]:
    """The tissue name of every image, from ``types.npy`` (unicode or bytes; object arrays are refused)."""
    if path is None:
        raise InputError(
            f"no types.npy beside {masks_path}",
            hint="the PanNuke protocol averages per tissue: types.npy holds each image's tissue name",
        )
    try:
        types = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise InputError(
            f"cannot read {path}: {str(exc).splitlines()[0]}",
            hint="expected a plain unicode array of tissue names (object arrays are not loaded)",
        ) from exc
    if types.ndim != 1 or types.shape[0] != n:
        raise InputError(f"{path}: shape {types.shape}; expected ({n},), one tissue name per image of {masks_path}")
    if types.dtype.kind == "S":
        return [t.decode("utf-8", "replace") for t in types.tolist()]
    if types.dtype.kind != "U":
        raise InputError(f"{path}: dtype {types.dtype}; expected tissue names (strings)")
    return [str(t) for t in types.tolist()]


__all__ = [
    "LABEL_SUFFIXES",
    "LabelSource",
    "PanNukeMasks",
    "open_label_source",
    "open_pannuke_masks",
    "pair_sources",
    "prepared_pannuke_split",
    "read_mat_inst_map",
    "read_tissues",
]
