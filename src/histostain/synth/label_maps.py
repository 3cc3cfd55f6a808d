"""Label maps as RGB images: the input of a label-map -> H&E generator (pix2pix), and its renderer.

The encoding (:data:`ENCODING`, recorded wherever a generator is trained on it or run on it) uses only what
PanNuke has, instances and types, so a generator trained on prepared PanNuke can render ``histostain synth``
layouts (whose tissue compartments PanNuke does not label, so they are not encoded):

* background (instance 0): black ``(0, 0, 0)``, the palette's background colour;
* a nucleus pixel (instance > 0): its type's colour in :data:`histostain.vocabulary.TYPE_PALETTE`
  (1 neoplastic red, 2 inflammatory green, 3 connective blue, 4 dead yellow, 5 epithelial orange); a nucleus
  pixel without a type (type 0) is grey :data:`UNTYPED_COLOUR`;
* a contact pixel: white :data:`BOUNDARY_COLOUR`. A nucleus pixel is a contact pixel when one of its 4 neighbours
  belongs to *another nucleus* (both sides of a contact are marked), so touching nuclei, of the same type or not,
  are separated by a two-pixel white line and every 4-connected region of one colour lies inside one nucleus.
  Edges against the background are not drawn: the colour change already shows them, and a thin nucleus keeps its
  type colour.

The instance map defines where nuclei are: a typed pixel outside every instance is background. Types are
1..``MAX_TYPE`` (the palette's distinct colours); white, grey and black are none of them, so on every pixel
that is not a contact pixel the type is decoded back exactly (:func:`decode_label_map`). The encoding is
deterministic and pure numpy; it commutes with the 8 dihedral transforms (the 4-neighbourhood is symmetric),
so encoding and then flipping equals flipping and then encoding.

:class:`LabelMapRenderer` runs a generator on encoded label maps (``histostain synth --renderer pix2pix``).
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

import numpy as np

from histostain.vocabulary import RGB, TYPE_PALETTE

if TYPE_CHECKING:
    from histostain.runtime.device import DeviceManager
    from histostain.settings import ResolvedSettings, Settings
    from histostain.synth.generate import SynthTile

log = logging.getLogger(__name__)

ENCODING = "histostain-labels-v1"  # bump when any colour or rule below changes
BACKGROUND_COLOUR: RGB = TYPE_PALETTE[0]  # black
BOUNDARY_COLOUR: RGB = (255, 255, 255)  # white
UNTYPED_COLOUR: RGB = (128, 128, 128)  # a nucleus whose type is 0
MAX_TYPE = len(TYPE_PALETTE) - 1  # past this the palette wraps around and colours would repeat


def _palette() -> np.ndarray:
    """``(MAX_TYPE + 1, 3)`` uint8 lookup table: type -> colour, type 0 (a nucleus without type) grey."""
    table = np.array(TYPE_PALETTE, dtype=np.uint8)
    table[0] = UNTYPED_COLOUR
    return table


def contact_pixels(inst_map: np.ndarray) -> np.ndarray:
    """Boolean ``H x W``: nucleus pixels with a 4-neighbour in another nucleus (both sides of every contact)."""
    inst = np.asarray(inst_map)
    contact = np.zeros(inst.shape, dtype=bool)
    for axis in (0, 1):
        a = inst[:-1, :] if axis == 0 else inst[:, :-1]
        b = inst[1:, :] if axis == 0 else inst[:, 1:]
        touching = (a > 0) & (b > 0) & (a != b)
        if axis == 0:
            contact[:-1, :] |= touching
            contact[1:, :] |= touching
        else:
            contact[:, :-1] |= touching
            contact[:, 1:] |= touching
    return contact


def encode_label_map(inst_map: np.ndarray, type_map: np.ndarray) -> np.ndarray:
    """Instance map (0 background, ids > 0) and type map (0..``MAX_TYPE``) -> ``uint8 H x W x 3`` RGB label map.

    See the module docstring for the colours; raises ``ValueError`` for maps of different shapes, negative ids or
    types outside 0..``MAX_TYPE`` on nucleus pixels.
    """
    inst = np.asarray(inst_map)
    types = np.asarray(type_map)
    if inst.ndim != 2 or inst.shape != types.shape:
        raise ValueError(f"expected two H x W maps of one shape, got {inst.shape} and {types.shape}")
    nucleus = inst > 0
    if (inst < 0).any():
        raise ValueError("instance ids must be >= 0")
    codes = np.where(nucleus, types, 0).astype(np.int64)
    if codes.size and (codes.min() < 0 or codes.max() > MAX_TYPE):
        raise ValueError(
            f"nucleus types must be 0..{MAX_TYPE} to have distinct colours, got {codes.min()}..{codes.max()}"
        )
    rgb = np.zeros((*inst.shape, 3), dtype=np.uint8)
    rgb[...] = BACKGROUND_COLOUR
    rgb[nucleus] = _palette()[codes[nucleus]]
    rgb[contact_pixels(inst)] = BOUNDARY_COLOUR
    return rgb


def decode_label_map(label_map: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An encoded label map -> ``(type_map uint8, nucleus mask, contact mask)``.

    ``type_map`` is exact on every non-contact pixel (0 on background, on contact pixels and on untyped nuclei);
    ``nucleus`` is True on every nucleus pixel, contacts included. A colour outside the encoding raises
    ``ValueError`` (a generated image is not a label map).
    """
    rgb = np.asarray(label_map)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an H x W x 3 label map, got shape {rgb.shape}")
    packed = (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2].astype(np.int64)

    def key(colour: RGB) -> int:
        return (colour[0] << 16) | (colour[1] << 8) | colour[2]

    types = np.zeros(rgb.shape[:2], dtype=np.uint8)
    known = np.zeros(rgb.shape[:2], dtype=bool)
    for code in range(1, MAX_TYPE + 1):
        here = packed == key(TYPE_PALETTE[code])
        types[here] = code
        known |= here
    contact = packed == key(BOUNDARY_COLOUR)
    untyped = packed == key(UNTYPED_COLOUR)
    background = packed == key(BACKGROUND_COLOUR)
    if not (known | contact | untyped | background).all():
        raise ValueError(f"not a {ENCODING} label map: it has colours outside the encoding")
    return types, known | contact | untyped, contact


class LabelMapRenderer:
    """Render the H&E of a synthetic tile from its label map with an image-to-image generator (pix2pix).

    ``weights``: anything ``translate --weights`` takes (a generator file: reference pix2pix ``latest_net_G.pth``
    U-Net or ResNet, CycleGAN generator, histostain checkpoint; a training run folder; a registry name). Weights do
    not say what a generator was trained on, so any 3 -> 3 channel generator is accepted: the caller is trusted to
    pass a label-map -> H&E generator trained on :data:`ENCODING` label maps (e.g. ``train pix2pix --source
    labels``), and :meth:`record` keeps the file's SHA-256 so the output can be traced to it. No direction is
    asked for or checked. The generator is loaded once and runs through the
    :class:`~histostain.translation.translate.Translator` (any tile size, tiled with blending, batch norm with
    the stored running statistics), deterministic on a CPU.
    """

    name = "pix2pix"

    def __init__(
        self,
        weights: str | os.PathLike[str],
        device: DeviceManager | None = None,
        *,
        settings: Settings | ResolvedSettings | None = None,
    ) -> None:
        from histostain.errors import WeightsError
        from histostain.translation.compat import load_generator
        from histostain.translation.translate import Translator
        from histostain.weights.resolve import resolve_weights

        resolved = resolve_weights(weights, task="translation", settings=settings)
        model, loaded = load_generator(resolved.path, None)
        channels = (loaded.config.get("input_nc", 3), loaded.config.get("output_nc", 3))
        if tuple(int(c) for c in channels) != (3, 3):
            raise WeightsError(
                f"{resolved.path}: the generator maps {channels[0]} to {channels[1]} channels; a label-map -> H&E "
                "generator maps 3 (RGB label map) to 3 (RGB H&E)"
            )
        self.translator = Translator(model, device, source=loaded)
        self.loaded = loaded
        self.resolved = resolved

    def render(self, tile: SynthTile) -> np.ndarray:
        """The generator's H&E (uint8 ``H x W x 3``, the tile's size) from the tile's encoded label map."""
        return self.translator.translate(encode_label_map(tile.inst_map, tile.type_map))

    def record(self) -> dict[str, Any]:
        """What ``synth.json`` keeps: the renderer, the label-map encoding and the weights (path, SHA-256, arch)."""
        return {
            "he": self.name,
            "ihc": "beer-lambert",
            "label_map": ENCODING,
            "norm_mode": self.translator.norm_mode,
            "weights": {**self.loaded.to_dict(), "spec": self.resolved.kind},
        }


__all__ = [
    "BACKGROUND_COLOUR",
    "BOUNDARY_COLOUR",
    "ENCODING",
    "MAX_TYPE",
    "UNTYPED_COLOUR",
    "LabelMapRenderer",
    "contact_pixels",
    "decode_label_map",
    "encode_label_map",
]
