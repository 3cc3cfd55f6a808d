"""HoVer-Net network: published sizes, official key names, shapes, TF padding, upsampling, scaling, freezing.

The full-size network is only built on the meta device (no memory, no compute); real forwards use the scaled
variant, which runs the same code.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from histostain.segmentation.hovernet import HoVerNet, TFSamePad, UpSample2x, tf_same_padding


def meta_model(mode: str = "fast", num_types: int | None = 6, **kwargs) -> HoVerNet:
    with torch.device("meta"):
        return HoVerNet(mode, num_types, **kwargs)


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def tiny(mode: str = "fast", num_types: int | None = 6, **kwargs) -> HoVerNet:
    defaults = {"encoder_width": 0.125, "units": (1, 1, 1, 1), "decoder_width": 0.125}
    return HoVerNet(mode, num_types, **{**defaults, **kwargs})


# --- published sizes ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "num_types", "expected"),
    [
        ("fast", 6, 37_639_626),  # PanNuke
        ("fast", None, 33_625_412),
        ("original", 5, 54_744_457),  # CoNSeP
        ("original", None, 45_028_676),
    ],
)
def test_parameter_counts_match_published_layer_shapes(mode, num_types, expected):
    assert n_params(meta_model(mode, num_types)) == expected


def documented_keys(branches: tuple[str, ...]) -> list[str]:
    """The official key set, written from hovernet.md section 2.1 enumeration rules (no num_batches_tracked)."""
    bn = ("weight", "bias", "running_mean", "running_var")
    keys = ["conv0./.weight"] + [f"conv0.bn.{p}" for p in bn]
    for group, count in enumerate((3, 4, 6, 3)):
        for unit in range(count):
            prefix = f"d{group}.units.{unit}."
            if unit > 0:
                keys += [f"{prefix}preact/bn.{p}" for p in bn]
            for conv in ("conv1", "conv2"):
                keys += [f"{prefix}{conv}.weight"] + [f"{prefix}{conv}/bn.{p}" for p in bn]
            keys.append(f"{prefix}conv3.weight")
        keys.append(f"d{group}.shortcut.weight")
        keys += [f"d{group}.blk_bna.bn.{p}" for p in bn]
    keys.append("conv_bot.weight")
    for branch in branches:
        for stage, count in (("u3", 8), ("u2", 4)):
            prefix = f"decoder.{branch}.{stage}."
            keys.append(prefix + "conva.weight")
            for unit in range(count):
                unit_prefix = f"{prefix}dense.units.{unit}."
                keys += [f"{unit_prefix}preact_bna/bn.{p}" for p in bn]
                keys += [f"{unit_prefix}conv1.weight"] + [f"{unit_prefix}conv1/bn.{p}" for p in bn]
                keys.append(f"{unit_prefix}conv2.weight")
            keys += [f"{prefix}dense.blk_bna.bn.{p}" for p in bn]
            keys.append(prefix + "convf.weight")
        keys.append(f"decoder.{branch}.u1.conva.weight")
        keys += [f"decoder.{branch}.u0.bn.{p}" for p in bn]
        keys += [f"decoder.{branch}.u0.conv.weight", f"decoder.{branch}.u0.conv.bias"]
    keys.append("upsample2x.unpool_mat")
    return keys


@pytest.mark.parametrize(
    ("num_types", "branches", "count", "with_counters"),
    [
        (6, ("tp", "np", "hv"), 668, 798),
        (None, ("np", "hv"), 529, 632),
    ],
)
def test_state_dict_keys_are_the_documented_official_keys(num_types, branches, count, with_counters):
    expected = documented_keys(branches)
    assert len(expected) == count
    state = meta_model("fast", num_types).state_dict()
    assert len(state) == with_counters
    keys = [key for key in state if not key.endswith("num_batches_tracked")]
    assert set(keys) == set(expected)
    assert keys == expected  # same order as the official state dict
    assert set(meta_model("original", num_types).state_dict()) == set(state)  # identical names in both modes


def test_key_shapes_for_fast_and_original():
    fast = meta_model("fast", 6).state_dict()
    assert fast["conv0./.weight"].shape == (64, 3, 7, 7)
    assert fast["d0.units.0.conv1.weight"].shape == (64, 64, 1, 1)
    assert fast["d0.units.0.conv2.weight"].shape == (64, 64, 3, 3)
    assert fast["d0.units.1.preact/bn.weight"].shape == (256,)
    assert fast["d1.shortcut.weight"].shape == (512, 256, 1, 1)
    assert fast["d3.blk_bna.bn.weight"].shape == (2048,)
    assert fast["conv_bot.weight"].shape == (1024, 2048, 1, 1)
    assert fast["decoder.tp.u3.conva.weight"].shape == (256, 1024, 3, 3)
    assert fast["decoder.np.u3.dense.units.7.conv1.weight"].shape == (128, 256 + 7 * 32, 1, 1)
    assert fast["decoder.hv.u3.dense.units.0.conv2.weight"].shape == (32, 32, 3, 3)  # grouped, 4 groups
    assert fast["decoder.np.u2.dense.blk_bna.bn.weight"].shape == (256,)
    assert fast["decoder.tp.u0.conv.weight"].shape == (6, 64, 1, 1)
    assert fast["upsample2x.unpool_mat"].shape == (2, 2)
    original = meta_model("original", 5).state_dict()
    assert original["decoder.np.u3.conva.weight"].shape == (256, 1024, 5, 5)
    assert original["decoder.np.u2.dense.units.0.conv2.weight"].shape == (32, 32, 5, 5)
    assert original["decoder.hv.u1.conva.weight"].shape == (64, 256, 5, 5)
    assert original["conv0./.weight"].shape == (64, 3, 7, 7)


# --- shapes ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("mode", "size", "out"), [("fast", 256, 164), ("original", 270, 80)])
def test_full_size_output_shapes(mode, size, out):
    model = meta_model(mode, 6).eval()
    result = model(torch.empty(1, 3, size, size, device="meta"))
    assert list(result) == ["tp", "np", "hv"]
    assert result["tp"].shape == (1, 6, out, out)
    assert result["np"].shape == (1, 2, out, out)
    assert result["hv"].shape == (1, 2, out, out)
    assert model.output_size(size) == out
    assert model.patch_sizes == (size, out)


def test_encoder_sizes_follow_the_reference_table():
    """fast: 256/128/64/32; original: 264/132/66/33 (hovernet.md 1.2)."""
    for mode, size, expected in (("fast", 256, [256, 128, 64, 32]), ("original", 270, [264, 132, 66, 33])):
        model = meta_model(mode, None).eval()
        x = model.conv0(torch.empty(1, 3, size, size, device="meta"))
        sizes = []
        for group in (model.d0, model.d1, model.d2, model.d3):
            x = group(x)
            sizes.append(x.shape[-1])
        assert sizes == expected


@pytest.mark.parametrize(("mode", "size"), [("fast", 96), ("fast", 128), ("original", 198), ("original", 270)])
def test_scaled_variant_real_forward_shapes(mode, size):
    torch.manual_seed(0)
    model = tiny(mode, 4).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 3, size, size) * 255)
    side = model.output_size(size)
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "tp": (2, 4, side, side),
        "np": (2, 2, side, side),
        "hv": (2, 2, side, side),
    }
    assert all(torch.isfinite(v).all() for v in out.values())


def test_output_size_rejects_sizes_that_do_not_line_up():
    model = meta_model("fast", None)
    assert model.output_size(96) == 4
    with pytest.raises(ValueError):
        model.output_size(260)  # not a multiple of 8: d3 x2 != d2
    with pytest.raises(ValueError):
        model.output_size(64)  # too small


def test_untyped_network_has_no_tp_output():
    model = tiny("fast", None).eval()
    with torch.no_grad():
        out = model(torch.zeros(1, 3, 96, 96))
    assert list(out) == ["np", "hv"]


# --- padding, upsampling, scaling of the input ----------------------------------------------------------------


def test_tf_same_padding_rule():
    assert tf_same_padding(256, 3, 2) == (0, 1)  # odd total: the extra pixel goes after
    assert tf_same_padding(255, 3, 2) == (1, 1)
    assert tf_same_padding(256, 7, 1) == (3, 3)
    assert tf_same_padding(164, 5, 1) == (2, 2)
    assert tf_same_padding(33, 1, 2) == (0, 0)


def test_tf_same_stride2_convolution_matches_hand_computation():
    x = torch.arange(16.0).reshape(1, 1, 4, 4)  # rows [0..3], [4..7], [8..11], [12..15]
    weight = torch.ones(1, 1, 3, 3)
    out = F.conv2d(TFSamePad(3, 2)(x), weight, stride=2)
    # windows start at rows/cols 0 and 2; the bottom/right pad supplies zeros for the second window
    expected = torch.tensor([[0 + 1 + 2 + 4 + 5 + 6 + 8 + 9 + 10, 2 + 3 + 6 + 7 + 10 + 11], [66.0, 10 + 11 + 14 + 15]])
    assert torch.equal(out[0, 0], expected)
    symmetric = F.conv2d(x, weight, stride=2, padding=1)  # what a naive port computes: shifted by one pixel
    assert symmetric[0, 0, 0, 0] == 0 + 1 + 4 + 5
    assert not torch.equal(symmetric, out)


def test_every_stride2_unit_uses_asymmetric_padding_and_unpadded_shortcut():
    model = meta_model("fast", None)
    for group in (model.d1, model.d2, model.d3):
        first = group.units[0]
        pad = first.get_submodule("conv2/pad")
        conv = first.get_submodule("conv2")
        assert (pad.ksize, pad.stride) == (3, 2) and conv.stride == (2, 2) and conv.padding == (0, 0)
        assert group.shortcut.stride == (2, 2) and group.shortcut.padding == (0, 0)
        assert group.units[1].get_submodule("conv2").stride == (1, 1)
    assert isinstance(model.conv0.pad, TFSamePad)
    assert "pad" not in dict(meta_model("original", None).conv0.named_children())  # original: valid 7x7


def test_upsample_is_nearest_neighbour():
    x = torch.randn(2, 3, 5, 4)
    up = UpSample2x()
    assert torch.equal(up(x), F.interpolate(x, scale_factor=2, mode="nearest"))
    assert torch.equal(up.unpool_mat, torch.ones(2, 2))


def test_input_is_divided_by_255_inside_the_network():
    model = tiny("fast", None).eval()
    seen = {}

    def capture(module, inputs, output):
        seen["x"] = inputs[0]

    model.conv0.get_submodule("/").register_forward_hook(capture)
    x = torch.randint(0, 256, (1, 3, 96, 96)).float()
    with torch.no_grad():
        model(x)
    assert torch.allclose(seen["x"][:, :, 3:-3, 3:-3], x / 255.0)  # after the 3-pixel "same" pad of fast mode


def test_scaled_widths_must_stay_integral():
    with pytest.raises(ValueError, match="encoder_width"):
        HoVerNet("fast", encoder_width=0.3)
    with pytest.raises(ValueError, match="decoder_width"):
        HoVerNet("fast", encoder_width=0.125, units=(1, 1, 1, 1), decoder_width=0.1)
    with pytest.raises(ValueError, match="mode"):
        HoVerNet("medium")


def test_config_rebuilds_the_same_architecture():
    model = tiny("original", 3, decoder_units=(2, 1))
    clone = HoVerNet(**model.config())
    assert {k: v.shape for k, v in clone.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}


def test_freeze_keeps_the_encoder_fixed_like_the_reference_phase_one():
    torch.manual_seed(0)
    model = tiny("fast", 2, freeze=True).train()
    out = model(torch.rand(1, 3, 96, 96) * 255)
    sum(v.sum() for v in out.values()).backward()
    grads = {name: p.grad is not None and bool(p.grad.abs().sum() > 0) for name, p in model.named_parameters()}
    assert not any(grads[n] for n in grads if n.startswith(("d0.units.", "d1.", "d2.", "d3.")))
    assert grads["conv0./.weight"] and grads["d0.shortcut.weight"] and grads["d0.blk_bna.bn.weight"]
    assert grads["conv_bot.weight"] and grads["decoder.np.u3.conva.weight"]
    model.zero_grad()
    model.freeze = False
    out = model(torch.rand(1, 3, 96, 96) * 255)
    sum(v.sum() for v in out.values()).backward()
    assert model.get_parameter("d2.units.0.conv1.weight").grad.abs().sum() > 0
