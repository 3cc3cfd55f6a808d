"""Torch ``Dataset`` classes over prepared data (the folders ``histostain prepare`` writes, docs/formats.md).

* :class:`TranslationPairs` (prepared BCI): HE/IHC pairs for stain translation, paired or unpaired.
* :class:`NucleiSamples` (prepared PanNuke): image, instance map and type map for HoVer-Net.
* :class:`KeypointSamples` (prepared EndoNuke): image and ``(x, y)`` nucleus keypoints with classes;
  batch with :func:`collate_keypoints`.

Every class validates the folder with :func:`~histostain.datasets.prepared.load_prepared` and raises
:class:`~histostain.errors.DatasetLayoutError` (naming the file, or listing the available splits) before any
sample is read.

Randomness
    The random choices of sample ``i`` (dihedral transform, crop, colour jitter, the unpaired partner) come
    from ``numpy.random.default_rng([seed, epoch, i])``: they depend only on the seed, the epoch and the index,
    not on the DataLoader worker that reads the sample, so a run is reproducible with any ``num_workers``.
    Call ``set_epoch(epoch)`` before iterating each epoch to get new draws. With ``persistent_workers=True``
    the workers keep the epoch they were started with, so use the default (workers re-created per epoch).
    ``augment=False`` disables every augmentation (evaluation mode: a crop becomes the centre crop).

Geometry and colour follow :mod:`histostain.datasets.augment`: the 8 dihedral transforms are applied
identically to an image, its label maps and its keypoints; colour jitter changes the image only.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from histostain.datasets import augment as aug
from histostain.datasets.prepared import Manifest, load_prepared
from histostain.errors import ConfigError, DatasetLayoutError, InputError
from histostain.io.annotations import read_centroids_txt
from histostain.io.images import read_image
from histostain.vocabulary import PANNUKE_TYPE_NAMES

log = logging.getLogger(__name__)

DIRECTIONS = ("ihc2he", "he2ihc")


# ---------------------------------------------------------------------------------------------------- shared


def _split_records(folder: Path, manifest: Manifest, split: str) -> list[dict[str, Any]]:
    """The sample records of ``split`` in manifest order; a missing split lists the available ones."""
    available = [name for name, count in manifest.splits.items() if count > 0 and (folder / name).is_dir()]
    if split not in available:
        raise DatasetLayoutError(
            f"{folder} has no split {split!r} (available: {', '.join(available) or 'none'})",
            hint="choose one of the available splits, or re-run `histostain prepare` with other fractions",
        )
    records = [record for record in manifest.samples if record.get("split") == split]
    expected = manifest.splits[split]
    if len(records) != expected:
        raise DatasetLayoutError(
            f"{folder / 'manifest.json'}: split {split!r} lists {len(records)} sample records, expected {expected}",
            hint="the manifest is damaged; re-run `histostain prepare` with --overwrite",
        )
    for record in records:
        if not isinstance(record.get("id"), str) or not record["id"]:
            raise DatasetLayoutError(f"{folder / 'manifest.json'}: a {split!r} sample record has no 'id'")
    return records


def _require_file(path: Path, what: str) -> None:
    if not path.is_file():
        raise DatasetLayoutError(
            f"{path}: missing; expected {what}", hint="the prepared folder is incomplete; re-run `histostain prepare`"
        )


def _check_jitter(colour_jitter: float, jitter_space: str) -> None:
    if not colour_jitter >= 0:
        raise ConfigError(f"colour jitter must be >= 0, got {colour_jitter}")
    if jitter_space not in aug.JITTER_SPACES:
        raise ConfigError(f"colour jitter space must be one of {', '.join(aug.JITTER_SPACES)}, got {jitter_space!r}")


def _image_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 ``H x W x 3`` -> float32 ``3 x H x W`` in [0, 1]."""
    chw = np.empty((3, *image.shape[:2]), dtype=np.float32)
    np.divide(image.transpose(2, 0, 1), np.float32(255.0), out=chw)
    return torch.from_numpy(chw)


class _EpochSeeded:
    """What every dataset here shares: one split of a prepared folder, ``set_epoch`` and per-sample draws."""

    seed: int = 0
    epoch: int = 0

    def _open_split(self, prepared: Path, dataset: str, split: str, jitter: float, jitter_space: str) -> None:
        """Check the colour-jitter options, then read the manifest and the split's sample records."""
        _check_jitter(jitter, jitter_space)
        self.folder = Path(prepared)
        self.manifest = load_prepared(self.folder, dataset)
        self.split = split
        self.records = _split_records(self.folder, self.manifest, split)
        self.ids = [record["id"] for record in self.records]

    def set_epoch(self, epoch: int) -> None:
        """Select the random draws of ``epoch`` (call before iterating each epoch)."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self.epoch = int(epoch)

    def _rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, int(index)])


def _check_index(index: int, length: int) -> int:
    if index < 0:
        index += length
    if not 0 <= index < length:
        raise IndexError(f"sample index {index} out of range for {length} samples")
    return int(index)


# ------------------------------------------------------------------------------------------------------ bci


class TranslationPairs(_EpochSeeded, Dataset):
    """HE/IHC patches of prepared BCI for stain translation.

    Each sample is ``{"A": float32 3 x H x W in [-1, 1], "B": ..., "id_A": str, "id_B": str}`` with A = IHC and
    B = HE for ``direction="ihc2he"`` (swapped for ``"he2ihc"``).

    * ``paired=True``: B is the partner of A (same id) and both get the same crop and dihedral transform,
      so they stay aligned (pix2pix-style and paired metrics).
    * ``paired=False``: B is drawn at random from the split (CycleGAN-style), deterministic given ``seed``,
      the epoch and the index; A and B get independent crops and transforms.
    * ``crop``: random ``crop x crop`` window (centre window when ``augment=False``).
    * ``colour_jitter``: strength of the colour jitter (0 = off) applied to A, the input domain, only, so a
      paired target keeps its true colours.
    """

    def __init__(
        self,
        prepared: Path,
        split: str,
        *,
        paired: bool = True,
        direction: str = "ihc2he",
        crop: int | None = None,
        augment: bool = True,
        colour_jitter: float = 0.0,
        jitter_space: str = "hed",
        seed: int = 0,
    ) -> None:
        if direction not in DIRECTIONS:
            raise ConfigError(f"direction must be one of {', '.join(DIRECTIONS)}, got {direction!r}")
        if crop is not None and crop <= 0:
            raise ConfigError(f"crop must be a positive number of pixels, got {crop}")
        self._open_split(prepared, "bci", split, colour_jitter, jitter_space)
        self.paired = paired
        self.direction = direction
        self.crop = crop
        self.augment = augment
        self.colour_jitter = float(colour_jitter)
        self.jitter_space = jitter_space
        self.seed = int(seed)
        self.epoch = 0
        self.domain_a, self.domain_b = ("IHC", "HE") if direction == "ihc2he" else ("HE", "IHC")
        for sample_id in self.ids:
            for domain in ("HE", "IHC"):
                _require_file(self._path(domain, sample_id), f"the {domain} patch of sample {sample_id}")

    def _path(self, domain: str, sample_id: str) -> Path:
        return self.folder / self.split / domain / f"{sample_id}.png"

    def __len__(self) -> int:
        return len(self.ids)

    def _window(self, rng: np.random.Generator, image: np.ndarray, path: Path) -> tuple[int, int]:
        height, width = image.shape[:2]
        assert self.crop is not None
        if self.crop > height or self.crop > width:
            raise ConfigError(
                f"crop {self.crop} is larger than {path} ({height} x {width})", hint="choose a smaller crop"
            )
        if self.augment:
            return aug.random_crop_origin(rng, height, width, self.crop)
        return aug.centre_crop_origin(height, width, self.crop)

    def _geometry(self, rng: np.random.Generator, images: list[np.ndarray], path: Path) -> list[np.ndarray]:
        """One crop window and one dihedral transform, applied to every image in ``images``."""
        if self.crop is not None:
            y0, x0 = self._window(rng, images[0], path)
            images = [aug.crop(image, y0, x0, self.crop) for image in images]
        if self.augment:
            k = aug.random_dihedral(rng)
            images = [aug.dihedral(image, k) for image in images]
        return images

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = _check_index(index, len(self))
        rng = self._rng(index)
        id_a = self.ids[index]
        id_b = id_a if self.paired else self.ids[int(rng.integers(len(self.ids)))]
        path_a, path_b = self._path(self.domain_a, id_a), self._path(self.domain_b, id_b)
        image_a, image_b = read_image(path_a), read_image(path_b)
        if self.paired:
            if image_a.shape != image_b.shape:
                raise DatasetLayoutError(
                    f"{path_b}: shape {image_b.shape[:2]} differs from its partner {path_a} ({image_a.shape[:2]})",
                    hint="paired patches must have the same size; re-run `histostain prepare`",
                )
            image_a, image_b = self._geometry(rng, [image_a, image_b], path_a)
        else:
            (image_a,) = self._geometry(rng, [image_a], path_a)
            (image_b,) = self._geometry(rng, [image_b], path_b)
        if self.augment and self.colour_jitter > 0:
            image_a = aug.colour_jitter(image_a, rng, self.colour_jitter, self.jitter_space)
        return {
            "A": _image_tensor(image_a).mul_(2.0).sub_(1.0),
            "B": _image_tensor(image_b).mul_(2.0).sub_(1.0),
            "id_A": id_a,
            "id_B": id_b,
        }


# -------------------------------------------------------------------------------------------------- pannuke

PANNUKE_ARRAYS: dict[str, tuple[np.dtype, int]] = {
    "images.npy": (np.dtype(np.uint8), 4),
    "inst_maps.npy": (np.dtype(np.int32), 3),
    "type_maps.npy": (np.dtype(np.uint8), 3),
}


def _open_npy(path: Path) -> np.ndarray:
    _require_file(path, "a numpy array written by `histostain prepare pannuke`")
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise DatasetLayoutError(f"{path}: not a readable .npy array ({exc})") from exc


@dataclass(frozen=True)
class NucleiArrays:
    """One augmented PanNuke sample as numpy arrays: what :class:`NucleiSamples` turns into tensors.

    A consumer with its own input convention (HoVer-Net takes RGB in 0..255 and augments uint8 images) reads
    these instead of undoing the [0, 1] scaling of the tensor sample.
    """

    image: np.ndarray  # uint8 H x W x 3 RGB
    inst_map: np.ndarray  # int32 H x W, 0 background, ids 1..n
    type_map: np.ndarray  # uint8 H x W, 0 background, 1..5
    id: str
    tissue: str


class NucleiSamples(_EpochSeeded, Dataset):
    """Patches of prepared PanNuke for HoVer-Net training.

    Each sample is ``{"image": float32 3 x H x W in [0, 1], "inst_map": int32 H x W (0 background, ids 1..n),
    "type_map": int64 H x W (0 background, 1..5), "id": str, "tissue": str}``. Note the image is scaled to
    [0, 1]; a network expecting 0..255 input reads :meth:`arrays` (the same sample, uint8) instead.

    The arrays are memory-mapped (``np.load(mmap_mode="r")``) and opened lazily in the process that reads them;
    the maps are never pickled to DataLoader workers and a forked worker reopens its own handles.

    Augmentation: one dihedral transform applied identically to image, instance map and type map (exact pixel
    moves, so instance ids and classes stay intact and connected). The HoVer-Net horizontal/vertical distance
    targets are derived later from the augmented ``inst_map``, so they need no special handling here. Colour
    jitter (``colour_jitter > 0``) changes the image only.
    """

    def __init__(
        self,
        prepared: Path,
        split: str,
        *,
        augment: bool = True,
        colour_jitter: float = 0.0,
        jitter_space: str = "hed",
        seed: int = 0,
    ) -> None:
        self._open_split(prepared, "pannuke", split, colour_jitter, jitter_space)
        self.augment = augment
        self.colour_jitter = float(colour_jitter)
        self.jitter_space = jitter_space
        self.seed = int(seed)
        self.epoch = 0
        self._arrays: dict[str, np.ndarray] | None = None
        self._pid: int | None = None
        self.shape = self._validate()

    def _validate(self) -> tuple[int, int]:
        arrays = {name: _open_npy(self.folder / self.split / name) for name in PANNUKE_ARRAYS}
        images = arrays["images.npy"]
        n = len(self.records)
        height, width = images.shape[1:3] if images.ndim == 4 else ("H", "W")
        for name, (dtype, ndim) in PANNUKE_ARRAYS.items():
            array = arrays[name]
            expected = (n, height, width, 3) if ndim == 4 else (n, height, width)
            if array.dtype != dtype or array.shape != expected:
                shape = "(" + ", ".join(str(v) for v in expected) + ")"
                raise DatasetLayoutError(
                    f"{self.folder / self.split / name}: {array.dtype} {array.shape}, expected {dtype} {shape}"
                    f" (row i = sample record i of split {self.split!r})",
                    hint="the folder does not match its manifest; re-run `histostain prepare` with --overwrite",
                )
        del arrays  # the maps are reopened lazily by the process that reads samples
        return int(height), int(width)

    def _open(self) -> dict[str, np.ndarray]:
        if self._arrays is None or self._pid != os.getpid():
            self._arrays = {name: _open_npy(self.folder / self.split / name) for name in PANNUKE_ARRAYS}
            self._pid = os.getpid()
        return self._arrays

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_arrays"] = None  # a memmap would otherwise be pickled with all its data
        state["_pid"] = None
        return state

    def __len__(self) -> int:
        return len(self.records)

    @property
    def mpp(self) -> float | None:
        """The scale of the patches in micrometres per pixel, when the manifest records one (else None)."""
        value = self.manifest.options.get("mpp")
        return float(value) if isinstance(value, int | float) and value > 0 else None

    @property
    def class_names(self) -> dict[int, str]:
        """Type id -> name: the manifest's ``class_names`` when it records them, else PanNuke's (0 = Background)."""
        recorded = self.manifest.options.get("class_names")
        if isinstance(recorded, Mapping) and recorded:
            return {int(code): str(name) for code, name in recorded.items()}
        return {0: "Background", **PANNUKE_TYPE_NAMES}

    def arrays(self, index: int) -> NucleiArrays:
        """Sample ``index`` as uint8 image and label arrays, after the same augmentation as ``self[index]``."""
        index = _check_index(index, len(self))
        arrays = self._open()
        image = np.array(arrays["images.npy"][index])
        inst_map = np.array(arrays["inst_maps.npy"][index])
        type_map = np.array(arrays["type_maps.npy"][index])
        rng = self._rng(index)
        if self.augment:
            image, inst_map, type_map = aug.dihedral_many([image, inst_map, type_map], aug.random_dihedral(rng))
            if self.colour_jitter > 0:
                image = aug.colour_jitter(image, rng, self.colour_jitter, self.jitter_space)
        record = self.records[index]
        return NucleiArrays(
            image=np.ascontiguousarray(image),
            inst_map=np.ascontiguousarray(inst_map, dtype=np.int32),
            type_map=np.ascontiguousarray(type_map),
            id=record["id"],
            tissue=str(record.get("tissue", "")),
        )

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.arrays(index)
        return {
            "image": _image_tensor(sample.image),
            "inst_map": torch.from_numpy(sample.inst_map),
            "type_map": torch.from_numpy(sample.type_map.astype(np.int64)),
            "id": sample.id,
            "tissue": sample.tissue,
        }


# ------------------------------------------------------------------------------------------------- endonuke


class KeypointSamples(_EpochSeeded, Dataset):
    """Images and nucleus keypoints of prepared EndoNuke.

    Each sample is ``{"image": float32 3 x H x W in [0, 1], "points": float32 (N, 2) as (x, y), "classes":
    int64 (N,), "id": str}``; batch with ``DataLoader(..., collate_fn=collate_keypoints)``.

    ``class_map`` maps the stored class codes (0 stroma, 1 epithelium, 2 other) to training classes; points
    whose code is not a key are dropped (``{0: 0, 1: 1, 2: 0}`` merges "other" into stroma as EndoNet does,
    ``{0: 0, 1: 1}`` drops it). Augmentation: one dihedral transform applied to the image and, exactly, to the
    points (pixel-centre convention, see :mod:`histostain.datasets.augment`); colour jitter on the image only.
    """

    def __init__(
        self,
        prepared: Path,
        split: str,
        *,
        augment: bool = True,
        class_map: Mapping[int, int] | None = None,
        colour_jitter: float = 0.0,
        jitter_space: str = "hed",
        seed: int = 0,
    ) -> None:
        self._open_split(prepared, "endonuke", split, colour_jitter, jitter_space)
        self.augment = augment
        self.class_map = {int(k): int(v) for k, v in class_map.items()} if class_map is not None else None
        self.colour_jitter = float(colour_jitter)
        self.jitter_space = jitter_space
        self.seed = int(seed)
        self.epoch = 0
        for sample_id in self.ids:
            _require_file(self._image_path(sample_id), f"the image of sample {sample_id}")
            _require_file(self._label_path(sample_id), f"the keypoints of sample {sample_id} ('x y class' lines)")

    def _image_path(self, sample_id: str) -> Path:
        return self.folder / self.split / "images" / f"{sample_id}.png"

    def _label_path(self, sample_id: str) -> Path:
        return self.folder / self.split / "labels" / f"{sample_id}.txt"

    def __len__(self) -> int:
        return len(self.ids)

    def _read_points(self, sample_id: str) -> tuple[np.ndarray, np.ndarray]:
        path = self._label_path(sample_id)
        try:
            nuclei = read_centroids_txt(path)
        except InputError as exc:
            raise DatasetLayoutError(exc.message, hint=exc.hint) from exc
        points = np.array([n.centroid for n in nuclei], dtype=np.float64).reshape(-1, 2)
        if any(n.type is None for n in nuclei):
            raise DatasetLayoutError(f"{path}: a point has no class; expected 'x y class' lines")
        classes = np.array([n.type for n in nuclei], dtype=np.int64)
        if self.class_map is not None:
            keep = np.array([code in self.class_map for code in classes], dtype=bool)
            points = points[keep]
            classes = np.array([self.class_map[int(code)] for code in classes[keep]], dtype=np.int64)
        return points, classes

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = _check_index(index, len(self))
        sample_id = self.ids[index]
        image = read_image(self._image_path(sample_id))
        points, classes = self._read_points(sample_id)
        rng = self._rng(index)
        if self.augment:
            k = aug.random_dihedral(rng)
            height, width = image.shape[:2]
            image = aug.dihedral(image, k)
            points = aug.dihedral_points(points, k, height, width)
            if self.colour_jitter > 0:
                image = aug.colour_jitter(image, rng, self.colour_jitter, self.jitter_space)
        return {
            "image": _image_tensor(image),
            "points": torch.from_numpy(points.astype(np.float32).reshape(-1, 2)),
            "classes": torch.from_numpy(classes.astype(np.int64)),
            "id": sample_id,
        }


def collate_keypoints(batch: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Batch keypoint samples: images stacked to ``B x 3 x H x W`` (a list if their sizes differ), and
    ``points``, ``classes`` and ``id`` as lists (each sample has its own number of points)."""
    images = [sample["image"] for sample in batch]
    same_size = len({tuple(image.shape) for image in images}) == 1
    return {
        "image": torch.stack(images) if same_size else images,
        "points": [sample["points"] for sample in batch],
        "classes": [sample["classes"] for sample in batch],
        "id": [sample["id"] for sample in batch],
    }


__all__ = ["DIRECTIONS", "KeypointSamples", "NucleiArrays", "NucleiSamples", "TranslationPairs", "collate_keypoints"]
