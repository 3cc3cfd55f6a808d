"""The label-map encoding: type colours, contact lines between touching nuclei, black background, exact decoding."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from histostain.datasets import augment as aug
from histostain.synth.generate import generate_tile
from histostain.synth.label_maps import (
    BACKGROUND_COLOUR,
    BOUNDARY_COLOUR,
    MAX_TYPE,
    UNTYPED_COLOUR,
    contact_pixels,
    decode_label_map,
    encode_label_map,
)
from histostain.vocabulary import PANNUKE_TYPE_COLOURS, TYPE_PALETTE

FOUR = ndi.generate_binary_structure(2, 1)


@pytest.fixture(scope="module")
def tiles():
    return [generate_tile(seed, 96) for seed in range(3)]


def touching_pair(same_type: bool) -> tuple[np.ndarray, np.ndarray]:
    """Two 4 x 3 nuclei sharing a vertical edge, and a lone one."""
    inst = np.zeros((10, 12), dtype=np.int32)
    inst[2:6, 2:5] = 1
    inst[2:6, 5:8] = 2
    inst[7:9, 9:11] = 3
    types = np.zeros_like(inst, dtype=np.uint8)
    types[inst == 1] = 1
    types[inst == 2] = 1 if same_type else 3
    types[inst == 3] = 5
    return inst, types


def test_nucleus_pixels_take_their_type_colour_and_background_is_black(tiles) -> None:
    for tile in tiles:
        rgb = encode_label_map(tile.inst_map, tile.type_map)
        assert rgb.dtype == np.uint8 and rgb.shape == (*tile.inst_map.shape, 3)
        contact = contact_pixels(tile.inst_map)
        nucleus = tile.inst_map > 0
        assert (rgb[~nucleus] == BACKGROUND_COLOUR).all()
        assert (rgb[contact] == BOUNDARY_COLOUR).all()
        assert not (contact & ~nucleus).any()
        for code, colour in PANNUKE_TYPE_COLOURS.items():
            here = nucleus & ~contact & (tile.type_map == code)
            assert (rgb[here] == colour).all()
        assert (nucleus & ~contact).sum() > 0.8 * nucleus.sum()  # contacts are thin


def test_contacts_separate_touching_nuclei_of_the_same_type() -> None:
    inst, types = touching_pair(same_type=True)
    rgb = encode_label_map(inst, types)
    assert (rgb[2:6, 4] == BOUNDARY_COLOUR).all() and (rgb[2:6, 5] == BOUNDARY_COLOUR).all()
    assert (rgb[2:6, 2:4] == TYPE_PALETTE[1]).all() and (rgb[2:6, 6:8] == TYPE_PALETTE[1]).all()
    assert (rgb[7:9, 9:11] == TYPE_PALETTE[5]).all()  # no line against the background
    red = (rgb == TYPE_PALETTE[1]).all(axis=2)
    assert ndi.label(red, FOUR)[1] == 2  # the two nuclei are two regions


def test_every_region_of_one_colour_lies_in_one_nucleus(tiles) -> None:
    contacts = 0
    for tile in tiles:
        rgb = encode_label_map(tile.inst_map, tile.type_map)
        contacts += int(contact_pixels(tile.inst_map).sum())
        packed = rgb[..., 0].astype(np.int64) << 16 | rgb[..., 1].astype(np.int64) << 8 | rgb[..., 2]
        for value in np.unique(packed):
            if value in (0, 0xFFFFFF):
                continue
            regions, count = ndi.label(packed == value, FOUR)
            for region in range(1, count + 1):
                ids = np.unique(tile.inst_map[regions == region])
                assert len(ids) == 1 and ids[0] > 0
    assert contacts > 0  # the synthetic tissue has touching nuclei, so the property was exercised


def test_types_decode_back_exactly_on_non_contact_pixels(tiles) -> None:
    for tile in tiles:
        types, nucleus, contact = decode_label_map(encode_label_map(tile.inst_map, tile.type_map))
        assert np.array_equal(nucleus, tile.inst_map > 0)
        assert np.array_equal(contact, contact_pixels(tile.inst_map))
        interior = ~contact
        assert np.array_equal(types[interior], np.where(tile.inst_map > 0, tile.type_map, 0)[interior])


def test_encoding_commutes_with_every_dihedral_transform(tiles) -> None:
    tile = tiles[0]
    rgb = encode_label_map(tile.inst_map, tile.type_map)
    for k in range(8):
        moved = encode_label_map(aug.dihedral(tile.inst_map, k), aug.dihedral(tile.type_map, k))
        assert np.array_equal(moved, aug.dihedral(rgb, k))


def test_untyped_nuclei_are_grey_and_typed_background_stays_black() -> None:
    inst, types = touching_pair(same_type=False)
    types[inst == 3] = 0
    types[0, 0] = 2  # a type outside every instance
    rgb = encode_label_map(inst, types)
    assert (rgb[7:9, 9:11] == UNTYPED_COLOUR).all()
    assert (rgb[0, 0] == BACKGROUND_COLOUR).all()
    decoded, nucleus, _ = decode_label_map(rgb)
    assert nucleus[7:9, 9:11].all() and (decoded[7:9, 9:11] == 0).all()
    assert len({BACKGROUND_COLOUR, BOUNDARY_COLOUR, UNTYPED_COLOUR, *TYPE_PALETTE[1:]}) == MAX_TYPE + 3


def test_invalid_maps_and_foreign_colours_are_refused() -> None:
    inst, types = touching_pair(same_type=True)
    with pytest.raises(ValueError, match="one shape"):
        encode_label_map(inst, types[:-1])
    with pytest.raises(ValueError, match="types must be"):
        encode_label_map(inst, np.where(inst > 0, MAX_TYPE + 1, 0))
    with pytest.raises(ValueError, match=">= 0"):
        encode_label_map(-inst, types)
    with pytest.raises(ValueError, match="outside the encoding"):
        decode_label_map(np.full((4, 4, 3), 200, dtype=np.uint8))
