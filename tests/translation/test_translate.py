"""The Translator service: output size = input size, value conventions, seamless tiling, batching, its batch step."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from histostain.errors import ConfigError, InputError
from histostain.io.images import read_image, write_image
from histostain.runtime.device import DeviceManager
from histostain.translation.compat import save_generator
from histostain.translation.cyclegan import ResnetGenerator, init_weights
from histostain.translation.translate import Translator, to_uint8

CPU = DeviceManager.create("cpu", "fp32")


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


class Identity(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.clone()


class PerTileConstant(nn.Module):
    """Every sample of every call gets its own constant output: the worst case for seams."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        values = []
        for _ in range(x.shape[0]):
            self.calls += 1
            values.append(math.sin(self.calls * 2.4))  # spread over [-1, 1], neighbours differ a lot
        v = torch.tensor(values, dtype=x.dtype).view(-1, 1, 1, 1)
        return v.expand(x.shape[0], 3, x.shape[2], x.shape[3]).clone()


class ShapeRecorder(Identity):
    def __init__(self) -> None:
        super().__init__()
        self.shapes: list[tuple[int, ...]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.shapes.append(tuple(x.shape))
        return x.clone()


@pytest.fixture(scope="module")
def tiny_generator() -> ResnetGenerator:
    torch.manual_seed(0)
    return init_weights(ResnetGenerator(ngf=2, n_blocks=1)).eval()


@pytest.mark.parametrize("size", [(1000, 700), (200, 120), (33, 17), (1, 1), (5, 513), (517, 301)])
def test_output_has_exactly_the_input_size(tiny_generator: ResnetGenerator, size: tuple[int, int]) -> None:
    translator = Translator(tiny_generator, CPU)
    out = translator.translate(_image(*size))
    assert out.shape == (*size, 3) and out.dtype == np.uint8


def test_identity_model_gives_back_the_input(tmp_path: Path) -> None:
    translator = Translator(Identity(), CPU, tile=128, overlap=16, batch_size=3)
    for size in [(300, 250), (128, 128), (37, 61), (129, 400)]:
        image = _image(*size, seed=size[0])
        out = translator.translate(image)
        assert translator.plan(*size).tiles >= 1
        assert int(np.abs(out.astype(int) - image.astype(int)).max()) <= 1
    assert translator.plan(300, 250).tiles > 1  # the tiled path was exercised


def test_tiles_blend_without_seams() -> None:
    overlap = 32
    translator = Translator(PerTileConstant(), CPU, tile=96, overlap=overlap, batch_size=2)
    out = translator.translate(np.zeros((300, 260, 3), dtype=np.uint8)).astype(int)
    plan = translator.plan(300, 260)
    assert plan.tiles >= 9
    assert out.max() - out.min() > 100  # the tiles really disagree
    # a raised-cosine ramp of length L changes by at most pi / (2 L) per pixel: |dv| <= 2 in tanh space
    bound = 2 * 127.5 * math.pi / (2 * overlap) + 1
    for axis in (0, 1):
        assert np.abs(np.diff(out, axis=axis)).max() <= bound


def test_values_are_scaled_and_rounded_not_truncated() -> None:
    seen: list[torch.Tensor] = []

    class Constant(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(x)
            return torch.full_like(x, 101.7 / 127.5 - 1)  # (y + 1) / 2 * 255 = 101.7 -> 102 (truncation: 101)

    image = np.array([[[0, 255, 51]]], dtype=np.uint8)
    out = Translator(Constant(), CPU).translate(image)
    assert out.shape == (1, 1, 3) and set(out.ravel()) == {102}
    x = seen[0]
    assert torch.allclose(x[0, :, 0, 0], torch.tensor([-1.0, 1.0, 51 / 127.5 - 1]))
    assert to_uint8(np.array([-3.0, 0.49, 254.5, 300.0])).tolist() == [0, 0, 254, 255]


def test_tiles_of_equal_size_are_batched_across_images(tmp_path: Path) -> None:
    model = ShapeRecorder()
    for i in range(5):
        write_image(tmp_path / "in" / f"{i}.png", _image(64, 64, i))
    report = Translator(model, CPU, batch_size=4).translate_files([tmp_path / "in"], tmp_path / "out")
    assert report.translated == 5 and not report.failed
    assert [s[0] for s in model.shapes] == [4, 1]
    for i in range(5):
        assert np.array_equal(read_image(tmp_path / "out" / f"{i}.png"), read_image(tmp_path / "in" / f"{i}.png"))


def test_bad_images_and_options_are_user_errors(tiny_generator: ResnetGenerator) -> None:
    translator = Translator(tiny_generator, CPU)
    with pytest.raises(InputError, match="uint8"):
        translator.translate(np.zeros((8, 8, 3), dtype=np.float32))
    with pytest.raises(InputError, match="uint8"):
        translator.translate(np.zeros((8, 8), dtype=np.uint8))
    with pytest.raises(ConfigError):
        Translator(tiny_generator, CPU, batch_size=0)


def test_from_checkpoint_translates_like_the_model(tmp_path: Path, tiny_generator: ResnetGenerator) -> None:
    save_generator(tmp_path / "g.pt", tiny_generator, direction="he2ihc")
    translator = Translator.from_checkpoint(tmp_path / "g.pt", device=CPU)
    assert translator.direction == "he2ihc" and translator.source is not None
    image = _image(40, 44)
    with torch.inference_mode():
        x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 127.5 - 1
        expected = to_uint8(((tiny_generator(x) + 1) * 127.5)[0].permute(1, 2, 0).numpy())
    assert int(np.abs(translator.translate(image).astype(int) - expected.astype(int)).max()) <= 1


def test_translate_files_accepts_paths_and_reports(tmp_path: Path) -> None:
    write_image(tmp_path / "in" / "a.png", _image(20, 30, 1))
    write_image(tmp_path / "in" / "b.tif", _image(9, 7, 2))
    report = Translator(Identity(), CPU).translate_files([tmp_path / "in"], tmp_path / "out", fmt="tif")
    assert (report.inputs, report.translated, report.skipped) == (2, 2, 0)
    assert report.megapixels == pytest.approx((20 * 30 + 9 * 7) / 1e6)
    assert report.computed_megapixels == pytest.approx((20 * 32 + 16 * 16) / 1e6)  # padded to 4s, at least 16
    assert np.array_equal(read_image(tmp_path / "out" / "b.tif"), read_image(tmp_path / "in" / "b.tif"))
    again = Translator(Identity(), CPU).translate_files([tmp_path / "in"], tmp_path / "out", fmt="tif")
    assert (again.translated, again.skipped) == (0, 2)
    record = json.loads((tmp_path / "out" / "translate.json").read_text())
    assert record["status"] == "finished" and record["settings"]["format"] == "tif"
    assert record["weights"] is None and len(record["settings"]["weights_sha256"]) == 64


def test_models_in_memory_are_told_apart_by_their_tensors(tmp_path: Path, tiny_generator: ResnetGenerator) -> None:
    """Without a weights file the digest covers the tensors: another model may not resume into the folder."""
    write_image(tmp_path / "in" / "a.png", _image(20, 20))
    Translator(tiny_generator, CPU).translate_files([tmp_path / "in"], tmp_path / "out")
    torch.manual_seed(5)
    other = init_weights(ResnetGenerator(ngf=2, n_blocks=1)).eval()
    digest = Translator(tiny_generator, CPU).weights_sha256()
    assert Translator(other, CPU).weights_sha256() != digest
    assert Translator(tiny_generator, CPU, batch_size=3).weights_sha256() == digest
    with pytest.raises(ConfigError, match="weights sha256"):
        Translator(other, CPU).translate_files([tmp_path / "in"], tmp_path / "out")
    with pytest.raises(ConfigError, match="tile 512 -> 256"):
        Translator(tiny_generator, CPU, tile=256).translate_files([tmp_path / "in"], tmp_path / "out")
