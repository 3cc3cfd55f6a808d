"""HoVer-Net's training data: samples with NP/HV/TP targets, the sizes the network trains at, and the splits.

Per sample (in the DataLoader workers): one of the 8 flips/rotations (from :class:`NucleiSamples`, on the stored
uint8 arrays), the reference's input augmentation (image only), then the NP / HV / TP targets from the augmented
instance and type maps, centre-cropped to the network's output window. The sizes come from
:mod:`histostain.segmentation.geometry` (the published ones) or, for other inputs and the scaled test networks,
from the network itself; the data's scale and class names from the prepared dataset.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from histostain.errors import ConfigError, DatasetLayoutError
from histostain.segmentation.augment import InputAugment
from histostain.segmentation.config import MODE_SIZES, HoVerNetConfig
from histostain.segmentation.geometry import GEOMETRIES, HoVerNetGeometry, geometry_for
from histostain.segmentation.targets import centre_crop, make_targets
from histostain.vocabulary import PANNUKE_TYPE_NAMES

log = logging.getLogger(__name__)


class HoVerNetSamples(Dataset):
    """Training / validation samples for HoVer-Net over a :class:`NucleiSamples` split.

    Each sample is ``{"image": float32 3 x S x S RGB in 0..255 (the network's input), "np": int64 O x O,
    "hv": float32 2 x O x O, "tp": int64 O x O (typed only), "inst": int32 O x O (the instance map of the output
    window), "id": str}`` with S the input and O the output side. The image is the stored uint8 patch (flipped
    or rotated, then input-augmented) converted once to float. Random draws of the input augmentation come from
    ``default_rng([seed, epoch, index, 1])`` (independent of the worker, like the dataset's own flips).
    """

    def __init__(
        self,
        base: Any,
        *,
        input_size: int,
        output_size: int,
        typed: bool,
        min_area: int = 30,
        augment: InputAugment | None = None,
    ) -> None:
        self.base = base
        self.input_size = int(input_size)
        self.output_size = int(output_size)
        self.typed = typed
        self.min_area = int(min_area)
        self.augment = augment
        self.seed = int(getattr(base, "seed", 0))
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        if hasattr(self.base, "set_epoch"):
            self.base.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.base.arrays(index)
        image, inst, types = sample.image, sample.inst_map, sample.type_map
        window = (self.input_size, self.input_size)
        if image.shape[:2] != window:  # larger patches: the centre window, as the reference's CropToFixedSize
            image, inst, types = (centre_crop(a, window) for a in (image, inst, types))
        if self.augment is not None:
            rng = np.random.default_rng([self.seed, self.epoch, int(index), 1])
            image = self.augment(np.ascontiguousarray(image), rng)
        out = (self.output_size, self.output_size)
        targets = make_targets(inst, out, types.astype(np.int64) if self.typed else None, min_area=self.min_area)
        item: dict[str, Any] = {
            "image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32)),
            "np": torch.from_numpy(targets.np.astype(np.int64)),
            "hv": torch.from_numpy(targets.hv),
            "inst": torch.from_numpy(np.ascontiguousarray(centre_crop(inst, out), dtype=np.int32)),
            "id": sample.id,
        }
        if targets.tp is not None:
            item["tp"] = torch.from_numpy(targets.tp)
        return item

    def geometry(self, mode: str) -> HoVerNetGeometry:
        """What the network trains at on these samples: the input and output sides, and the data's scale
        (recorded by the prepared dataset, else the published one: PanNuke is 40x, 0.25 um/px)."""
        mpp = getattr(self.base, "mpp", None) or geometry_for(mode).mpp
        return HoVerNetGeometry(mode, self.input_size, self.output_size, mpp)

    def type_names(self, num_types: int) -> dict[int, str] | None:
        """Type code -> name of a model with ``num_types`` classes trained on these samples."""
        return type_names(num_types, getattr(self.base, "class_names", None))


def type_names(num_types: int, known: Mapping[int, str] | None = None) -> dict[int, str] | None:
    """Type code -> name for codes ``0 .. num_types - 1`` (None without a type branch).

    ``known``: the data's names; by default PanNuke's, with 0 = Background (the typed data histostain prepares).
    A code the data does not name is called ``type <code>``.
    """
    if num_types <= 0:
        return None
    names = dict(known) if known else {0: "Background", **PANNUKE_TYPE_NAMES}
    return {code: names.get(code, f"type {code}") for code in range(num_types)}


def network_sizes(config: HoVerNetConfig, patch: int) -> tuple[int, int]:
    """(input, output) sides for ``patch``-pixel data; a ConfigError when the sizes cannot work.

    The published geometry of the mode when the network is trained at its published input with the published
    decoder; otherwise the output the network computes (valid convolutions in the decoder decide it).
    """
    from histostain.segmentation.hovernet import DEFAULT_DECODER_UNITS, HoVerNet

    reference = config.reference_geometry
    input_size = config.input_size or patch
    if input_size > patch:
        fast = GEOMETRIES["fast"].patch_in
        advice = f"use --mode fast for {fast} px PanNuke patches" if config.mode != "fast" else "set input_size"
        raise ConfigError(
            f"input_size {input_size} is larger than the {patch} px patches",
            hint=f"{config.mode} mode is trained on {reference.patch_in} px inputs; {advice}",
        )
    if input_size == reference.patch_in and tuple(config.decoder_units) == tuple(DEFAULT_DECODER_UNITS):
        return reference.patch_in, reference.patch_out
    probe = HoVerNet(
        config.mode,
        None,
        encoder_width=1 / 64,
        units=[1, 1, 1, 1],
        decoder_width=0.125,
        decoder_units=config.decoder_units,
    )
    try:
        return input_size, probe.output_size(input_size)
    except ValueError as exc:
        raise ConfigError(
            f"{exc}",
            hint=f"{config.mode} mode expects {reference.patch_in} px inputs ({MODE_SIZES}); "
            "set input_size to a size that fits",
        ) from exc


def build_datasets(prepared: Path, config: HoVerNetConfig) -> tuple[HoVerNetSamples, HoVerNetSamples | None]:
    """The train split (augmented) and, when it exists and validation is on, the val split (centre only)."""
    from histostain.datasets.torch_data import NucleiSamples

    base = NucleiSamples(prepared, "train", augment=config.augment, seed=config.seed)
    input_size, output_size = network_sizes(config, min(base.shape))
    if config.types is not None:
        _check_types(base, config.num_types)
    augment = InputAugment.from_config(config) if config.input_augment else None
    options = {
        "input_size": input_size,
        "output_size": output_size,
        "typed": config.types is not None,
        "min_area": config.min_area,
    }
    train = HoVerNetSamples(base, augment=augment, **options)
    val = None
    if config.val_every:
        try:
            val = HoVerNetSamples(NucleiSamples(prepared, "val", augment=False, seed=config.seed), **options)
        except DatasetLayoutError:
            log.info("%s has no val split: validation is off", prepared)
    return train, val


def _check_types(base: Any, num_types: int) -> None:
    path = base.folder / base.split / "type_maps.npy"
    largest = int(np.load(path, mmap_mode="r").max(initial=0))
    if largest >= num_types:
        raise ConfigError(
            f"{path} holds type {largest}, but num_types is {num_types} (types 0..{num_types - 1})",
            hint=f"set num_types to at least {largest + 1} (PanNuke: 6 including background)",
        )


__all__ = ["HoVerNetSamples", "build_datasets", "network_sizes", "type_names"]
