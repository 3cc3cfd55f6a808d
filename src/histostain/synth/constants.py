"""Names, codes and statistics shared by the generator and the layout writers."""

from __future__ import annotations

from dataclasses import dataclass

from histostain.vocabulary import PANNUKE_TISSUES, PANNUKE_TYPE_NAMES

# PanNuke nucleus types (type id = PanNuke mask channel + 1; names from the vocabulary, lower case); 0 is background.
NEOPLASTIC, INFLAMMATORY, CONNECTIVE, DEAD, EPITHELIAL = 1, 2, 3, 4, 5
NUCLEUS_TYPES: dict[int, str] = {code: name.lower() for code, name in PANNUKE_TYPE_NAMES.items()}

# EndoNuke classes (datasets.md 2.3): 0 stroma, 1 epithelium, 2 other nuclei.
ENDONUKE_STROMA, ENDONUKE_EPITHELIUM, ENDONUKE_OTHER = 0, 1, 2

# Tissue compartments of a layout.
GLASS, STROMA, EPITHELIUM, TUMOUR, LUMEN = 0, 1, 2, 3, 4
COMPARTMENTS: dict[int, str] = {
    GLASS: "glass",
    STROMA: "stroma",
    EPITHELIUM: "epithelium",
    TUMOUR: "tumour",
    LUMEN: "lumen",
}

# How often each PanNuke tissue is drawn: its patch count in fold 1 (vocabulary order, alphabetical).
_FOLD1_PATCHES = (134, 159, 21, 827, 155, 478, 155, 70, 37, 65, 80, 54, 78, 77, 59, 50, 60, 80, 17)
PANNUKE_TISSUE_WEIGHTS: dict[str, int] = dict(zip(PANNUKE_TISSUES, _FOLD1_PATCHES, strict=True))

# Tissue kinds a layout can be drawn as, with their default probabilities.
KINDS: dict[str, float] = {"tumour": 0.45, "glandular": 0.30, "stromal": 0.25}


@dataclass(frozen=True)
class NucleusStats:
    """Shape and stain statistics of one nucleus type; lengths are micrometres, concentrations optical density.

    ``semi_major`` is the range of the semi-major axis, ``aspect`` of minor/major, ``jitter`` of the total
    amplitude of the Fourier perturbation of the boundary radius (harmonics 2..5). ``hematoxylin`` is the
    range of the H&E hematoxylin optical density, ``chromatin`` the contrast of the chromatin texture.
    """

    semi_major: tuple[float, float]
    aspect: tuple[float, float]
    jitter: tuple[float, float]
    hematoxylin: tuple[float, float]
    chromatin: float


NUCLEUS_STATS: dict[int, NucleusStats] = {
    NEOPLASTIC: NucleusStats((2.9, 4.8), (0.62, 0.95), (0.06, 0.16), (0.95, 1.35), 0.38),
    INFLAMMATORY: NucleusStats((1.7, 2.4), (0.85, 1.0), (0.01, 0.05), (1.55, 1.95), 0.12),
    CONNECTIVE: NucleusStats((3.4, 6.0), (0.20, 0.36), (0.02, 0.07), (1.05, 1.40), 0.18),
    DEAD: NucleusStats((1.2, 2.2), (0.55, 0.95), (0.18, 0.32), (1.90, 2.40), 0.10),
    EPITHELIAL: NucleusStats((2.4, 3.4), (0.60, 0.85), (0.01, 0.05), (0.85, 1.15), 0.18),
}

# Tile side when --size is not given: each layout's published size (BCI images are 1024 x 1024, PanNuke patches
# 256 x 256; EndoNuke mixes 200 and 400 px tiles and picks per tile), so `synth` then `prepare` chain by default.
DEFAULT_SIZES: dict[str, int | None] = {"bci": 1024, "pannuke": 256, "endonuke": None, "tiles": 256}
MIN_SIZE = 32
MAX_SIZE = 4096
