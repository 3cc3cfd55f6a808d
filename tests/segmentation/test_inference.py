"""HoVer-Net over whole images: the reference tile geometry, batching, and maps the size of the image."""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest
import torch

from histostain.errors import ConfigError
from histostain.io.tiling import extract_region
from histostain.runtime.device import DeviceManager
from histostain.segmentation.chunks import plan_chunks
from histostain.segmentation.hovernet import HoVerNet
from histostain.segmentation.inference import (
    AUTO_COMPILE_MIN_PARAMETERS,
    AUTO_COMPILE_MIN_PATCHES,
    HoVerNetPredictor,
    should_compile,
)

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


# ------------------------------------------------------------------------------------------ the compiled path


class FakeCompiled:
    """What ``torch.compile`` returns, without compiling: records the batch of every call."""

    def __init__(self, model: torch.nn.Module, fail: bool = False) -> None:
        self.model, self.fail, self.batches = model, fail, []

    def __call__(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.fail:
            raise RuntimeError("C++ compile failed: no compiler\nmore lines")
        self.batches.append(len(batch))
        return self.model(batch)


@pytest.fixture
def fake_compile(monkeypatch: pytest.MonkeyPatch) -> list[FakeCompiled]:
    made: list[FakeCompiled] = []

    def compile(model: torch.nn.Module, **options: object) -> FakeCompiled:
        assert options == {"dynamic": False, "options": {"freezing": True}}
        made.append(FakeCompiled(model))
        return made[-1]

    monkeypatch.setattr(torch, "compile", compile)
    return made


def _image(seed: int = 0, shape: tuple[int, int] = (200, 300)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*shape, 3), dtype=np.uint8)


def _assert_same_maps(a, b) -> None:
    np.testing.assert_allclose(a.np_prob, b.np_prob, atol=1e-5)
    np.testing.assert_allclose(a.hv, b.hv, atol=1e-5 * np.abs(b.hv).max())
    np.testing.assert_allclose(a.tp_prob, b.tp_prob, atol=1e-5)


def test_auto_compiles_only_a_full_size_network_on_cpu_or_cuda_for_a_long_enough_run() -> None:
    big = AUTO_COMPILE_MIN_PARAMETERS
    assert should_compile("auto", "cpu", big, AUTO_COMPILE_MIN_PATCHES)
    assert should_compile("auto", "cuda", big, 1000)
    assert not should_compile("auto", "cpu", big, AUTO_COMPILE_MIN_PATCHES - 1)
    assert not should_compile("auto", "cpu", big, None)
    assert not should_compile("auto", "mps", big, 1000)
    assert not should_compile("auto", "cpu", big - 1, 1000)  # the scaled-down test networks
    assert should_compile("on", "mps", 1, 1) and not should_compile("off", "cuda", big, 1000)
    with pytest.raises(ConfigError, match="--compile fast"):
        should_compile("fast", "cpu", big, 1)


def test_the_tiny_test_network_stays_eager_however_long_the_run(fake_compile: list[FakeCompiled]) -> None:
    predictor = HoVerNetPredictor(tiny_hovernet(), CPU)
    predictor.expect(10_000)
    predictor.maps(_image())
    assert predictor.compile_state == "eager" and not fake_compile
    assert predictor.parameters < AUTO_COMPILE_MIN_PARAMETERS


def test_compiled_path_runs_one_patch_per_call_on_cpu_with_the_same_maps(fake_compile: list[FakeCompiled]) -> None:
    net = tiny_hovernet()
    image = _image(shape=(400, 450))
    eager = HoVerNetPredictor(net, CPU, batch_size=3, compile="off").maps(image)
    predictor = HoVerNetPredictor(net, CPU, batch_size=3, compile="on")
    compiled = predictor.maps(image)
    assert predictor.compile_state == "compiled" and len(fake_compile) == 1
    patches = predictor.patches_for(400, 450)
    assert patches > 3 and fake_compile[0].batches == [1] * patches  # batch_size 3, yet one patch per call
    _assert_same_maps(compiled, eager)
    threads = torch.get_num_threads()
    assert predictor.describe()["forward_batch"] == 1
    assert predictor.describe()["streams"] == (threads if threads > 1 else 1)  # one 1-thread stream per thread
    assert torch.get_num_threads() == threads  # the caller's own thread count is left alone
    predictor.close()
    assert predictor.streams == 1


def test_auto_compiles_when_the_announced_run_is_long_enough(fake_compile: list[FakeCompiled]) -> None:
    predictor = HoVerNetPredictor(tiny_hovernet(), CPU)
    predictor.parameters = AUTO_COMPILE_MIN_PARAMETERS  # pretend full size
    predictor.expect(AUTO_COMPILE_MIN_PATCHES)
    predictor.maps(_image())
    assert predictor.compile_state == "compiled"

    short = HoVerNetPredictor(tiny_hovernet(), CPU)
    short.parameters = AUTO_COMPILE_MIN_PARAMETERS
    short.expect(AUTO_COMPILE_MIN_PATCHES - 1)
    short.maps(_image())
    assert short.compile_state == "eager"


def test_auto_without_an_announcement_compiles_once_the_run_proves_long(fake_compile: list[FakeCompiled]) -> None:
    predictor = HoVerNetPredictor(tiny_hovernet(), CPU)
    predictor.parameters = AUTO_COMPILE_MIN_PARAMETERS
    per_image = predictor.patches_for(200, 300)
    images = -(-AUTO_COMPILE_MIN_PATCHES // per_image)
    for _ in range(images - 1):
        predictor.maps(_image())
        assert predictor.compile_state == "eager"
    predictor.maps(_image())
    assert predictor.compile_state == "compiled" and fake_compile[0].batches == [1] * per_image


def test_a_failing_compile_falls_back_to_eager_with_a_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    net = tiny_hovernet()
    eager = HoVerNetPredictor(net, CPU, compile="off").maps(_image())
    monkeypatch.setattr(torch, "compile", lambda model, **options: FakeCompiled(model, fail=True))
    predictor = HoVerNetPredictor(net, CPU, compile="on")
    with caplog.at_level(logging.WARNING):
        maps = predictor.maps(_image())
        again = predictor.maps(_image())
    _assert_same_maps(maps, eager)
    _assert_same_maps(again, eager)
    assert predictor.compile_state == "failed" and predictor.compiled is None
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "torch.compile failed (RuntimeError: C++ compile failed" in warnings[0]

    def refuse(model: torch.nn.Module, **options: object) -> None:
        raise RuntimeError("dynamo is not supported on this Python")

    monkeypatch.setattr(torch, "compile", refuse)
    refused = HoVerNetPredictor(net, CPU, compile="on")
    _assert_same_maps(refused.maps(_image()), eager)
    assert refused.compile_state == "failed"


@pytest.mark.skipif(
    os.environ.get("HISTOSTAIN_TEST_COMPILE") != "1",
    reason="compiling even the tiny network takes minutes on a 2-core machine: set HISTOSTAIN_TEST_COMPILE=1",
)
def test_the_really_compiled_network_gives_the_eager_maps() -> None:
    net = tiny_hovernet()
    eager = HoVerNetPredictor(net, CPU, batch_size=3, compile="off").maps(_image())
    predictor = HoVerNetPredictor(net, CPU, batch_size=3, compile="on")
    compiled = predictor.maps(_image())
    assert predictor.compile_state == "compiled" and predictor.compile_seconds > 0
    _assert_same_maps(compiled, eager)
