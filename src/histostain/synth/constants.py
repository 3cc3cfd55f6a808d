"""Names, codes and statistics shared by the generator and the layout writers."""

from __future__ import annotations

from dataclasses import dataclass

# PanNuke nucleus types (type id = PanNuke mask channel + 1); 0 is background.
NEOPLASTIC, INFLAMMATORY, CONNECTIVE, DEAD, EPITHELIAL = 1, 2, 3, 4, 5
NUCLEUS_TYPES: dict[int, str] = {
    NEOPLASTIC: "neoplastic",
    INFLAMMATORY: "inflammatory",
    CONNECTIVE: "connective",
    DEAD: "dead",
    EPITHELIAL: "epithelial",
}

# EndoNuke classes (datasets.md 2.3): 0 stroma, 1 epithelium, 2 other nuclei.
ENDONUKE_STROMA, ENDONUKE_EPITHELIUM, ENDONUKE_OTHER = 0, 1, 2
ENDONUKE_ANNOTATORS = ("ptg1", "ptg2", "ptg3", "stud1", "stud2", "stud3", "stud4")

# Tissue compartments of a layout.
GLASS, STROMA, EPITHELIUM, TUMOUR, LUMEN = 0, 1, 2, 3, 4
COMPARTMENTS: dict[int, str] = {
    GLASS: "glass",
    STROMA: "stroma",
    EPITHELIUM: "epithelium",
    TUMOUR: "tumour",
    LUMEN: "lumen",
}

# The 19 PanNuke tissue strings exactly as stored in types.npy, with the patch counts of fold 1 as weights.
PANNUKE_TISSUES: dict[str, int] = {
    "Adrenal_gland": 134,
    "Bile-duct": 159,
    "Bladder": 21,
    "Breast": 827,
    "Cervix": 155,
    "Colon": 478,
    "Esophagus": 155,
    "HeadNeck": 70,
    "Kidney": 37,
    "Liver": 65,
    "Lung": 80,
    "Ovarian": 54,
    "Pancreatic": 78,
    "Prostate": 77,
    "Skin": 59,
    "Stomach": 50,
    "Testis": 60,
    "Thyroid": 80,
    "Uterus": 17,
}

# HER2 scores 0..3 and their spelling in BCI file names.
HER2_LEVELS: tuple[str, ...] = ("0", "1+", "2+", "3+")

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

MIN_SIZE = 32
MAX_SIZE = 4096
