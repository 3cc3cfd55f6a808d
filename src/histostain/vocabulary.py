"""The datasets' vocabulary in one place: class names, tissues, annotators, HER2 levels and the type palette.

Every module that names a class, a tissue or a colour imports it from here, so readers, writers, metrics,
previews, overlays and QuPath output agree. Each constant names its published source; the tests compare them
with the facts in the team's reference notes, not with another copy.
"""

from __future__ import annotations

RGB = tuple[int, int, int]

# ------------------------------------------------------------------------------------------------- PanNuke
# Gamper et al. 2019/2020, the fold zips' README and PanNuke-metrics run.py: masks.npy channels 0..4 in this
# order (channel 5 is background). histostain's type id is channel + 1 (0 = background), as CellViT's
# dataset_config.yaml and hover_net's type_info.json number them.
PANNUKE_CLASSES: tuple[str, ...] = ("Neoplastic", "Inflammatory", "Connective", "Dead", "Epithelial")
PANNUKE_TYPE_NAMES: dict[int, str] = {index + 1: name for index, name in enumerate(PANNUKE_CLASSES)}

# The 19 tissue strings exactly as stored in types.npy (case, "_" and "-" matter), in the order of
# PanNuke-metrics run.py's ``tissue_types`` (alphabetical).
PANNUKE_TISSUES: tuple[str, ...] = (
    "Adrenal_gland",
    "Bile-duct",
    "Bladder",
    "Breast",
    "Cervix",
    "Colon",
    "Esophagus",
    "HeadNeck",
    "Kidney",
    "Liver",
    "Lung",
    "Ovarian",
    "Pancreatic",
    "Prostate",
    "Skin",
    "Stomach",
    "Testis",
    "Thyroid",
    "Uterus",
)

# ------------------------------------------------------------------------------------------------ EndoNuke
# Naumov et al., Data 2022: class codes as the authors' code uses them (0 stroma, 1 epithelium, 2 other nuclei;
# the seed project's README had them wrong), and the seven annotators of labels/bulk/<annotator>/.
ENDONUKE_CLASS_NAMES: dict[int, str] = {0: "stroma", 1: "epithelium", 2: "other"}
ENDONUKE_ANNOTATORS: tuple[str, ...] = ("ptg1", "ptg2", "ptg3", "stud1", "stud2", "stud3", "stud4")

# ------------------------------------------------------------------------------------------------------ BCI
# Liu et al., CVPRW 2022: HER2 scores as spelled in BCI file names (<number>_<split>_<level>.png).
BCI_HER2_LEVELS: tuple[str, ...] = ("0", "1+", "2+", "3+")

# ------------------------------------------------------------------------------------------------- palette
# One palette for every picture of nucleus types (training previews, overlays, GeoJSON classifications):
# hover_net's PanNuke ``type_info.json`` colours for types 0..5, so outputs look like hover_net's. Types past 5
# (models with more classes) continue with further distinct colours of histostain's choosing.
TYPE_PALETTE: tuple[RGB, ...] = (
    (0, 0, 0),  # 0 background ("nolabe")
    (255, 0, 0),  # 1 neoplastic
    (0, 255, 0),  # 2 inflammatory
    (0, 0, 255),  # 3 connective
    (255, 255, 0),  # 4 dead ("necros")
    (255, 165, 0),  # 5 epithelial ("no-neo")
    (0, 255, 255),  # 6 and on: histostain's extension
    (255, 0, 255),
    (128, 0, 255),
    (0, 128, 128),
)


def type_colour(type_id: int) -> RGB:
    """The palette colour of a type id (ids past the palette wrap around, skipping background)."""
    if type_id <= 0:
        return TYPE_PALETTE[0]
    return TYPE_PALETTE[1 + (type_id - 1) % (len(TYPE_PALETTE) - 1)]


PANNUKE_TYPE_COLOURS: dict[int, RGB] = {type_id: type_colour(type_id) for type_id in PANNUKE_TYPE_NAMES}
# EndoNuke defines no colours; its classes take the palette colour of the PanNuke type closest in meaning:
# stroma -> connective (blue), epithelium -> epithelial (orange), other nuclei -> inflammatory (green).
ENDONUKE_TYPE_COLOURS: dict[int, RGB] = {0: type_colour(3), 1: type_colour(5), 2: type_colour(2)}

__all__ = [
    "BCI_HER2_LEVELS",
    "ENDONUKE_ANNOTATORS",
    "ENDONUKE_CLASS_NAMES",
    "ENDONUKE_TYPE_COLOURS",
    "PANNUKE_CLASSES",
    "PANNUKE_TISSUES",
    "PANNUKE_TYPE_COLOURS",
    "PANNUKE_TYPE_NAMES",
    "RGB",
    "TYPE_PALETTE",
    "type_colour",
]
