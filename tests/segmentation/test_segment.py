"""Segmenting images of any size: chunks merged without cutting or doubling a nucleus, inputs at another scale."""

from __future__ import annotations

import numpy as np
import pytest

from histostain.segmentation.chunks import segment_in_chunks
from histostain.segmentation.nuclei import Nuclei
from histostain.segmentation.postprocess import instances_from_hovernet_maps, nuclei_from_labels
from histostain.segmentation.segment import segment_at_scale
from histostain.segmentation.targets import make_targets


def _discs(height: int, width: int, count: int, seed: int) -> np.ndarray:
    """An instance map of ``count`` non-overlapping discs (radius 6-14 px) scattered over the whole image."""
    rng = np.random.default_rng(seed)
    inst = np.zeros((height, width), np.int32)
    yy, xx = np.ogrid[:height, :width]
    placed = 0
    for _ in range(count * 4):
        if placed == count:
            break
        r = int(rng.integers(6, 15))
        cy, cx = int(rng.integers(r, height - r)), int(rng.integers(r, width - r))
        window = inst[cy - r - 2 : cy + r + 3, cx - r - 2 : cx + r + 3]
        if window.any():
            continue
        disc = (yy[cy - r : cy + r + 1] - cy) ** 2 + (xx[:, cx - r : cx + r + 1] - cx) ** 2 <= r * r
        placed += 1
        inst[cy - r : cy + r + 1, cx - r : cx + r + 1][disc] = placed
    return inst


def _pixel_sets(nuclei: Nuclei) -> set[bytes]:
    """Each nucleus as the bytes of its sorted flat pixel indices: comparable across id numbering."""
    flat = nuclei.inst_map.ravel()
    order = np.argsort(flat, kind="stable")
    bounds = np.searchsorted(flat[order], np.arange(1, int(flat.max(initial=0)) + 2))
    return {order[bounds[i] : bounds[i + 1]].tobytes() for i in range(len(bounds) - 1) if bounds[i + 1] > bounds[i]}


@pytest.mark.slow
def test_a_3000_px_image_in_chunks_gives_the_nuclei_of_the_whole_map() -> None:
    """The issue's check: chunked post-processing with margins equals post-processing the whole map at once."""
    inst = _discs(3000, 3000, 2500, seed=1)
    targets = make_targets(inst, inst.shape)
    np_prob = targets.np.astype(np.float32)
    hv = targets.hv.transpose(1, 2, 0).astype(np.float32)
    whole = instances_from_hovernet_maps(np_prob, hv)
    maps = np.dstack([np_prob, hv])  # the "image" a region function crops

    def region(crop: np.ndarray) -> Nuclei:
        return instances_from_hovernet_maps(crop[..., 0], crop[..., 1:])

    chunked = segment_in_chunks(region, maps, chunk=1024, margin=128)
    assert len(whole) > 2000
    assert _pixel_sets(chunked) == _pixel_sets(whole)  # none cut, none doubled, none lost
    np.testing.assert_allclose(np.sort(chunked.areas), np.sort(whole.areas))


def test_nuclei_on_chunk_borders_are_neither_cut_nor_counted_twice() -> None:
    """Label-map segmentation in 64 px chunks of a 300 px image with discs straddling every border."""
    inst = _discs(300, 300, 120, seed=3)
    chunked = segment_in_chunks(lambda crop: nuclei_from_labels(crop), inst, chunk=64, margin=32)
    whole = nuclei_from_labels(inst)
    assert _pixel_sets(chunked) == _pixel_sets(whole)


def test_measurements_follow_their_nucleus_through_the_merge() -> None:
    inst = _discs(200, 200, 40, seed=5)

    def region(crop: np.ndarray) -> Nuclei:
        found = nuclei_from_labels(crop)
        found.measurements["area_again"] = found.areas.astype(np.float64)  # a column we can check per row
        return found

    merged = segment_in_chunks(region, inst, chunk=64, margin=32)
    np.testing.assert_array_equal(merged.measurements["area_again"], merged.areas.astype(np.float64))


class _HalfScale:
    """A fake segmenter made for 0.25 um/px that reports every connected foreground blob."""

    kind = "fake"
    mpp = 0.25

    def __init__(self) -> None:
        self.seen: list[tuple[int, int]] = []

    def segment(self, rgb: np.ndarray) -> Nuclei:
        from scipy import ndimage

        self.seen.append(rgb.shape[:2])
        labels, _ = ndimage.label(rgb[..., 0] < 128)
        found = nuclei_from_labels(labels.astype(np.int32), mpp=self.mpp)
        found.measurements["darkness"] = np.arange(len(found), dtype=np.float64)
        return found

    def settings(self) -> dict:
        return {}

    def describe(self) -> dict:
        return {}


def test_an_input_at_another_scale_is_resampled_and_the_nuclei_come_back_in_its_pixels() -> None:
    image = np.full((100, 120, 3), 255, np.uint8)
    image[20:40, 30:50] = 0  # a 20 x 20 px nucleus at 0.5 um/px = 40 x 40 px at 0.25 um/px
    image[60:70, 80:100] = 0
    fake = _HalfScale()
    nuclei = segment_at_scale(fake, image, input_mpp=0.5)
    assert fake.seen == [(200, 240)]  # segmented at the model's scale
    assert nuclei.inst_map.shape == (100, 120) and nuclei.mpp == 0.5
    centroids = sorted(map(tuple, np.round(nuclei.centroids, 1).tolist()))
    assert centroids == [(39.5, 29.5), (89.5, 64.5)]  # (x, y) of the input's pixels
    assert sorted(nuclei.areas.tolist()) == [200, 400]
    assert sorted(nuclei.measurements["darkness"].tolist()) == [0.0, 1.0]  # columns carried over


def test_an_input_at_the_models_scale_is_used_as_it_is() -> None:
    image = np.full((50, 50, 3), 255, np.uint8)
    image[10:20, 10:20] = 0
    fake = _HalfScale()
    nuclei = segment_at_scale(fake, image, input_mpp=0.26)  # within 5 %
    assert fake.seen == [(50, 50)] and len(nuclei) == 1
