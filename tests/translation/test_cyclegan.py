"""The CycleGAN networks: reference parameter counts, key layout, norm/bias/dropout rules, config round trip."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from histostain.errors import ConfigError
from histostain.translation.cyclegan import (
    NLayerDiscriminator,
    ResnetGenerator,
    build_generator,
    count_parameters,
    generator_config,
    init_weights,
)


def _conv_params(cin: int, cout: int, k: int, bias: bool) -> int:
    return cin * cout * k * k + (cout if bias else 0)


def test_default_generator_has_the_reference_parameter_count_and_keys() -> None:
    g = ResnetGenerator()
    assert count_parameters(g) == 11_378_179  # published: resnet_9blocks, instance norm
    keys = set(g.state_dict())
    assert len(keys) == 48
    assert {"model.1.weight", "model.4.bias", "model.7.weight", "model.19.weight", "model.22.bias"} <= keys
    assert {f"model.{10 + i}.conv_block.{j}.weight" for i in range(9) for j in (1, 5)} <= keys
    assert "model.26.weight" in keys and "model.26.bias" in keys
    assert not any("running" in k or "num_batches" in k for k in keys)  # instance norm: no buffers


def test_six_block_generator_count() -> None:
    assert count_parameters(ResnetGenerator(n_blocks=6)) == 7_837_699


def test_default_discriminator_count_keys_and_patch_map() -> None:
    d = NLayerDiscriminator()
    assert count_parameters(d) == 2_764_737
    assert sorted(d.state_dict()) == sorted(f"model.{i}.{p}" for i in (0, 2, 5, 8, 11) for p in ("weight", "bias"))
    # closed form of the conv arithmetic: 256 -> 128 -> 64 -> 32 (stride 2, k4 p1) -> 31 -> 30 (stride 1)
    tiny = NLayerDiscriminator(ndf=2)
    assert tiny(torch.zeros(1, 3, 256, 256)).shape == (1, 1, 30, 30)


def test_pix2pix_style_discriminator_count_with_batch_norm_six_channels() -> None:
    # published: pix2pix D basic, batch norm, 6-channel input = 2,768,705
    assert count_parameters(NLayerDiscriminator(input_nc=6, norm="batch")) == 2_768_705


def test_bias_rule_follows_norm() -> None:
    # instance: every conv has a bias; batch / none: convs followed by a (possibly identity) norm have none
    ngf, nb = 4, 2
    for norm, bias in (("instance", True), ("batch", False), ("none", False)):
        g = ResnetGenerator(ngf=ngf, n_blocks=nb, norm=norm)
        keys = set(g.state_dict())
        assert ("model.1.bias" in keys) is bias
        assert ("model.10.conv_block.1.bias" in keys) is bias
        assert f"model.{17 + nb}.bias" in keys  # the last conv always has a bias
    g = ResnetGenerator(ngf=ngf, n_blocks=nb, norm="batch")
    assert "model.2.running_mean" in g.state_dict() and "model.2.weight" in g.state_dict()
    expected = (
        _conv_params(3, ngf, 7, False)
        + 2 * ngf
        + _conv_params(ngf, 2 * ngf, 3, False)
        + 2 * 2 * ngf
        + _conv_params(2 * ngf, 4 * ngf, 3, False)
        + 2 * 4 * ngf
        + nb * 2 * (_conv_params(4 * ngf, 4 * ngf, 3, False) + 2 * 4 * ngf)
        + _conv_params(4 * ngf, 2 * ngf, 3, False)
        + 2 * 2 * ngf
        + _conv_params(2 * ngf, ngf, 3, False)
        + 2 * ngf
        + _conv_params(ngf, 3, 7, True)
    )
    assert count_parameters(g) == expected


def test_last_conv_index_is_seventeen_plus_blocks() -> None:
    for nb in (0, 1, 3):
        keys = set(ResnetGenerator(ngf=2, n_blocks=nb).state_dict())
        assert f"model.{17 + nb}.weight" in keys
        assert f"model.{10 + nb}.weight" in keys  # first transposed conv
        assert f"model.{13 + nb}.weight" in keys  # second transposed conv


def test_dropout_moves_the_second_conv_to_index_six() -> None:
    keys = set(ResnetGenerator(ngf=2, n_blocks=1, use_dropout=True).state_dict())
    assert "model.10.conv_block.6.weight" in keys and "model.10.conv_block.5.weight" not in keys
    assert count_parameters(ResnetGenerator(use_dropout=True)) == 11_378_179


def test_zero_padding_blocks_have_no_pad_layers() -> None:
    keys = set(ResnetGenerator(ngf=2, n_blocks=1, padding_type="zero").state_dict())
    assert {"model.10.conv_block.0.weight", "model.10.conv_block.3.weight"} <= keys


def test_generator_keeps_size_for_multiples_of_four_and_range() -> None:
    torch.manual_seed(0)
    g = init_weights(ResnetGenerator(ngf=4, n_blocks=1)).eval()
    with torch.inference_mode():
        y = g(torch.rand(2, 3, 36, 20) * 2 - 1)
    assert y.shape == (2, 3, 36, 20)
    assert float(y.abs().max()) <= 1.0


def test_init_weights_statistics() -> None:
    torch.manual_seed(0)
    g = init_weights(ResnetGenerator(norm="batch", ngf=16, n_blocks=2), gain=0.02).requires_grad_(False)
    conv = g.model[10].conv_block[1].weight
    assert abs(float(conv.mean())) < 2e-3 and abs(float(conv.std()) - 0.02) < 2e-3
    assert float(g.model[19].weight.std()) == pytest.approx(0.02, rel=0.1)  # last conv (17 + 2 blocks)
    assert float(g.model[12].weight.std()) == pytest.approx(0.02, rel=0.1)  # transposed conv (10 + 2 blocks)
    bn = g.model[2]
    assert isinstance(bn, nn.BatchNorm2d)
    assert abs(float(bn.weight.mean()) - 1.0) < 0.02 and float(bn.bias.abs().max()) == 0.0
    assert float(g.model[-2].bias.abs().max()) == 0.0


def test_config_round_trip_rebuilds_the_same_architecture() -> None:
    g = ResnetGenerator(
        input_nc=1,
        output_nc=2,
        ngf=3,
        n_blocks=2,
        norm="batch",
        use_dropout=True,
        stem_norm=False,
        down_padding="reflect",
    )
    config = generator_config(g)
    rebuilt = build_generator(config)
    assert generator_config(rebuilt) == config
    rebuilt.load_state_dict(g.state_dict(), strict=True)
    assert build_generator({}).n_blocks == 9  # missing keys take the reference defaults


def test_bad_config_values_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="unknown norm"):
        ResnetGenerator(norm="group")
    with pytest.raises(ConfigError, match="unknown generator config key"):
        build_generator({"ngf": 4, "blocks": 3})
    with pytest.raises(ConfigError, match="padding"):
        ResnetGenerator(padding_type="circular")


def test_fast_instance_norm_is_the_reference_instance_norm() -> None:
    from histostain.translation.cyclegan import InstanceNorm2d

    torch.manual_seed(0)
    x = torch.randn(3, 5, 11, 7, dtype=torch.float64, requires_grad=True)
    ours, reference = InstanceNorm2d(5), torch.nn.InstanceNorm2d(5)
    assert list(ours.state_dict()) == [] == list(reference.state_dict())
    out_ours, out_ref = ours(x), reference(x)
    assert torch.allclose(out_ours, out_ref, atol=1e-10)
    (grad_ours,) = torch.autograd.grad(out_ours.pow(3).sum(), x)
    (grad_ref,) = torch.autograd.grad(out_ref.pow(3).sum(), x)
    assert torch.allclose(grad_ours, grad_ref, atol=1e-8)
