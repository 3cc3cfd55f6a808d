"""The generator: ground-truth consistency, statistics, stain behaviour and determinism."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage.color import rgb2hed
from skimage.measure import regionprops

from histostain.synth import generate_tile, tile_seeds
from histostain.synth.constants import CONNECTIVE, INFLAMMATORY, NEOPLASTIC, TUMOUR


@pytest.fixture(scope="module")
def tiles():
    """A fixed sample of 256 x 256 tiles of every kind (generated once for the module)."""
    kinds = ["tumour", "glandular", "stromal"]
    return [generate_tile(100 + i, 256, kind=kinds[i % 3]) for i in range(18)]


def test_instance_map_is_consistent(tiles):
    for tile in tiles:
        inst, types = tile.inst_map, tile.type_map
        assert inst.dtype == np.int32 and types.dtype == np.uint8
        n = len(tile.nuclei)
        assert [nucleus.id for nucleus in tile.nuclei] == list(range(1, n + 1))
        assert set(np.unique(inst)) - {0} == set(range(1, n + 1))  # every id non-empty, nothing else
        assert np.array_equal(types > 0, inst > 0)
        for nucleus in tile.nuclei:
            mask = inst == nucleus.id
            _, pieces = ndi.label(mask)  # 4-connectivity
            assert pieces == 1, f"nucleus {nucleus.id} of seed {tile.seed} has {pieces} pieces"
            rows, cols = np.nonzero(mask)
            assert nucleus.area == rows.size
            assert nucleus.x == pytest.approx(cols.mean()) and nucleus.y == pytest.approx(rows.mean())
            assert np.all(types[mask] == nucleus.type)
            assert nucleus.endonuke_class in (0, 1, 2)


def test_counts_sizes_and_shapes_follow_the_type_statistics(tiles):
    counts = np.array([len(t.nuclei) for t in tiles])
    assert 15 <= np.median(counts) <= 150 and counts.max() < 400
    assert (counts < 5).sum() <= 2  # sparse tiles (mostly glass) exist, but are rare
    props = {code: [] for code in range(1, 6)}
    for tile in tiles:
        for region in regionprops(tile.inst_map):
            code = int(tile.type_map[region.coords[0][0], region.coords[0][1]])
            if region.area >= 20 and not np.any(region.coords == 0) and not np.any(region.coords == 255):
                props[code].append((region.area, region.axis_minor_length / max(region.axis_major_length, 1e-6)))
    all_types = np.concatenate([t.types for t in tiles])
    fractions = np.bincount(all_types, minlength=6)[1:] / all_types.size
    assert np.all(fractions > 0.005), fractions  # all five types occur
    assert fractions.max() < 0.7
    area = {code: np.median([a for a, _ in values]) for code, values in props.items() if values}
    roundness = {code: np.median([r for _, r in values]) for code, values in props.items() if values}
    # At 0.25 um/px: neoplastic nuclei are large, inflammatory small and round, connective elongated.
    assert area[NEOPLASTIC] > 1.8 * area[INFLAMMATORY]
    assert 150 < area[NEOPLASTIC] < 1200
    assert roundness[INFLAMMATORY] > 0.8
    assert roundness[CONNECTIVE] < 0.5


def _hematoxylin(rgb: np.ndarray) -> np.ndarray:
    return rgb2hed(rgb)[..., 0]


@pytest.mark.parametrize("seed", [3, 11, 29])
def test_he_and_ihc_differ_in_colour_but_agree_on_nuclei(seed):
    tile = generate_tile(seed, 256, kind="tumour", her2=2)
    nuclei = tile.inst_map > 0
    assert nuclei.mean() > 0.03
    he, ihc = tile.he.astype(float), tile.ihc.astype(float)
    assert np.abs(he - ihc).mean() > 15  # different stains, visibly different colours
    assert rgb2hed(tile.he)[..., 1].mean() > 2 * rgb2hed(tile.ihc)[..., 1].mean()  # eosin only in H&E
    for rgb in (tile.he, tile.ihc):
        h = _hematoxylin(rgb)
        assert h[nuclei].mean() > h[~nuclei].mean() + 0.02
        assert np.corrcoef(h.ravel(), nuclei.ravel().astype(float))[0, 1] > 0.7


def test_dab_increases_with_her2_score():
    dab = []
    for score in range(4):
        tile = generate_tile(8, 256, kind="tumour", her2=score)
        tumour = tile.compartments == TUMOUR
        assert tumour.mean() > 0.1
        dab.append(rgb2hed(tile.ihc)[..., 2][tumour].mean())
        assert np.array_equal(tile.inst_map, generate_tile(8, 256, kind="tumour", her2=0).inst_map)
    assert all(b > a for a, b in zip(dab, dab[1:], strict=False)), dab
    assert dab[3] > dab[0] + 0.015


def test_he_has_no_dab_and_glass_is_bright():
    tile = generate_tile(5, 256, kind="stromal")
    assert rgb2hed(tile.he)[..., 2].mean() < rgb2hed(tile.ihc)[..., 2].mean() + 0.01
    assert tile.he.mean() > 120  # mostly light tissue, not a dark image


def test_deterministic_and_seed_sensitive():
    a, b, c = generate_tile(42, 96), generate_tile(42, 96), generate_tile(43, 96)
    for name in ("he", "ihc", "inst_map", "type_map"):
        assert np.array_equal(getattr(a, name), getattr(b, name))
    assert not np.array_equal(a.he, c.he)
    assert a.centroids.tolist() == b.centroids.tolist()


def test_tile_seed_does_not_depend_on_run_length():
    short, long = tile_seeds(9, 3), tile_seeds(9, 50)
    assert np.array_equal(generate_tile(short[2], 64).ihc, generate_tile(long[2], 64).ihc)
    assert not np.array_equal(generate_tile(long[1], 64).ihc, generate_tile(long[2], 64).ihc)


def test_empty_tile_and_options():
    tile = generate_tile(1, (64, 96), empty=True)
    assert tile.he.shape == (64, 96, 3) and tile.nuclei == [] and not tile.inst_map.any()
    assert tile.centroids.shape == (0, 2)
    with pytest.raises(ValueError, match="at least"):
        generate_tile(1, 16)
    with pytest.raises(ValueError, match="her2"):
        generate_tile(1, 64, her2=4)
    with pytest.raises(ValueError, match="kind"):
        generate_tile(1, 64, kind="bone")


def test_mpp_scales_nuclei():
    fine = generate_tile(21, 256, mpp=0.25, kind="stromal", empty=False)
    coarse = generate_tile(21, 256, mpp=0.5, kind="stromal", empty=False)
    assert np.median([n.area for n in fine.nuclei]) > 2.0 * np.median([n.area for n in coarse.nuclei])


def test_same_seed_sequence_object_twice_gives_the_same_tile():
    seed = tile_seeds(3, 2)[1]
    assert np.array_equal(generate_tile(seed, 64).he, generate_tile(seed, 64).he)


def test_nuclear_marker_stains_nuclei_brown_and_keeps_the_layout():
    membrane = generate_tile(14, 200, mpp=0.5, kind="glandular", her2=3)
    nuclear = generate_tile(14, 200, mpp=0.5, kind="glandular", her2=3, marker="nuclear")
    assert np.array_equal(membrane.inst_map, nuclear.inst_map)
    nuclei = nuclear.inst_map > 0
    dab = rgb2hed(nuclear.ihc)[..., 2]
    assert dab[nuclei].mean() > dab[~nuclei].mean() + 0.01
    with pytest.raises(ValueError, match="marker"):
        generate_tile(1, 64, marker="cd3")
