"""The weight-free classical segmenter: nuclei drawn with known stain amounts are found once each, at their
centres, with their DAB class; sizes are physical (um^2 through mpp); the stain is recognised; real EndoNuke
IHC tiles are segmented as well as their expert keypoints say."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from skimage import data
from skimage.color import hed2rgb
from skimage.io import imread
from skimage.transform import rescale

from histostain.errors import ConfigError
from histostain.metrics.detection import match_points
from histostain.segmentation.classical import ClassicalSegmenter, optical_densities, resolve_stain
from histostain.segmentation.positivity import DAB_OD, POSITIVITY
from histostain.synth import generate_tile

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "endonuke_dev_sample"
SKIMAGE_PER_OD = 1 / 6  # rgb2hed units per base-10 OD (positivity module docstring)
DAB_LEVELS = (0.05, 0.3, 0.5, 0.8)  # one per class: negative, 1+, 2+, 3+ at the default 0.2 / 0.4 / 0.6


def draw_nuclei(
    discs: list[tuple[float, float, float, float]], shape: tuple[int, int] = (160, 200), seed: int = 0
) -> np.ndarray:
    """RGB uint8 of discs ``(x, y, radius_px, dab_od)`` with 0.35 OD haematoxylin on pale stroma, Beer-Lambert
    mixed by skimage's own stain matrix (``hed2rgb``), with a little sensor noise."""
    height, width = shape
    conc = np.zeros((height, width, 3))
    conc[..., 0] = 0.04 * SKIMAGE_PER_OD
    yy, xx = np.mgrid[:height, :width]
    for x, y, radius, dab in discs:
        disc = (yy - y) ** 2 + (xx - x) ** 2 <= radius**2
        conc[disc, 0] = 0.35 * SKIMAGE_PER_OD
        conc[disc, 2] = dab * SKIMAGE_PER_OD
    noise = np.random.default_rng(seed).normal(0, 2, (height, width, 3))
    return np.clip(hed2rgb(conc) * 255 + noise, 0, 255).round().astype(np.uint8)


def grid_discs(radius: float = 8) -> list[tuple[float, float, float, float]]:
    return [
        (x, y, radius, DAB_LEVELS[(row + col) % 4])
        for row, y in enumerate(range(25, 160, 40))
        for col, x in enumerate(range(25, 200, 50))
    ]


def test_each_drawn_nucleus_is_found_once_at_its_centre_with_its_dab_class() -> None:
    discs = grid_discs()
    nuclei = ClassicalSegmenter(stain="ihc", mpp=0.5).segment(draw_nuclei(discs))
    assert len(nuclei) == len(discs)
    truth = np.array([(x, y) for x, y, _, _ in discs])
    pairs, missed, extra = match_points(truth, nuclei.centroids, 1.0)
    assert len(pairs) == len(discs) and len(missed) == 0 and len(extra) == 0
    expected_od = np.array([discs[t][3] for t, _ in pairs])
    found_od = nuclei.measurements[DAB_OD][pairs[:, 1]]
    np.testing.assert_allclose(found_od, expected_od, atol=0.02)  # the OD we drew, through uint8 and noise
    np.testing.assert_array_equal(
        nuclei.measurements[POSITIVITY][pairs[:, 1]], [DAB_LEVELS.index(d) for d in expected_od]
    )
    disc_area = np.pi * 8**2
    assert np.all(np.abs(nuclei.areas - disc_area) < 0.2 * disc_area)


def test_positivity_thresholds_are_the_segmenters_option() -> None:
    discs = grid_discs()
    nuclei = ClassicalSegmenter(stain="ihc", thresholds=(0.1, 0.7, 0.9)).segment(draw_nuclei(discs))
    classes = nuclei.measurements[POSITIVITY]
    od = nuclei.measurements[DAB_OD]
    np.testing.assert_array_equal(classes, np.searchsorted([0.1, 0.7, 0.9], od, side="right"))
    assert set(classes.tolist()) == {0, 1, 2}  # 0.05 -> neg, 0.3 / 0.5 -> 1+, 0.8 -> 2+, nothing reaches 0.9


def test_touching_nuclei_of_one_intensity_are_split() -> None:
    discs = grid_discs()[:8] + [(60, 140, 8, 0.5), (73, 140, 8, 0.5)]  # overlapping pair, centres 13 px apart
    nuclei = ClassicalSegmenter(stain="ihc").segment(draw_nuclei(discs))
    pair = np.array([(60, 140), (73, 140)])
    pairs, missed, _ = match_points(pair, nuclei.centroids, 3.0)
    assert len(pairs) == 2 and len(missed) == 0


def test_sizes_are_physical_through_mpp() -> None:
    """The same pixels are a nucleus at 0.5 um/px (50 um^2) and too small to be one at 0.1 um/px (2 um^2)."""
    image = draw_nuclei(grid_discs())
    assert len(ClassicalSegmenter(stain="ihc", mpp=0.5).segment(image)) == 16
    assert len(ClassicalSegmenter(stain="ihc", mpp=0.1).segment(image)) == 0
    # a speck under min_area_um2 (radius 1.5 px ~ 7 px ~ 1.8 um^2 at 0.5 um/px) is dropped
    specks = grid_discs()[:4] + [(175, 145, 1.5, 0.5)]
    assert len(ClassicalSegmenter(stain="ihc", mpp=0.5).segment(draw_nuclei(specks))) == 4


def test_a_scan_at_twice_the_resolution_gives_the_same_nuclei() -> None:
    image = draw_nuclei(grid_discs())
    small = ClassicalSegmenter(stain="ihc", mpp=0.5).segment(image)
    big_image = np.clip(rescale(image, 2, channel_axis=-1, order=1, preserve_range=True).round(), 0, 255)
    big = ClassicalSegmenter(stain="ihc", mpp=0.25).segment(big_image.astype(np.uint8))
    assert len(big) == len(small)
    pairs, _, _ = match_points(small.centroids * 2 + 0.5, big.centroids, 2.0)
    assert len(pairs) == len(small)


def test_stain_auto_tells_he_from_ihc() -> None:
    tile = generate_tile(3, 128)
    assert resolve_stain(optical_densities(tile.he)) == "he"
    assert resolve_stain(optical_densities(tile.ihc)) == "ihc"
    assert resolve_stain(optical_densities(np.ascontiguousarray(data.immunohistochemistry()[:256, :256]))) == "ihc"
    he = ClassicalSegmenter(stain="auto").segment(tile.he)
    assert len(he) > 0 and POSITIVITY not in he.measurements  # H&E nuclei get no DAB score


def test_glass_and_flat_images_have_no_nuclei() -> None:
    rng = np.random.default_rng(1)
    glass = np.clip(242 + rng.normal(0, 2, (128, 128, 3)), 0, 255).astype(np.uint8)
    for image in (glass, np.full((64, 64, 3), 255, np.uint8), np.zeros((64, 64, 3), np.uint8)):
        nuclei = ClassicalSegmenter(stain="ihc").segment(image)
        assert len(nuclei) == 0 and nuclei.inst_map.shape == image.shape[:2]


def test_skimage_ihc_sample_nuclei_are_nucleus_sized_and_mostly_positive_where_brown() -> None:
    """skimage's IHC sample (DAB-stained nuclei on haematoxylin) at its scan's ~0.5 um/px: nuclei are 10-150 um^2
    and the brown ones score higher than the blue ones."""
    image = np.ascontiguousarray(data.immunohistochemistry()[:256, :256])
    nuclei = ClassicalSegmenter(stain="ihc", mpp=0.5).segment(image)
    assert len(nuclei) >= 30
    area_um2 = nuclei.areas * 0.25
    assert 10 < np.median(area_um2) < 150
    od = optical_densities(image)
    inside_dab = np.array([od[..., 2][nuclei.inst_map == i].mean() for i in nuclei.ids])
    np.testing.assert_allclose(nuclei.measurements[DAB_OD], inside_dab, rtol=1e-5, atol=1e-6)


def test_real_endonuke_tiles_against_expert_keypoints() -> None:
    """Six real ER/PR tiles (two of the hardest of the development set among them): F1 at 3 um >= 0.75 pooled;
    the whole development set reaches 0.825 (benchmarks/eval_classical_endonuke.py)."""
    tp = fp = fn = 0
    for path in sorted((SAMPLE / "images").glob("*.png")):
        rgb = imread(path)[..., :3]
        truth = np.loadtxt(SAMPLE / "labels" / "bulk" / "ptg1" / f"{path.stem}.txt", ndmin=2)[:, :2]
        nuclei = ClassicalSegmenter(stain="auto", mpp=0.5).segment(rgb)
        assert POSITIVITY in nuclei.measurements  # recognised as IHC
        pairs, missed, extra = match_points(truth, nuclei.centroids, 6.0)
        tp, fp, fn = tp + len(pairs), fp + len(extra), fn + len(missed)
    assert tp + fn > 400
    assert 2 * tp / (2 * tp + fp + fn) >= 0.75


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"stain": "pas"}, "stain 'pas'"),
        ({"mpp": 0}, "mpp 0"),
        ({"min_area_um2": 50, "max_area_um2": 40}, "must be below"),
        ({"thresholds": (0.4, 0.2, 0.6)}, "must increase"),
        ({"marker_sigma_um": -1}, "marker_sigma_um -1"),
    ],
)
def test_bad_settings_are_config_errors(kwargs: dict, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        ClassicalSegmenter(**kwargs)


def test_only_uint8_rgb_is_accepted() -> None:
    with pytest.raises(ValueError, match="uint8 RGB"):
        ClassicalSegmenter().segment(np.zeros((8, 8, 3), np.float32))


def test_membrane_dab_mode_ignores_brown_membranes_on_her2_tissue() -> None:
    """HER2 3+ stains membranes, not nuclei: with ``dab="membrane"`` the brown rims are not taken for nuclei,
    so detection against the synthetic tiles' true nuclei is better than with the nuclear-stain default."""
    from skimage.measure import regionprops

    def f1(dab: str) -> float:
        tp = fp = fn = 0
        for seed in range(3):
            tile = generate_tile(seed, 256, her2=3)
            truth = np.array([region.centroid[::-1] for region in regionprops(tile.inst_map)])
            nuclei = ClassicalSegmenter(stain="ihc", mpp=0.25, dab=dab).segment(tile.ihc)
            pairs, missed, extra = match_points(truth, nuclei.centroids, 12.0)  # 3 um
            tp, fp, fn = tp + len(pairs), fp + len(extra), fn + len(missed)
        return 2 * tp / (2 * tp + fp + fn)

    membrane, nuclear = f1("membrane"), f1("nuclear")
    assert membrane >= 0.7 and membrane > nuclear + 0.05
