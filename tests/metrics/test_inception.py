"""The FID-Inception network: torchvision names, published sizes, TF pooling quirks, resize rule, strict loading."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torchvision.models import inception_v3

from histostain.errors import WeightsError
from histostain.metrics.inception import (
    FID_WEIGHTS_FILENAME,
    FID_WEIGHTS_URL,
    FIDInceptionA,
    FIDInceptionC,
    FIDInceptionE1,
    FIDInceptionE2,
    FIDInceptionV3,
    load_fid_inception,
    resolve_weights,
)
from histostain.runtime.checkpoint import make_checkpoint


@pytest.fixture(scope="module")
def fid_model(fid_weights: Path) -> FIDInceptionV3:
    model, loaded = load_fid_inception(fid_weights)
    assert loaded.format == "pytorch-fid" and loaded.path == fid_weights and len(loaded.sha256) == 64
    return model


# ------------------------------------------------------------------------------------------- structure


def test_state_dict_has_torchvision_names_and_shapes() -> None:
    with torch.device("meta"):
        ours = FIDInceptionV3().state_dict()
        reference = inception_v3(num_classes=1008, aux_logits=False, init_weights=False, weights=None).state_dict()
    assert len(ours) == 566
    assert list(ours) == list(reference)
    assert all(ours[key].shape == reference[key].shape for key in ours)
    assert ours["fc.weight"].shape == (1008, 2048)
    assert "Conv2d_1a_3x3.bn.num_batches_tracked" in ours
    assert not any(key.startswith("AuxLogits") for key in ours)


def test_published_parameter_counts() -> None:
    with torch.device("meta"):
        model = FIDInceptionV3()
    total = sum(p.numel() for p in model.parameters())
    without_fc = sum(p.numel() for name, p in model.named_parameters() if not name.startswith("fc."))
    assert total == 23_850_960  # torchvision Inception-v3 with a 1008-way fc
    assert without_fc == 21_785_568  # pytorch-fid's InceptionV3 wrapper (fc dropped)


def test_fid_blocks_replace_the_mixed_layers() -> None:
    with torch.device("meta"):
        model = FIDInceptionV3()
    for name in ("Mixed_5b", "Mixed_5c", "Mixed_5d"):
        assert type(getattr(model, name)) is FIDInceptionA
    for name in ("Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e"):
        assert type(getattr(model, name)) is FIDInceptionC
    assert type(model.Mixed_7b) is FIDInceptionE1
    assert type(model.Mixed_7c) is FIDInceptionE2
    assert model.Mixed_5b.branch_pool.conv.out_channels == 32
    assert model.Mixed_6b.branch7x7_1.conv.out_channels == 128
    assert model.Mixed_6e.branch7x7_1.conv.out_channels == 192


def _identity_pool_branch(block: torch.nn.Module, channels: int) -> torch.nn.Module:
    """Make the block's pool-branch 1x1 conv + BN + ReLU an identity on non-negative inputs."""
    with torch.no_grad():
        block.branch_pool.conv.weight.copy_(torch.eye(channels).reshape(channels, channels, 1, 1))
        bn = block.branch_pool.bn
        bn.weight.fill_(1.0)
        bn.bias.zero_()
        bn.running_mean.zero_()
        bn.running_var.fill_(1.0 - bn.eps)
    return block.eval()


@pytest.mark.parametrize(
    ("block", "kind"),
    [
        (FIDInceptionA(192, pool_features=192), "avg"),
        (FIDInceptionC(192, channels_7x7=8), "avg"),
        (FIDInceptionE1(192), "avg"),
        (FIDInceptionE2(192), "max"),
    ],
)
def test_pool_branch_follows_the_tf_graph(block: torch.nn.Module, kind: str) -> None:
    """Corner pixel: TF averages only the 4 real pixels (not /9); E_2 takes their maximum instead."""
    block = _identity_pool_branch(block, 192)
    x = torch.rand(1, 192, 5, 5, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        pooled = block(x)[:, -192:]  # the pool branch is the last 192 output channels
    corner = x[0, :, :2, :2].reshape(192, 4)
    centre = x[0, :, 1:4, 1:4].reshape(192, 9)
    if kind == "avg":
        expected_corner, expected_centre = corner.mean(1), centre.mean(1)
    else:
        expected_corner, expected_centre = corner.max(1).values, centre.max(1).values
    torch.testing.assert_close(pooled[0, :, 0, 0], expected_corner, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(pooled[0, :, 2, 2], expected_centre, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------------------------- forward


def test_features_shape_for_small_and_native_inputs(fid_model: FIDInceptionV3) -> None:
    with torch.inference_mode():
        small = fid_model(torch.rand(1, 3, 64, 64))
        native = fid_model(torch.rand(1, 3, 299, 299))
    assert small.shape == (1, 2048) and native.shape == (1, 2048)
    assert torch.isfinite(small).all() and torch.isfinite(native).all()
    assert (small >= 0).all()  # pool3 averages post-ReLU maps
    assert small.std() > 0


def test_input_is_resized_bilinearly_without_antialias_then_scaled(fid_model: FIDInceptionV3) -> None:
    seen: list[torch.Tensor] = []
    hook = fid_model.Conv2d_1a_3x3.register_forward_hook(lambda _m, args, _out: seen.append(args[0].clone()))
    try:
        x = torch.rand(1, 3, 400, 400, generator=torch.Generator().manual_seed(2))
        with torch.inference_mode():
            fid_model(x)
    finally:
        hook.remove()
    plain = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
    smoothed = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False, antialias=True)
    assert seen[0].shape == (1, 3, 299, 299)
    torch.testing.assert_close(seen[0], 2 * plain - 1, rtol=0, atol=1e-6)
    assert (seen[0] - (2 * smoothed - 1)).abs().max() > 1e-2  # antialiasing would be a different input
    assert seen[0].min() >= -1 and seen[0].max() <= 1


# --------------------------------------------------------------------------------------------- loading


def test_random_weights_load_strictly_in_eval_mode(fid_weights: Path, fid_model: FIDInceptionV3) -> None:
    saved = torch.load(fid_weights, weights_only=True)
    assert len(saved) == 566
    state = fid_model.state_dict()
    assert all(torch.equal(state[key], saved[key]) for key in saved)
    assert not fid_model.training
    assert not any(p.requires_grad for p in fid_model.parameters())


def _save(path: Path, payload: object) -> Path:
    torch.save(payload, path)
    return path


def test_wrong_files_raise_weights_error_naming_what_was_found(fid_weights: Path, tmp_path: Path) -> None:
    state = torch.load(fid_weights, weights_only=True)

    imagenet_head = dict(state, **{"fc.weight": torch.zeros(1000, 2048), "fc.bias": torch.zeros(1000)})
    with pytest.raises(WeightsError, match=r"fc\.weight has shape \(1000, 2048\), expected \(1008, 2048\)"):
        load_fid_inception(_save(tmp_path / "imagenet.pth", imagenet_head))

    wrapper = {f"blocks.0.0.{key}": value for key, value in list(state.items())[:5]}
    with pytest.raises(WeightsError, match="pytorch-fid's InceptionV3 wrapper"):
        load_fid_inception(_save(tmp_path / "wrapper.pth", wrapper))

    with pytest.raises(WeightsError, match=r"2 keys \(expected 566\); missing 566"):
        load_fid_inception(_save(tmp_path / "other.pth", {"a": torch.zeros(1), "b": torch.zeros(2)}))

    checkpoint = make_checkpoint("cyclegan", {"w": torch.zeros(1)}, {})
    with pytest.raises(WeightsError, match="training checkpoint"):
        load_fid_inception(_save(tmp_path / "ckpt.pth", checkpoint))

    with pytest.raises(WeightsError, match="holds a list"):
        load_fid_inception(_save(tmp_path / "list.pth", [torch.zeros(1)]))

    (tmp_path / "text.pth").write_text("not a checkpoint")
    with pytest.raises(WeightsError, match="text.pth"):
        load_fid_inception(tmp_path / "text.pth")


def test_missing_weights_message_has_url_and_destination(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    weights_dir = tmp_path / "home" / "weights"
    with pytest.raises(WeightsError) as info:
        resolve_weights(None, weights_dir)
    line = info.value.one_line()
    assert "\n" not in line
    assert FID_WEIGHTS_URL in line
    assert str(weights_dir / FID_WEIGHTS_FILENAME) in line
    assert FID_WEIGHTS_URL == (
        "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth"
    )

    with pytest.raises(WeightsError, match="elsewhere.pth"):
        resolve_weights(tmp_path / "elsewhere.pth", weights_dir)  # an explicit file never falls back
    monkeypatch.setenv("HISTOSTAIN_HOME", str(tmp_path / "settings-home"))
    with pytest.raises(WeightsError, match="settings-home"):  # no folder given: the settings' weights folder
        resolve_weights(None, None)


def test_weights_dir_lookup_uses_the_published_file_name(tmp_path: Path) -> None:
    (tmp_path / FID_WEIGHTS_FILENAME).write_bytes(b"x")
    (tmp_path / "inception_v3_google-0cc3c7bd.pth").write_bytes(b"x")  # torchvision's: never picked
    assert resolve_weights(None, tmp_path) == tmp_path / FID_WEIGHTS_FILENAME
    assert resolve_weights(tmp_path / "inception_v3_google-0cc3c7bd.pth", None).name.startswith("inception_v3")
