"""Label-map -> H&E pairs of prepared PanNuke, for training a pix2pix generator that renders tissue from labels.

:class:`LabelPairs` yields ``{"A": the encoded label map, "B": the H&E patch, "id_A", "id_B"}`` in the
convention of :class:`~histostain.datasets.torch_data.TranslationPairs` (float32 ``3 x H x W`` in [-1, 1], A the
generator's input), so a pix2pix trainer takes either. The label map is
:func:`histostain.synth.label_maps.encode_label_map` of the patch's instance and type maps (encoding
``histostain-labels-v1``): exactly what ``histostain synth --renderer pix2pix`` gives the trained generator.

The label map is encoded on the whole patch, then one crop window and one dihedral transform are applied to A and
B together (drawn in that order from ``numpy.random.default_rng([seed, epoch, index])``, as ``TranslationPairs``
draws them), so they stay pixel-aligned, a crop keeps the contacts with nuclei outside it, and a run is the same
with any number of DataLoader workers. ``set_epoch(epoch)`` selects new draws; ``augment=False`` gives the centre
crop and no transform. There is no colour jitter: the target keeps its true colours and the input is a code.

The patches are read through :class:`~histostain.datasets.torch_data.NucleiSamples` (same validation, lazily
memory-mapped arrays that are never pickled to workers).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from histostain.datasets import augment as aug
from histostain.datasets.torch_data import NucleiSamples, _check_index, _EpochSeeded, _image_tensor
from histostain.errors import ConfigError
from histostain.synth.label_maps import ENCODING, encode_label_map


class LabelPairs(_EpochSeeded, Dataset):
    """Encoded label maps (A) and H&E patches (B) of one split of prepared PanNuke; see the module docstring.

    ``crop``: a random ``crop x crop`` window (the centre one when ``augment=False``), the same for A and B;
    ``augment``: one random dihedral transform per sample, the same for A and B; ``seed``: with the epoch and
    the index, fixes every draw.
    """

    encoding = ENCODING

    def __init__(
        self,
        prepared: Path,
        split: str,
        *,
        crop: int | None = None,
        augment: bool = True,
        seed: int = 0,
    ) -> None:
        if crop is not None and crop <= 0:
            raise ConfigError(f"crop must be a positive number of pixels, got {crop}")
        self.samples = NucleiSamples(prepared, split, augment=False)  # validates the folder and its arrays
        self.folder, self.manifest, self.split = self.samples.folder, self.samples.manifest, split
        self.records, self.ids = self.samples.records, self.samples.ids
        height, width = self.samples.shape
        if crop is not None and (crop > height or crop > width):
            raise ConfigError(
                f"crop {crop} is larger than the patches of {self.folder / split} ({height} x {width})",
                hint="choose a smaller crop",
            )
        self.crop = crop
        self.augment = augment
        self.seed = int(seed)
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.samples)

    def arrays(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Sample ``index`` as uint8 ``H x W x 3`` arrays ``(label map, H&E)``, after the crop and transform."""
        index = _check_index(index, len(self))
        raw = self.samples.arrays(index)  # augment=False: the stored rows
        images = [encode_label_map(raw.inst_map, raw.type_map), raw.image]
        rng = self._rng(index)
        if self.crop is not None:
            height, width = raw.image.shape[:2]
            if self.augment:
                y0, x0 = aug.random_crop_origin(rng, height, width, self.crop)
            else:
                y0, x0 = aug.centre_crop_origin(height, width, self.crop)
            images = [aug.crop(image, y0, x0, self.crop) for image in images]
        if self.augment:
            images = aug.dihedral_many(images, aug.random_dihedral(rng))
        label_map, image = (np.ascontiguousarray(image) for image in images)
        return label_map, image

    def __getitem__(self, index: int) -> dict[str, Any]:
        label_map, image = self.arrays(index)
        sample_id = self.ids[_check_index(index, len(self))]
        return {
            "A": _image_tensor(label_map).mul_(2.0).sub_(1.0),
            "B": _image_tensor(image).mul_(2.0).sub_(1.0),
            "id_A": sample_id,
            "id_B": sample_id,
        }


__all__ = ["LabelPairs"]
