"""The vocabulary against the published sources (transcribed here), not against another copy in the code."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from histostain import vocabulary as v

# PanNuke-metrics run.py ``tissue_types`` / CellViT dataset_config.yaml, as the team's reference notes quote them
# (reference/datasets.md 1.4): the strings exactly as stored in types.npy.
PUBLISHED_TISSUES = (
    "Adrenal_gland, Bile-duct, Bladder, Breast, Cervix, Colon, Esophagus, HeadNeck, Kidney, "
    "Liver, Lung, Ovarian, Pancreatic, Prostate, Skin, Stomach, Testis, Thyroid, Uterus"
)
# hover_net type_info.json (reference/segment_outputs.md 2.3): 0 nolabe, 1 neopla, 2 inflam, 3 connec, 4 necros,
# 5 no-neo with these RGB triples.
HOVERNET_TYPE_INFO = {
    0: (0, 0, 0),
    1: (255, 0, 0),
    2: (0, 255, 0),
    3: (0, 0, 255),
    4: (255, 255, 0),
    5: (255, 165, 0),
}
REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference"


def test_pannuke_tissues_are_the_published_19_strings_in_order() -> None:
    assert tuple(PUBLISHED_TISSUES.split(", ")) == v.PANNUKE_TISSUES


@pytest.mark.skipif(not (REFERENCE / "datasets.md").is_file(), reason="the team's reference notes are not here")
def test_pannuke_tissues_match_the_reference_notes_when_present() -> None:
    text = (REFERENCE / "datasets.md").read_text(encoding="utf-8")
    block = re.search(r"The 19 tissue strings.*?:\s*`([^`]+)`", text, re.S)
    assert block is not None
    listed = tuple(name.strip() for name in " ".join(block.group(1).split()).split(","))
    assert listed == v.PANNUKE_TISSUES


def test_pannuke_classes_follow_the_mask_channels_and_type_ids_are_channel_plus_one() -> None:
    # masks.npy channels 0..4 (fold README, PanNuke-metrics): neoplastic, inflammatory, connective, dead, epithelial
    assert [name.lower() for name in v.PANNUKE_CLASSES] == [
        "neoplastic",
        "inflammatory",
        "connective",
        "dead",
        "epithelial",
    ]
    assert {channel + 1: name for channel, name in enumerate(v.PANNUKE_CLASSES)} == v.PANNUKE_TYPE_NAMES


def test_endonuke_codes_and_annotators_are_the_authors() -> None:
    # The authors' code: 0 stroma, 1 epithelium, 2 other (the seed README's 1/2/0 mapping is wrong).
    assert v.ENDONUKE_CLASS_NAMES == {0: "stroma", 1: "epithelium", 2: "other"}
    assert v.ENDONUKE_ANNOTATORS == ("ptg1", "ptg2", "ptg3", "stud1", "stud2", "stud3", "stud4")


def test_bci_her2_levels_are_the_file_name_spellings() -> None:
    assert v.BCI_HER2_LEVELS == ("0", "1+", "2+", "3+")


def test_palette_starts_with_hover_net_type_info_and_never_repeats_a_colour() -> None:
    for type_id, colour in HOVERNET_TYPE_INFO.items():
        assert v.type_colour(type_id) == colour
    assert len(set(v.TYPE_PALETTE)) == len(v.TYPE_PALETTE)
    assert {t: HOVERNET_TYPE_INFO[t] for t in range(1, 6)} == v.PANNUKE_TYPE_COLOURS


def test_type_ids_past_the_palette_wrap_without_reaching_background() -> None:
    size = len(v.TYPE_PALETTE)
    assert v.type_colour(size) == v.type_colour(1)  # the first id past the end reuses type 1's colour
    assert all(v.type_colour(t) != v.TYPE_PALETTE[0] for t in range(1, 3 * size))
    assert v.type_colour(0) == v.type_colour(-3) == (0, 0, 0)


def test_endonuke_colours_borrow_the_closest_pannuke_type() -> None:
    assert v.ENDONUKE_TYPE_COLOURS == {0: (0, 0, 255), 1: (255, 165, 0), 2: (0, 255, 0)}
