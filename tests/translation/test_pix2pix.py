"""pix2pix: reference-layout U-Net and conditional PatchGAN, loading reference files, padding, norm modes, CLI.

The reference networks are transcribed here from the published construction (cyclegan_fid.md A.1/A.2 and the
reference's ``UnetGenerator`` / ``UnetSkipConnectionBlock`` / ``NLayerDiscriminator``) with plain torch modules,
independently of histostain's classes; their state dicts are saved under their own key names and the networks
histostain loads from them must compute the same outputs.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from histostain.errors import ConfigError
from histostain.io.images import read_image, write_image
from histostain.runtime.device import DeviceManager
from histostain.translation.compat import load_generator
from histostain.translation.cyclegan import NLayerDiscriminator, ResnetGenerator
from histostain.translation.pix2pix import (
    DEFAULT_NORM_MODE,
    UnetGenerator,
    define_pix2pix_discriminator,
    define_pix2pix_generator,
    pad_to_multiple,
    set_norm_mode,
)
from histostain.translation.translate import Translator, plan_for_multiple

CliRunner = Callable[[list[str]], tuple[int, str, str]]
GLOBAL = ["--quiet", "--device", "cpu", "--precision", "fp32"]
CPU = DeviceManager.create("cpu", "fp32")
UNET_256_PARAMS = 54_413_955  # cyclegan_fid.md A.2
UNET_256_KEYS = 82  # A.2; 13 of them are the batch norms' num_batches_tracked
PATCHGAN_6CH_PARAMS = 2_768_705  # A.2, batch norm


# ------------------------------------------------------------------ reference U-Net, written from the reference


class _RefUnetBlock(nn.Module):
    def __init__(
        self,
        outer_nc: int,
        inner_nc: int,
        input_nc: int | None = None,
        submodule: nn.Module | None = None,
        outermost: bool = False,
        innermost: bool = False,
        use_dropout: bool = False,
    ) -> None:
        super().__init__()
        self.outermost = outermost
        input_nc = outer_nc if input_nc is None else input_nc
        downconv = nn.Conv2d(input_nc, inner_nc, kernel_size=4, stride=2, padding=1, bias=False)  # batch norm
        downrelu, downnorm = nn.LeakyReLU(0.2, True), nn.BatchNorm2d(inner_nc)
        uprelu, upnorm = nn.ReLU(True), nn.BatchNorm2d(outer_nc)
        if outermost:
            upconv = nn.ConvTranspose2d(inner_nc * 2, outer_nc, kernel_size=4, stride=2, padding=1)
            model = [downconv, submodule, uprelu, upconv, nn.Tanh()]
        elif innermost:
            upconv = nn.ConvTranspose2d(inner_nc, outer_nc, kernel_size=4, stride=2, padding=1, bias=False)
            model = [downrelu, downconv, uprelu, upconv, upnorm]
        else:
            upconv = nn.ConvTranspose2d(inner_nc * 2, outer_nc, kernel_size=4, stride=2, padding=1, bias=False)
            model = [downrelu, downconv, downnorm, submodule, uprelu, upconv, upnorm]
            if use_dropout:
                model.append(nn.Dropout(0.5))
        self.model = nn.Sequential(*model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.outermost:
            return self.model(x)
        return torch.cat([x, self.model(x)], 1)


class RefUnet(nn.Module):
    def __init__(self, num_downs: int = 8, ngf: int = 64, use_dropout: bool = True) -> None:
        super().__init__()
        block = _RefUnetBlock(ngf * 8, ngf * 8, innermost=True)
        for _ in range(num_downs - 5):
            block = _RefUnetBlock(ngf * 8, ngf * 8, submodule=block, use_dropout=use_dropout)
        block = _RefUnetBlock(ngf * 4, ngf * 8, submodule=block)
        block = _RefUnetBlock(ngf * 2, ngf * 4, submodule=block)
        block = _RefUnetBlock(ngf, ngf * 2, submodule=block)
        self.model = _RefUnetBlock(3, ngf, input_nc=3, submodule=block, outermost=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def _ref_patchgan(input_nc: int = 6, ndf: int = 64) -> nn.Module:
    """The reference NLayerDiscriminator (n_layers 3) with batch norm: no bias on convs followed by a norm."""
    layers: list[nn.Module] = [nn.Conv2d(input_nc, ndf, 4, 2, 1), nn.LeakyReLU(0.2, True)]
    for cin, cout, stride in ((1, 2, 2), (2, 4, 2), (4, 8, 1)):
        layers += [nn.Conv2d(ndf * cin, ndf * cout, 4, stride, 1, bias=False), nn.BatchNorm2d(ndf * cout)]
        layers.append(nn.LeakyReLU(0.2, True))
    layers.append(nn.Conv2d(ndf * 8, 1, 4, 1, 1))
    wrapper = nn.Module()
    wrapper.model = nn.Sequential(*layers)
    wrapper.forward = wrapper.model.forward  # type: ignore[method-assign]
    return wrapper


class _RefResBlock(nn.Module):
    """Reference ResnetBlock with batch norm and dropout (pix2pix defaults): second conv at conv_block.6."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3, bias=False), nn.BatchNorm2d(dim), nn.ReLU(True),
            nn.Dropout(0.5), nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3, bias=False), nn.BatchNorm2d(dim),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_block(x)


def _ref_resnet_bn(ngf: int = 4, n_blocks: int = 2) -> nn.Module:
    bn = nn.BatchNorm2d
    layers: list[nn.Module] = [nn.ReflectionPad2d(3), nn.Conv2d(3, ngf, 7, bias=False), bn(ngf), nn.ReLU(True)]
    layers += [nn.Conv2d(ngf, 2 * ngf, 3, 2, 1, bias=False), bn(2 * ngf), nn.ReLU(True)]
    layers += [nn.Conv2d(2 * ngf, 4 * ngf, 3, 2, 1, bias=False), bn(4 * ngf), nn.ReLU(True)]
    layers += [_RefResBlock(4 * ngf) for _ in range(n_blocks)]
    layers += [nn.ConvTranspose2d(4 * ngf, 2 * ngf, 3, 2, 1, output_padding=1, bias=False), bn(2 * ngf), nn.ReLU()]
    layers += [nn.ConvTranspose2d(2 * ngf, ngf, 3, 2, 1, output_padding=1, bias=False), bn(ngf), nn.ReLU()]
    layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, 3, 7), nn.Tanh()]
    wrapper = nn.Module()
    wrapper.model = nn.Sequential(*layers)
    wrapper.forward = wrapper.model.forward  # type: ignore[method-assign]
    return wrapper


def _randomise(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights and batch-norm statistics, so a layout or norm mistake changes outputs visibly."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d | nn.ConvTranspose2d):
                fan_in = module.weight[0].numel() if isinstance(module, nn.Conv2d) else module.weight.shape[0] * 16
                module.weight.normal_(0, 1.5 / fan_in**0.5)
                if module.bias is not None:
                    module.bias.normal_(0, 0.1)
            elif isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.2)
                module.running_mean.normal_(0, 0.2)
                module.running_var.uniform_(0.5, 2.0)
                module.num_batches_tracked.fill_(1000)
    return model.eval()


def _x(h: int = 256, w: int = 256, n: int = 1, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, h, w, generator=g) * 2 - 1


def _same(ya: torch.Tensor, yb: torch.Tensor) -> None:
    torch.testing.assert_close(ya, yb, rtol=0, atol=1e-5)


def _run(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model(x.clone())


@pytest.fixture(scope="module")
def tiny_unet_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, Path]:
    """A reference unet_256 with ngf=8 (all 8 levels, small widths), saved as latest_net_G.pth."""
    ref = _randomise(RefUnet(ngf=8))
    path = tmp_path_factory.mktemp("pix2pix") / "latest_net_G.pth"
    torch.save(ref.state_dict(), path)
    return ref, path


# ---------------------------------------------------------------------------------------------------- U-Net


@pytest.mark.slow
def test_full_size_unet_256_loads_strictly_and_computes_the_same(tmp_path: Path) -> None:
    ref = _randomise(RefUnet())
    state = ref.state_dict()
    assert len(state) == UNET_256_KEYS and sum(k.endswith("num_batches_tracked") for k in state) == 13
    assert sum(p.numel() for p in ref.parameters()) == UNET_256_PARAMS
    assert "model.model.1.model.2.running_mean" in state and "model.model.1.model.3.model.1.weight" in state
    ours = define_pix2pix_generator("unet_256")
    assert [(k, v.shape) for k, v in ours.state_dict().items()] == [(k, v.shape) for k, v in state.items()]
    assert sum(p.numel() for p in ours.parameters()) == UNET_256_PARAMS
    torch.save(state, tmp_path / "latest_net_G.pth")
    model, record = load_generator(tmp_path / "latest_net_G.pth", direction="he2ihc")
    assert isinstance(model, UnetGenerator) and not model.training
    assert (record.format, record.arch, record.direction) == ("reference", "unet_256", "he2ihc")
    assert record.config == {
        "arch": "unet_256", "input_nc": 3, "output_nc": 3, "num_downs": 8, "ngf": 64, "norm": "batch",
        "use_dropout": True,
    }  # fmt: skip
    x = _x()
    _same(_run(ref, x), _run(model, x))


def test_module_prefix_and_missing_batch_counters_are_tolerated(tiny_unet_file: tuple[nn.Module, Path]) -> None:
    ref, path = tiny_unet_file
    state = {f"module.{k}": v for k, v in ref.state_dict().items() if not k.endswith("num_batches_tracked")}
    odd = path.with_name("old_net_G.pth")
    torch.save(state, odd)
    model, record = load_generator(odd)
    assert record.arch == "unet_256" and record.config["ngf"] == 8
    assert any("13 missing" in note for note in record.notes) and any("module." in note for note in record.notes)
    x = _x()
    _same(_run(ref, x), _run(model, x))
    torch.save({"state_dict": ref.state_dict()}, path.with_name("wrapped.pth"))  # a {"state_dict": ...} file
    model, _ = load_generator(path.with_name("wrapped.pth"))
    _same(_run(ref, x), _run(model, x))


def test_unet_128_and_a_broken_unet_file(tmp_path: Path) -> None:
    ref = _randomise(RefUnet(num_downs=7, ngf=4))
    torch.save(ref.state_dict(), tmp_path / "u128.pth")
    model, record = load_generator(tmp_path / "u128.pth")
    assert record.arch == "unet_128" and record.config["num_downs"] == 7
    x = _x(128, 128)
    _same(_run(ref, x), _run(model, x))
    state = dict(ref.state_dict())
    state["model.model.1.model.1.weight"] = torch.zeros(3, 3, 4, 4)
    torch.save(state, tmp_path / "bad.pth")
    from histostain.errors import WeightsError

    with pytest.raises(WeightsError, match="size mismatch"):
        load_generator(tmp_path / "bad.pth")


def test_non_multiple_sizes_are_padded_and_cropped_back(tiny_unet_file: tuple[nn.Module, Path]) -> None:
    ref, path = tiny_unet_file
    model, _ = load_generator(path)
    x = _x(300, 200)
    expected = _run(ref, F.pad(x, (0, 56, 0, 212), mode="reflect"))[..., :300, :200]
    got = _run(model, x)
    assert got.shape == (1, 3, 300, 200)
    _same(expected, got)
    tiny = _x(20, 12)  # too small to reflect up to 256: replicated
    _same(_run(ref, F.pad(tiny, (0, 244, 0, 236), mode="replicate"))[..., :20, :12], _run(model, tiny))
    assert pad_to_multiple(x, 4) is x
    strict = UnetGenerator(num_downs=5, ngf=2, pad_input=False).eval()
    with pytest.raises(RuntimeError):
        _run(strict, _x(40, 40))  # the reference's behaviour (its issue #452)

    translator = Translator(model, CPU)
    image = np.random.default_rng(0).integers(0, 256, (300, 200, 3), dtype=np.uint8)
    out = translator.translate(image)
    assert out.shape == image.shape
    scaled = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 127.5 - 1
    want = _run(ref, F.pad(scaled, (0, 56, 0, 212), mode="reflect"))[..., :300, :200]
    want_u8 = np.clip(np.rint((want[0].permute(1, 2, 0).numpy() + 1) * 127.5), 0, 255).astype(np.uint8)
    diff = np.abs(out.astype(int) - want_u8.astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3  # at most a float tie at a rounding boundary


def test_unet_tiles_are_multiples_of_256(tiny_unet_file: tuple[nn.Module, Path]) -> None:
    _, path = tiny_unet_file
    translator = Translator.from_checkpoint(path, device=CPU)
    assert translator.size_multiple == 256
    plan = translator.plan(900, 700)
    assert plan.grid is not None and plan.padded == (512, 512)
    assert plan_for_multiple(900, 700, 300, 64, 256).padded == (256, 256)  # --tile below 256: raised to 256
    assert translator.plan(500, 400).grid is None  # fits in one 512 tile: run whole, padded by the network
    image = np.random.default_rng(1).integers(0, 256, (600, 520, 3), dtype=np.uint8)
    assert translator.translate(image).shape == image.shape
    with pytest.raises(ConfigError, match="--overlap"):
        plan_for_multiple(900, 700, 300, 140, 256)


# ------------------------------------------------------------------------------------------------ norm modes


def test_per_input_mode_is_train_mode_batch_norm_at_batch_size_one(tiny_unet_file: tuple[nn.Module, Path]) -> None:
    ref, path = tiny_unet_file
    no_dropout = _randomise(RefUnet(ngf=8, use_dropout=False))
    no_dropout.load_state_dict(ref.state_dict())
    model, _ = load_generator(path)
    set_norm_mode(model, "per-input")
    assert not model.training
    before = {k: v.clone() for k, v in model.state_dict().items()}
    xs = _x(n=2)
    got = _run(model, xs)  # two inputs in one batch: each still normalised with its own statistics
    no_dropout.train()
    for i in range(2):
        with torch.no_grad():
            _same(no_dropout(xs[i : i + 1].clone()), got[i : i + 1])
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # running stats untouched
    set_norm_mode(model, "eval")
    _same(_run(ref, xs), _run(model, xs))
    with pytest.raises(ConfigError, match="norm mode"):
        set_norm_mode(model, "train")


def test_translator_norm_mode_changes_pix2pix_outputs_only(tiny_unet_file: tuple[nn.Module, Path]) -> None:
    _, path = tiny_unet_file
    image = np.random.default_rng(2).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    eval_out = Translator.from_checkpoint(path, device=CPU).translate(image)
    per_input = Translator.from_checkpoint(path, device=CPU, norm_mode="per-input")
    assert per_input.norm_mode == "per-input" and per_input.batch_norms == 13
    assert not np.array_equal(eval_out, per_input.translate(image))
    torch.manual_seed(3)
    cyclegan = ResnetGenerator(ngf=4, n_blocks=1).eval()  # instance norm: the option does not apply
    a = Translator(cyclegan, CPU).translate(image)
    b = Translator(cyclegan, CPU, norm_mode="per-input").translate(image)
    assert np.array_equal(a, b)
    with pytest.raises(ConfigError, match="norm mode"):
        Translator(cyclegan, CPU, norm_mode="batch")


# -------------------------------------------------------------------------------------- PatchGAN and ResNet


def test_conditional_patchgan_layout_and_outputs() -> None:
    ref = _randomise(_ref_patchgan())
    state = ref.state_dict()
    assert sum(p.numel() for p in ref.parameters()) == PATCHGAN_6CH_PARAMS and len(state) == 22
    ours = define_pix2pix_discriminator()
    assert isinstance(ours, NLayerDiscriminator)
    assert [(k, v.shape) for k, v in ours.state_dict().items()] == [(k, v.shape) for k, v in state.items()]
    assert sum(p.numel() for p in ours.parameters()) == PATCHGAN_6CH_PARAMS
    ours.load_state_dict(state, strict=True)
    ours.eval()
    pair = torch.cat([_x(seed=1), _x(seed=2)], 1)  # A and B concatenated: 6 channels
    got = _run(ours, pair)
    assert got.shape == (1, 1, 30, 30)
    _same(_run(ref, pair), got)
    with pytest.raises(ConfigError):
        define_pix2pix_discriminator(netD="pixel")


def test_resnet_9blocks_pix2pix_generator_loads_with_batch_norm(tmp_path: Path) -> None:
    ref = _randomise(_ref_resnet_bn())
    state = {k: v for k, v in ref.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert "model.10.conv_block.6.weight" in state and "model.2.running_mean" in state
    torch.save(state, tmp_path / "latest_net_G.pth")
    model, record = load_generator(tmp_path / "latest_net_G.pth")
    assert isinstance(model, ResnetGenerator) and record.arch == "resnet_generator"
    assert (record.config["norm"], record.config["use_dropout"]) == ("batch", True)
    x = _x(64, 48)
    _same(_run(ref, x), _run(model, x))
    full = define_pix2pix_generator("resnet_9blocks")
    assert isinstance(full, ResnetGenerator) and full.norm == "batch" and full.n_blocks == 9
    with pytest.raises(ConfigError, match="unknown pix2pix generator"):
        define_pix2pix_generator("unet_512x")


def test_cyclegan_reference_file_loads_as_before(tmp_path: Path) -> None:
    torch.manual_seed(0)
    cyclegan = ResnetGenerator(ngf=4, n_blocks=2)
    torch.save(cyclegan.state_dict(), tmp_path / "latest_net_G_A.pth")
    model, record = load_generator(tmp_path / "latest_net_G_A.pth", direction="ihc2he")
    assert isinstance(model, ResnetGenerator)
    assert (record.format, record.arch, record.config["norm"]) == ("reference", "resnet_generator", "instance")
    translator = Translator(model, CPU, source=record)
    from histostain.translation.translate import TranslateStep

    assert "norm_mode" not in TranslateStep(translator).settings()  # CycleGAN run records are unchanged
    assert translator.size_multiple == 4 and translator.plan(900, 700) == translator.plan(900, 700)


# ----------------------------------------------------------------------------------------------------- CLI


def test_cli_default_matches_the_service() -> None:
    from histostain.cli.translate import NORM_MODE

    assert NORM_MODE == DEFAULT_NORM_MODE


def test_translate_cli_with_reference_pix2pix_weights(
    tmp_path: Path, tiny_unet_file: tuple[nn.Module, Path], run_cli: CliRunner
) -> None:
    _, weights = tiny_unet_file
    rng = np.random.default_rng(5)
    sizes = {"a": (300, 200), "b": (600, 520), "c": (64, 64)}
    for name, (h, w) in sizes.items():
        write_image(tmp_path / "tiles" / f"{name}.png", rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    args = [*GLOBAL, "translate", str(tmp_path / "tiles"), "-w", str(weights), "--direction", "he2ihc"]
    code, stdout, err = run_cli([*args, "-o", str(tmp_path / "out"), "--json"])
    assert code == 0, err
    report = json.loads(stdout)
    assert report["translated"] == 3 and report["failed"] == []
    for name, (h, w) in sizes.items():
        assert read_image(tmp_path / "out" / f"{name}.png").shape == (h, w, 3)
    record = json.loads((tmp_path / "out" / "translate.json").read_text())
    assert record["weights"]["arch"] == "unet_256" and record["weights"]["format"] == "reference"
    assert record["settings"]["norm_mode"] == "eval"

    code, _, err = run_cli([*args, "-o", str(tmp_path / "per"), "--norm-mode", "per-input", "--json"])
    assert code == 0, err
    a, b = read_image(tmp_path / "out" / "a.png"), read_image(tmp_path / "per" / "a.png")
    assert a.shape == b.shape and not np.array_equal(a, b)
    code, _, err = run_cli([*args, "-o", str(tmp_path / "out"), "--norm-mode", "per-input"])
    assert code == 2 and "norm mode eval -> per-input" in err  # resuming with another norm mode is refused
    code, _, err = run_cli([*args, "-o", str(tmp_path / "x"), "--norm-mode", "train"])
    assert code == 2 and "unknown norm mode" in err
