"""Loading HoVer-Net weights: every container gives the same network; mismatches and bad files are WeightsErrors.

Files are built here the way each project writes them (``torch.save`` of the documented containers) from a
randomly initialised, scaled-down network with random BN statistics, so the comparison is not trivially equal.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys

import pytest
import torch

from histostain.errors import WeightsError
from histostain.segmentation import describe_hovernet, load_hovernet
from histostain.segmentation.compat import infer_config, save_hovernet
from histostain.segmentation.hovernet import HoVerNet

TINY = {"encoder_width": 0.125, "units": (1, 2, 1, 1), "decoder_width": 0.125, "decoder_units": (2, 1)}


def random_network(mode: str = "fast", num_types: int | None = 6) -> HoVerNet:
    torch.manual_seed(0)
    model = HoVerNet(mode, num_types, **TINY)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
                module.num_batches_tracked.fill_(7)
    return model.eval()


def outputs(model: HoVerNet, size: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    x = torch.rand(2, 3, size, size) * 255
    with torch.no_grad():
        return model(x)


def official_state(model: HoVerNet, module_prefix: bool, counters: bool) -> dict[str, torch.Tensor]:
    state = {k: v.clone() for k, v in model.state_dict().items() if counters or not k.endswith("num_batches_tracked")}
    return {("module." + k if module_prefix else k): v for k, v in state.items()}


@pytest.fixture
def reference():
    """The network and its outputs, computed under the same thread setting as the comparison (bit-exactness;
    conftest runs every test on one torch thread)."""
    model = random_network()
    return model, outputs(model, 128)


@pytest.mark.parametrize(
    ("name", "build", "fmt"),
    [
        ("tf2pytorch.tar", lambda m: {"desc": official_state(m, False, False)}, "official"),
        (
            "net_epoch=3.tar",  # a hover_net training save: DataParallel prefix, counters, optimizer
            lambda m: {"desc": official_state(m, True, True), "optimizer": {"state": {}}, "lr_scheduler": {}},
            "official",
        ),
        ("counters.tar", lambda m: {"desc": official_state(m, False, True)}, "official"),
        ("hovernet_fast-pannuke.pth", lambda m: official_state(m, False, True), "tiatoolbox"),
        ("flat_no_counters.pth", lambda m: official_state(m, False, False), "tiatoolbox"),
    ],
)
def test_every_published_container_loads_to_the_same_function(tmp_path, reference, name, build, fmt):
    model, expected = reference
    path = tmp_path / name
    torch.save(build(model), path)
    loaded, info = load_hovernet(path)
    assert (info.format, info.config["mode"], info.config["num_types"], info.path) == (fmt, "fast", 6, path)
    assert info.config == {**model.config()}
    assert info.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert info.mpp == 0.25 and info.class_names is not None and info.class_names[1] == "Neoplastic"
    assert not loaded.training and next(loaded.parameters()).device.type == "cpu"
    got = outputs(loaded, 128)
    assert list(got) == ["tp", "np", "hv"]
    for key in expected:
        assert torch.equal(got[key], expected[key]), key


def test_histostain_checkpoint_round_trip(tmp_path, reference):
    model, expected = reference
    path = save_hovernet(model, tmp_path / "run" / "best.pt", epoch=4)
    loaded, info = load_hovernet(path, mode="fast", num_types=6)
    assert info.format == "histostain" and describe_hovernet(info.config) == "fast mode with 6 types"
    for key in expected:
        assert torch.equal(outputs(loaded, 128)[key], expected[key])


def test_compiled_model_state_dict_prefix_is_stripped(tmp_path, reference):
    model, expected = reference
    state = {"_orig_mod." + k: v for k, v in model.state_dict().items()}
    torch.save({"desc": state}, tmp_path / "compiled.tar")
    loaded, _ = load_hovernet(tmp_path / "compiled.tar")
    assert torch.equal(outputs(loaded, 128)["hv"], expected["hv"])


def test_original_mode_and_untyped_are_inferred(tmp_path):
    model = random_network("original", None)
    torch.save({"desc": model.state_dict()}, tmp_path / "original_notype.tar")
    loaded, info = load_hovernet(tmp_path / "original_notype.tar", num_types=0)
    assert (info.config["mode"], info.config["num_types"]) == ("original", None)
    assert describe_hovernet(info.config) == "original mode without a type branch"
    assert info.class_names is None  # no type branch: nothing to name
    assert torch.equal(outputs(loaded, 198)["np"], outputs(model, 198)["np"])


def test_infer_config_on_full_size_layouts():
    for mode, types in (("fast", 6), ("original", 5), ("fast", None)):
        with torch.device("meta"):
            state = HoVerNet(mode, types).state_dict()
        assert infer_config(state) == {
            "mode": mode,
            "num_types": types,
            "encoder_width": 1.0,
            "units": [3, 4, 6, 3],
            "decoder_width": 1.0,
            "decoder_units": [8, 4],
        }


@pytest.fixture(scope="module")
def fast6_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("weights") / "hovernet_fast_pannuke_type_tf2pytorch.tar"
    torch.save({"desc": official_state(random_network(), False, False)}, path)
    return path


@pytest.mark.parametrize(
    ("mode", "num_types", "asked"),
    [
        ("original", None, "original mode"),
        (None, 5, "5 types"),
        (None, 0, "no type branch"),
        ("original", 5, "original mode with 5 types"),
    ],
)
def test_mismatch_says_what_the_file_contains(fast6_file, mode, num_types, asked):
    with pytest.raises(WeightsError) as excinfo:
        load_hovernet(fast6_file, mode=mode, num_types=num_types)
    assert excinfo.value.message.endswith(f"this checkpoint is fast mode with 6 types; you asked for {asked}")
    assert str(fast6_file) in excinfo.value.message


def test_matching_request_is_accepted(fast6_file):
    _, info = load_hovernet(fast6_file, mode="fast", num_types=6)
    assert info.config["num_types"] == 6


def test_unknown_mode_is_rejected(fast6_file):
    with pytest.raises(WeightsError, match="unknown HoVer-Net mode"):
        load_hovernet(fast6_file, mode="medium")


def save(tmp_path, name, payload):
    path = tmp_path / name
    torch.save(payload, path)
    return path


def test_bad_files_are_weights_errors(tmp_path, reference):
    model = reference[0]
    state = model.state_dict()
    garbage = tmp_path / "garbage.tar"
    garbage.write_bytes(b"not a torch file at all" * 10)
    cases = {
        "missing": (tmp_path / "absent.tar", "not found"),
        "empty": (tmp_path / "empty.pth", "empty"),
        "garbage": (garbage, "garbage.tar"),
        "tensor": (save(tmp_path, "tensor.pt", torch.zeros(3)), "holds a Tensor"),
        "cyclegan": (save(tmp_path, "g.pth", {"model.1.weight": torch.zeros(64, 3, 7, 7)}), "does not hold HoVer-Net"),
        "monai": (
            save(tmp_path, "monai.pt", {"res_blocks.d0.layers.denselayer_0.layers.conv1.weight": torch.zeros(1)}),
            "MONAI",
        ),
        "encoder": (
            save(tmp_path, "imagenet.tar", {"desc": {k: v for k, v in state.items() if not k.startswith("decoder")}}),
            "only a HoVer-Net encoder",
        ),
        "not tensors": (save(tmp_path, "opt.tar", {"desc": {"lr": 0.1}}), "not a state dict of tensors"),
        "other arch": (
            save(tmp_path, "cg.pt", {"format": "histostain", "version": 1, "arch": "cyclegan", "state_dict": {}}),
            "holds a 'cyclegan' model",
        ),
        "newer": (
            save(tmp_path, "new.pt", {"format": "histostain", "version": 99, "arch": "hovernet", "state_dict": {}}),
            "newer histostain",
        ),
    }
    (tmp_path / "empty.pth").write_bytes(b"")
    for label, (path, fragment) in cases.items():
        with pytest.raises(WeightsError) as excinfo:
            load_hovernet(path)
        assert fragment in excinfo.value.message, label


def test_missing_keys_and_wrong_shapes_are_reported(tmp_path, reference):
    state = dict(reference[0].state_dict())
    del state["decoder.hv.u0.conv.bias"]
    with pytest.raises(WeightsError, match=r"1 missing \(decoder.hv.u0.conv.bias\)"):
        load_hovernet(save(tmp_path, "missing.tar", {"desc": state}))
    state = dict(reference[0].state_dict())
    state["decoder.np.u0.conv.weight"] = torch.zeros(3, 8, 1, 1)
    with pytest.raises(WeightsError, match="unexpected shapes, e.g. decoder.np.u0.conv.weight"):
        load_hovernet(save(tmp_path, "shape.tar", {"desc": state}))


class NotWeights:
    pass


def test_pickled_objects_are_refused_not_executed(tmp_path):
    path = tmp_path / "evil.tar"
    torch.save({"desc": NotWeights()}, path)
    with pytest.raises(WeightsError, match="refused to load"):
        load_hovernet(path)


def test_importing_the_package_does_not_import_torch():
    code = "import sys, histostain.segmentation as s; assert 'torch' not in sys.modules; print(s.__all__)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
