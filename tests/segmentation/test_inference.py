"""HoVer-Net over whole images: the reference tile geometry, batching, and maps the size of the image."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from histostain.io.tiling import extract_region
from histostain.runtime.device import DeviceManager
from histostain.segmentation.chunks import plan_chunks
from histostain.segmentation.hovernet import HoVerNet
from histostain.segmentation.inference import HoVerNetPredictor

CPU = DeviceManager.create("cpu", "fp32")


def tiny_hovernet(types: int | None = 4, seed: int = 0) -> HoVerNet:
    torch.manual_seed(seed)
    net = HoVerNet("fast", types, encoder_width=1 / 16, units=[1, 1, 1, 1], decoder_width=0.125, decoder_units=[1, 1])
    return net.eval()


def test_the_geometry_is_the_reference_tile_grid_of_the_mode() -> None:
    predictor = HoVerNetPredictor(tiny_hovernet(), CPU)
    assert predictor.patch_in == 256 and predictor.margin == (256 - predictor.patch_out) // 2
    assert predictor.patch_out == tiny_hovernet().output_size(256)


@pytest.mark.parametrize("batch_size", [1, 3])
def test_maps_equal_the_network_on_each_reflect_padded_patch(batch_size: int) -> None:
    """Every output pixel comes from the patch whose centre holds it, computed on the reflect-padded image."""
    net = tiny_hovernet()
    predictor = HoVerNetPredictor(net, CPU, batch_size=batch_size)
    out, margin = predictor.patch_out, predictor.margin
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (out + 37, 2 * out + 5, 3), dtype=np.uint8)  # 2 x 3 patches, ragged edges
    maps = predictor.maps(image)
    assert maps.np_prob.shape == image.shape[:2] and maps.hv.shape == (*image.shape[:2], 2)
    assert maps.tp_prob is not None and maps.tp_prob.shape == (*image.shape[:2], 4)
    assert np.allclose(maps.tp_prob.sum(axis=-1), 1.0, atol=1e-5) and (maps.np_prob >= 0).all()
    for y0, x0 in [(0, 0), (out, out), (0, 2 * out)]:  # patches whose centre is at (y0, x0)
        patch = extract_region(image, y0 - margin, x0 - margin, 256, 256)
        with torch.inference_mode():
            raw = net(torch.from_numpy(patch.astype(np.float32)).permute(2, 0, 1)[None])
        expected = torch.softmax(raw["np"], 1)[0, 1].numpy()
        h, w = min(out, image.shape[0] - y0), min(out, image.shape[1] - x0)
        np.testing.assert_allclose(maps.np_prob[y0 : y0 + h, x0 : x0 + w], expected[:h, :w], atol=1e-4)
        hv = raw["hv"][0].permute(1, 2, 0).numpy()
        # float32 round-off of batched convolutions: relative to the map's scale (a random net's HV reach ~10)
        np.testing.assert_allclose(maps.hv[y0 : y0 + h, x0 : x0 + w], hv[:h, :w], atol=1e-5 * np.abs(hv).max())


def test_a_network_without_type_branch_gives_no_type_maps() -> None:
    maps = HoVerNetPredictor(tiny_hovernet(types=None), CPU).maps(np.zeros((40, 30, 3), np.uint8))
    assert maps.tp_prob is None and maps.np_prob.shape == (40, 30)


def test_chunks_tile_the_image_and_their_margins_stay_inside() -> None:
    chunks = plan_chunks(5000, 3000, chunk=2048, margin=128)
    covered = np.zeros((5000, 3000), np.int32)
    for part in chunks:
        covered[part.y0 : part.y1, part.x0 : part.x1] += 1
        assert part.ey0 == max(0, part.y0 - 128) and part.ex1 == min(3000, part.x1 + 128)
    assert (covered == 1).all()  # every pixel in exactly one core
    assert len(chunks) == 3 * 2
