"""Loading generators from reference, seed-project and histostain checkpoints (all saved in their real layouts).

The reference and seed networks are re-created here from the published layer lists (cyclegan_fid.md A.1 / B.2)
with plain torch modules, independently of histostain's classes; their state dicts are saved under their own key
names and the outputs of the loaded histostain generator must equal theirs.
"""

from __future__ import annotations

import hashlib
import pathlib
from pathlib import Path

import pytest
import torch
from torch import nn

from histostain.errors import WeightsError
from histostain.runtime.checkpoint import make_checkpoint, save_checkpoint
from histostain.translation.compat import describe_keys, load_generator, save_generator
from histostain.translation.cyclegan import ResnetGenerator, generator_config, init_weights

NGF, NB = 4, 2  # tiny widths keep every forward in milliseconds


# --------------------------------------------------------------------------- reference layout, written from A.1


class _RefBlock(nn.Module):
    def __init__(self, dim: int, dropout: bool, norm: type[nn.Module] | None) -> None:
        super().__init__()
        bias = norm is nn.InstanceNorm2d

        def nrm() -> nn.Module:
            return nn.InstanceNorm2d(dim) if norm is nn.InstanceNorm2d else nn.BatchNorm2d(dim)

        layers = [nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3, bias=bias), nrm(), nn.ReLU(True)]
        if dropout:
            layers.append(nn.Dropout(0.5))
        layers += [nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3, bias=bias), nrm()]
        self.conv_block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_block(x)


def reference_generator(ngf: int = NGF, n_blocks: int = NB, dropout: bool = False, batch: bool = False) -> nn.Module:
    norm = nn.BatchNorm2d if batch else nn.InstanceNorm2d
    bias = not batch
    layers: list[nn.Module] = [nn.ReflectionPad2d(3), nn.Conv2d(3, ngf, 7, bias=bias), norm(ngf), nn.ReLU(True)]
    layers += [nn.Conv2d(ngf, 2 * ngf, 3, 2, 1, bias=bias), norm(2 * ngf), nn.ReLU(True)]
    layers += [nn.Conv2d(2 * ngf, 4 * ngf, 3, 2, 1, bias=bias), norm(4 * ngf), nn.ReLU(True)]
    layers += [_RefBlock(4 * ngf, dropout, norm) for _ in range(n_blocks)]
    layers += [nn.ConvTranspose2d(4 * ngf, 2 * ngf, 3, 2, 1, output_padding=1, bias=bias), norm(2 * ngf), nn.ReLU()]
    layers += [nn.ConvTranspose2d(2 * ngf, ngf, 3, 2, 1, output_padding=1, bias=bias), norm(ngf), nn.ReLU()]
    layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, 3, 7), nn.Tanh()]
    wrapper = nn.Module()
    wrapper.model = nn.Sequential(*layers)
    wrapper.forward = wrapper.model.forward  # type: ignore[method-assign]
    return wrapper


# ----------------------------------------------------------------------------- seed layout, written from B.2


class _SeedConv(nn.Module):
    def __init__(self, cin: int, cout: int, down: bool = True, act: bool = True, **kw: int) -> None:
        super().__init__()
        conv = nn.Conv2d(cin, cout, padding_mode="reflect", **kw) if down else nn.ConvTranspose2d(cin, cout, **kw)
        self.conv = nn.Sequential(conv, nn.InstanceNorm2d(cout), nn.ReLU(True) if act else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class _SeedResidual(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            _SeedConv(ch, ch, kernel_size=3, padding=1), _SeedConv(ch, ch, act=False, kernel_size=3, padding=1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


class SeedGenerator(nn.Module):
    def __init__(self, nf: int = NGF, n_res: int = NB) -> None:
        super().__init__()
        self.initial_layer = nn.Sequential(nn.Conv2d(3, nf, 7, 1, 3, padding_mode="reflect"), nn.ReLU(True))
        self.downsampling_layers = nn.ModuleList(
            [
                _SeedConv(nf, 2 * nf, kernel_size=3, stride=2, padding=1),
                _SeedConv(2 * nf, 4 * nf, kernel_size=3, stride=2, padding=1),
            ]
        )
        self.residual_layers = nn.Sequential(*[_SeedResidual(4 * nf) for _ in range(n_res)])
        self.upsampling_layers = nn.ModuleList(
            [
                _SeedConv(4 * nf, 2 * nf, down=False, kernel_size=3, stride=2, padding=1, output_padding=1),
                _SeedConv(2 * nf, nf, down=False, kernel_size=3, stride=2, padding=1, output_padding=1),
            ]
        )
        self.last_layer = nn.Conv2d(nf, 3, 7, 1, 3, padding_mode="reflect")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.initial_layer(x)
        for layer in self.downsampling_layers:
            x = layer(x)
        x = self.residual_layers(x)
        for layer in self.upsampling_layers:
            x = layer(x)
        return torch.tanh(self.last_layer(x))


def _randomise(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights with a non-trivial scale (so layout mistakes change outputs visibly)."""
    torch.manual_seed(seed)
    init_weights(model, gain=0.2)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias"):
                param.normal_(0, 0.1)
    return model.eval()


def _x(h: int = 32, w: int = 24, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, 3, h, w, generator=g) * 2 - 1


def _same(a: nn.Module, b: nn.Module, x: torch.Tensor) -> None:
    with torch.inference_mode():
        ya, yb = a(x), b(x)
    # float32 through ~20 layers: the reference's InstanceNorm2d and our group-norm kernel reduce in different
    # orders, which moves outputs by a few 1e-6; a wrong weight or layout moves them by orders of magnitude more
    torch.testing.assert_close(ya, yb, rtol=0, atol=2e-5)


# ------------------------------------------------------------------------------------------------- reference


def test_reference_layout_loads_strictly_into_our_class_and_matches_outputs(tmp_path: Path) -> None:
    ref = _randomise(reference_generator())
    ours = ResnetGenerator(ngf=NGF, n_blocks=NB).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)  # same names, no renaming
    _same(ref, ours, _x())
    torch.save(ref.state_dict(), tmp_path / "latest_net_G_A.pth")
    loaded_model, loaded = load_generator(tmp_path / "latest_net_G_A.pth", direction="ihc2he")
    assert loaded.format == "reference" and loaded.direction == "ihc2he"
    assert loaded.sha256 == hashlib.sha256((tmp_path / "latest_net_G_A.pth").read_bytes()).hexdigest()
    assert loaded.config["ngf"] == NGF and loaded.config["n_blocks"] == NB and loaded.config["norm"] == "instance"
    _same(ref, loaded_model, _x())


def test_full_size_reference_state_dict_is_detected(tmp_path: Path) -> None:
    ref = reference_generator(ngf=64, n_blocks=9)
    torch.save(ref.state_dict(), tmp_path / "latest_net_G.pth")
    loaded_model, loaded = load_generator(tmp_path / "latest_net_G.pth")
    assert sum(p.numel() for p in loaded_model.parameters()) == 11_378_179
    assert loaded.config["n_blocks"] == 9 and loaded.config["ngf"] == 64


def test_module_prefix_and_stale_instance_norm_stats_are_tolerated(tmp_path: Path) -> None:
    ref = _randomise(reference_generator())
    state = {f"module.{k}": v for k, v in ref.state_dict().items()}
    # pre-0.4 instance norm tracked running stats at every norm position: 2, 5, 8, blocks .2/.6, 10+NB+1, 13+NB+1
    for index in (2, 5, 8, 11 + NB, 14 + NB):
        state[f"module.model.{index}.running_mean"] = torch.zeros(4)
        state[f"module.model.{index}.running_var"] = torch.ones(4)
        state[f"module.model.{index}.num_batches_tracked"] = torch.tensor(7)
    state["module.model.10.conv_block.2.running_mean"] = torch.zeros(4 * NGF)
    torch.save(state, tmp_path / "old.pth")
    loaded_model, loaded = load_generator(tmp_path / "old.pth")
    assert any("stale" in note for note in loaded.notes)
    _same(ref, loaded_model, _x())


def test_stale_stats_at_a_conv_position_are_not_silently_dropped(tmp_path: Path) -> None:
    state = dict(_randomise(reference_generator()).state_dict())
    state["model.1.running_mean"] = torch.zeros(NGF)  # model.1 is a conv: this file is not what it claims
    torch.save(state, tmp_path / "odd.pth")
    with pytest.raises(WeightsError, match="unexpected model.1.running_mean"):
        load_generator(tmp_path / "odd.pth")


def test_dropout_variant_is_detected_from_conv_block_6(tmp_path: Path) -> None:
    ref = _randomise(reference_generator(dropout=True))
    assert "model.10.conv_block.6.weight" in ref.state_dict()
    torch.save(ref.state_dict(), tmp_path / "drop.pth")
    loaded_model, loaded = load_generator(tmp_path / "drop.pth")
    assert loaded.config["use_dropout"] is True
    assert not loaded_model.training  # eval: dropout off, so outputs are deterministic
    _same(ref, loaded_model, _x())


def test_batch_norm_reference_is_detected(tmp_path: Path) -> None:
    ref = _randomise(reference_generator(batch=True))
    with torch.no_grad():
        for m in ref.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 2.0)
    torch.save(ref.state_dict(), tmp_path / "bn.pth")
    loaded_model, loaded = load_generator(tmp_path / "bn.pth")
    assert loaded.config["norm"] == "batch"
    _same(ref, loaded_model, _x())


# ------------------------------------------------------------------------------------------------------ seed


def test_seed_checkpoint_maps_keys_and_builds_the_seed_variant(tmp_path: Path) -> None:
    seed = _randomise(SeedGenerator())
    state = seed.state_dict()
    assert "residual_layers.1.block.1.conv.0.weight" in state and "initial_layer.0.weight" in state
    payload = {
        "epoch": 200,
        "state_dict": state,
        "optimizer": {"state": {}, "param_groups": [{"lr": 1e-5, "betas": (0.5, 0.999), "params": [0, 1]}]},
        "log_dir": pathlib.PurePosixPath("/runs/cyclegan/2024-07-02"),
        "loss": 1.43,
    }
    torch.save(payload, tmp_path / "generator_HE.tar")
    loaded_model, loaded = load_generator(tmp_path / "generator_HE.tar")
    assert loaded.format == "seed"
    assert loaded.direction == "ihc2he"  # generator_HE makes H&E
    assert loaded.config["stem_norm"] is False and loaded.config["down_padding"] == "reflect"
    x = _x(36, 28)
    _same(seed, loaded_model, x)
    # the same tensors in the reference layout compute something else: the variant matters, not only the names
    plain = ResnetGenerator(ngf=NGF, n_blocks=NB).eval()
    plain.load_state_dict(loaded_model.state_dict(), strict=True)
    with torch.inference_mode():
        assert float((plain(x) - seed(x)).abs().max()) > 1e-2


def test_full_size_seed_generator_count(tmp_path: Path) -> None:
    seed = SeedGenerator(64, 9)
    assert sum(p.numel() for p in seed.parameters()) == 11_378_179  # published seed count
    torch.save({"state_dict": seed.state_dict(), "epoch": 1}, tmp_path / "generator_IHC.tar")
    loaded_model, loaded = load_generator(tmp_path / "generator_IHC.tar")
    assert loaded.direction == "he2ihc" and loaded.config["n_blocks"] == 9


# ------------------------------------------------------------------------------------------------ histostain


def test_exported_generator_round_trip_and_direction_check(tmp_path: Path) -> None:
    g = _randomise(ResnetGenerator(ngf=NGF, n_blocks=NB, norm="batch", stem_norm=False))
    save_generator(tmp_path / "g.pt", g, direction="he2ihc")
    loaded_model, loaded = load_generator(tmp_path / "g.pt")
    assert loaded.format == "histostain" and loaded.direction == "he2ihc"
    assert loaded.config == generator_config(g)
    _same(g, loaded_model, _x())
    with pytest.raises(WeightsError, match="he2ihc generator but --direction ihc2he"):
        load_generator(tmp_path / "g.pt", direction="ihc2he")


def _training_checkpoint(path: Path, config: dict, g_a: nn.Module, g_b: nn.Module) -> None:
    state = {"G_A": g_a.state_dict(), "G_B": g_b.state_dict(), "D_A": {"model.0.weight": torch.zeros(1)}}
    save_checkpoint(path, make_checkpoint("cyclegan", state, config, epoch=3, step=12))


def test_training_checkpoint_direction_picks_the_generator(tmp_path: Path) -> None:
    g_a = _randomise(ResnetGenerator(ngf=NGF, n_blocks=NB), seed=1)
    g_b = _randomise(ResnetGenerator(ngf=NGF, n_blocks=NB), seed=2)
    config = {"direction": "ihc2he", "generator": generator_config(g_a), "lr": 2e-4}
    _training_checkpoint(tmp_path / "last.pt", config, g_a, g_b)
    a_model, a = load_generator(tmp_path / "last.pt", direction="ihc2he")
    b_model, b = load_generator(tmp_path / "last.pt", direction="he2ihc")
    assert (a.entry, b.entry) == ("G_A", "G_B")
    _same(g_a, a_model, _x())
    _same(g_b, b_model, _x())
    # domains swapped in the config: A = H&E, so ihc2he is G_B
    _training_checkpoint(tmp_path / "swapped.pt", {"data": {"direction": "he2ihc"}}, g_a, g_b)
    assert load_generator(tmp_path / "swapped.pt", direction="ihc2he")[1].entry == "G_B"


# ---------------------------------------------------------------------------------------------------- errors


def test_hovernet_like_file_is_named_in_the_error(tmp_path: Path) -> None:
    state = {f"conv0.{i}.weight": torch.zeros(1) for i in range(300)}
    state.update({f"d0.units.{i}.conv1.weight": torch.zeros(1) for i in range(368)})
    torch.save({"desc": state}, tmp_path / "hovernet.tar")
    with pytest.raises(WeightsError) as info:
        load_generator(tmp_path / "hovernet.tar")
    text = info.value.one_line()
    assert "expected a CycleGAN generator" in text and "668 keys starting with" in text and "HoVer-Net" in text
    assert "tried:" in text
    torch.save(state, tmp_path / "bare.pth")
    with pytest.raises(WeightsError, match="668 keys starting with d0., conv0."):
        load_generator(tmp_path / "bare.pth")


def test_discriminator_and_other_files_are_refused(tmp_path: Path) -> None:
    d = {f"model.{i}.{p}": torch.zeros(1) for i in (0, 2, 5, 8, 11) for p in ("weight", "bias")}
    torch.save(d, tmp_path / "latest_net_D_A.pth")
    with pytest.raises(WeightsError, match="discriminator"):
        load_generator(tmp_path / "latest_net_D_A.pth")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(WeightsError, match="found a list"):
        load_generator(tmp_path / "list.pt")
    (tmp_path / "corrupt.pth").write_bytes(b"PK\x03\x04 definitely not a checkpoint")
    with pytest.raises(WeightsError, match="not a readable checkpoint"):
        load_generator(tmp_path / "corrupt.pth")
    with pytest.raises(WeightsError, match="not found"):
        load_generator(tmp_path / "missing.pth")


def test_truncated_reference_file_is_a_weights_error(tmp_path: Path) -> None:
    state = dict(_randomise(reference_generator()).state_dict())
    del state[f"model.{17 + NB}.weight"]
    torch.save(state, tmp_path / "cut.pth")
    with pytest.raises(WeightsError, match="incomplete"):
        load_generator(tmp_path / "cut.pth")
    state = dict(_randomise(reference_generator()).state_dict())
    state["model.4.weight"] = torch.zeros(1, 1, 3, 3)
    torch.save(state, tmp_path / "shape.pth")
    with pytest.raises(WeightsError, match="size mismatch for model.4.weight"):
        load_generator(tmp_path / "shape.pth")


def test_describe_keys_summarises_prefixes() -> None:
    assert describe_keys([]) == "an empty state dict"
    assert describe_keys(["a.x", "a.y", "b.z"]) == "3 keys starting with a., b."


def test_pickled_code_is_refused(tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self) -> tuple:
            return (print, ("owned",))

    torch.save({"state_dict": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(WeightsError, match="refused"):
        load_generator(tmp_path / "evil.pth")


def test_train_cyclegan_checkpoint_layout(tmp_path: Path) -> None:
    """The layout `histostain train cyclegan` writes: primary state_dict = G_A, all nets under "models"."""
    g_a = _randomise(ResnetGenerator(ngf=NGF, n_blocks=NB), seed=3)
    g_b = _randomise(ResnetGenerator(ngf=NGF, n_blocks=NB, norm="batch"), seed=4)
    payload = make_checkpoint(
        "cyclegan",
        g_a.state_dict(),
        {"direction": "he2ihc", "ngf": NGF, "n_blocks": NB, "lr": 2e-4},
        models={"G_A": g_a.state_dict(), "G_B": g_b.state_dict(), "D_A": {"model.0.weight": torch.zeros(1)}},
        optimizers={},
        direction="he2ihc",
        domains={"A": "HE", "B": "IHC"},
        generators={
            "he2ihc": {"model": "G_A", "config": generator_config(g_a)},
            "ihc2he": {"model": "G_B", "config": generator_config(g_b)},
        },
        epoch=1,
        step=2,
    )
    save_checkpoint(tmp_path / "last.pt", payload)
    forward_model, forward = load_generator(tmp_path / "last.pt", direction="he2ihc")
    backward_model, backward = load_generator(tmp_path / "last.pt", direction="ihc2he")
    assert (forward.entry, backward.entry) == ("G_A", "G_B")
    assert backward.config["norm"] == "batch"  # G_B's own config, not G_A's
    _same(g_a, forward_model, _x())
    _same(g_b, backward_model, _x())
    assert load_generator(tmp_path / "last.pt")[1].entry == "G_A"  # default: the direction the run was trained for
