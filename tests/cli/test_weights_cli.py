"""`histostain weights` through the real entry point: a user registry with a file:// model downloaded end to end,
list / info / path / verify, imports checked before anything is cached, a training run registered and used by
`translate -w NAME`, offline mode, and FID weights found in the cache by `doctor`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from histostain.io.images import write_image
from histostain.weights.registry import packaged_cards
from tests.weights.fabricate import save_seed_generator, tiny_hovernet

CLI = ["--quiet", "--device", "cpu"]
NAME = "hovernet_fast-mylab.v1"


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("Error: ") and "Traceback" not in err
    return lines[0]


@pytest.fixture(autouse=True)
def _environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A private cache, no registry or offline setting from the shell, and a wide terminal for the tables."""
    monkeypatch.delenv("HISTOSTAIN_REGISTRY", raising=False)
    monkeypatch.delenv("HISTOSTAIN_OFFLINE", raising=False)
    monkeypatch.setenv("HISTOSTAIN_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("COLUMNS", "250")
    monkeypatch.chdir(tmp_path)
    return tmp_path / "home"


def _hovernet_file(path: Path, official: bool = True) -> Path:
    net = tiny_hovernet()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"desc": net.state_dict()} if official else net.state_dict(), path)
    return path


@pytest.fixture
def lab_registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A user registry (HISTOSTAIN_REGISTRY) with one model whose URL is a file:// on this machine."""
    weights = _hovernet_file(tmp_path / "server" / "mylab.pth", official=False)
    path = tmp_path / "lab_registry.toml"
    path.write_text(
        f'[models."{NAME}"]\ntask = "segmentation"\narch = "hovernet"\narch_args = {{ mode = "fast", num_types = 6 }}\n'
        'vocabulary = "pannuke"\nmpp = 0.5\nfilename = "mylab.pth"\n'
        f'urls = ["{weights.resolve().as_uri()}"]\nlicence = "internal: lab use only"\n',
        encoding="utf-8",
    )
    monkeypatch.setenv("HISTOSTAIN_REGISTRY", str(path))
    return path


def _models(run_cli) -> dict[str, dict]:
    code, out, err = run_cli(["weights", "list", "--json"])
    assert code == 0, err
    return {row["name"]: row for row in json.loads(out)["models"]}


def test_list_shows_every_packaged_model_with_its_licence(run_cli) -> None:
    code, out, err = run_cli(["weights", "list"])
    assert code == 0, err
    for card in packaged_cards().values():
        assert card.name in out and card.licence in out
    models = _models(run_cli)
    assert set(models) == set(packaged_cards())
    assert "CC BY-NC-SA 4.0" in models["hovernet_fast-pannuke"]["licence"]
    assert not any(row["cached"] for row in models.values() if not row["packaged"])
    assert {name for name, row in models.items() if row["packaged"]} == {
        "cyclegan-demo",
        "hovernet-demo",
        "detector-endonuke",
    }
    assert all(row["cached"] for row in models.values() if row["packaged"])  # shipped with histostain


def test_a_file_url_model_downloads_end_to_end_then_path_info_verify(
    run_cli, lab_registry: Path, _environment: Path, tmp_path: Path
) -> None:
    source = tmp_path / "server" / "mylab.pth"
    before = _models(run_cli)[NAME]
    assert before["cached"] is False and before["licence"] == "internal: lab use only"
    code, out, err = run_cli([*CLI, "weights", "download", NAME])
    assert code == 0, err
    assert "downloaded" in out and "recorded" in out  # no published sha256: the digest is recorded and shown
    after = _models(run_cli)[NAME]
    assert after["cached"] is True and after["size_bytes"] == source.stat().st_size
    code, out, err = run_cli(["weights", "path", NAME])
    assert code == 0, err
    cached = Path(out.strip())
    assert cached == _environment / "weights" / NAME / "mylab.pth" and cached.read_bytes() == source.read_bytes()
    code, out, _ = run_cli(["weights", "info", NAME, "--json"])
    info = json.loads(out)
    assert info["card"]["geometry"]["mpp"] == 0.5 and info["card"]["classes"][1] == "Neoplastic"
    assert info["cache"]["record"]["source"] == "download" and info["card"]["source"] == str(lab_registry)
    code, out, _ = run_cli([*CLI, "weights", "download", NAME])
    assert code == 0 and "already cached" in out
    code, out, err = run_cli(["weights", "verify"])
    assert code == 0 and NAME in out, err

    data = bytearray(cached.read_bytes())  # a flipped byte: same size, other digest
    data[len(data) // 2] ^= 0xFF
    cached.write_bytes(bytes(data))
    code, out, err = run_cli(["weights", "verify"])
    assert code == 2 and "checksum mismatch" in _one_error_line(err) and "FAILED" in out


def test_path_of_a_model_that_is_not_cached_exits_2(run_cli) -> None:
    code, out, err = run_cli(["weights", "path", "hovernet_fast-pannuke"])
    assert code == 2 and out == ""
    assert "not in the cache" in _one_error_line(err) and "weights download hovernet_fast-pannuke" in err
    code, _, err = run_cli(["weights", "path", "cyclegan-bci.seed"])
    assert code == 2 and "weights import cyclegan-bci.seed FILE" in _one_error_line(err)


def test_import_of_the_official_container_then_info(run_cli, tmp_path: Path, _environment: Path) -> None:
    download = _hovernet_file(tmp_path / "Downloads" / "hovernet_fast_pannuke_type_tf2pytorch.tar")
    code, out, err = run_cli([*CLI, "weights", "import", "hovernet_fast-pannuke", str(download)])
    assert code == 0, err
    assert "CC BY-NC-SA 4.0" in out  # the licence is shown where the model is taken in
    cached = _environment / "weights" / "hovernet_fast-pannuke" / "hovernet_fast-pannuke.pth"
    assert cached.read_bytes() == download.read_bytes()
    code, out, _ = run_cli(["weights", "info", "hovernet_fast-pannuke", "--json"])
    record = json.loads(out)["cache"]["record"]
    assert record["source"] == "import" and record["origin"] == str(download.resolve())


def test_a_cyclegan_file_offered_as_hovernet_is_refused_in_one_line_and_nothing_is_cached(
    run_cli, tmp_path: Path, _environment: Path
) -> None:
    generator = save_seed_generator(tmp_path / "Downloads" / "generator_HE.tar")
    code, out, err = run_cli([*CLI, "weights", "import", "hovernet_fast-pannuke", str(generator)])
    assert code == 2 and out == ""
    line = _one_error_line(err)
    assert "is a CycleGAN generator (seed format, ihc2he), not HoVer-Net weights" in line
    assert "cyclegan-bci.seed" in line  # where it would belong
    assert not (_environment / "weights" / "hovernet_fast-pannuke").exists()
    assert _models(run_cli)["hovernet_fast-pannuke"]["cached"] is False
    code, _, err = run_cli([*CLI, "weights", "import", "cyclegan-bci.seed", str(generator)])
    assert code == 0, err
    assert _models(run_cli)["cyclegan-bci.seed"]["cached"] is True


def test_download_argument_errors_and_all_offline(run_cli, lab_registry: Path) -> None:
    code, _, err = run_cli(["weights", "download"])
    assert code == 2 and "--all" in _one_error_line(err)
    code, _, err = run_cli(["weights", "download", NAME, "--all"])
    assert code == 2 and "not both" in _one_error_line(err)
    code, _, err = run_cli([*CLI, "weights", "download", NAME])  # cache it while online
    assert code == 0, err
    code, out, err = run_cli([*CLI, "weights", "download", "--all", "--json"], env_offline=True)
    assert code == 2
    status = {row["name"]: row["status"] for row in json.loads(out)["models"]}
    assert status[NAME] == "already cached"  # cached models need no network
    assert status["cyclegan-bci.seed"].startswith("skipped")  # no direct URL
    assert status["hovernet_fast-pannuke"] == "failed"
    assert "HISTOSTAIN_OFFLINE" in err and "downloads failed" in err


@pytest.fixture
def run_cli(run_cli, monkeypatch: pytest.MonkeyPatch):
    """The conftest runner, plus ``env_offline=True`` to run one command with HISTOSTAIN_OFFLINE=1."""

    def run(args: list[str], env_offline: bool = False) -> tuple[int, str, str]:
        if not env_offline:
            return run_cli(args)
        with monkeypatch.context() as patch:
            patch.setenv("HISTOSTAIN_OFFLINE", "1")
            return run_cli(args)

    return run


def test_doctor_finds_fid_weights_in_the_cache(run_cli, install_fid_weights, _environment: Path) -> None:
    install_fid_weights(_environment / "weights" / "fid-inception")
    code, out, _ = run_cli(["doctor", "--json"])
    fid = json.loads(out)["fid_weights"]
    assert code == 0 and fid["present"] is True
    assert fid["path"] == str(_environment / "weights" / "fid-inception" / packaged_cards()["fid-inception"].filename)


@pytest.mark.slow
def test_a_training_run_is_registered_then_translates_by_name(
    run_cli, prepared_bci: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, _environment: Path
) -> None:
    monkeypatch.setenv("HISTOSTAIN_NUM_THREADS", "1")
    runs = tmp_path / "runs"
    tiny = ["--ngf", "4", "--ndf", "4", "--n-blocks", "1", "--crop", "32", "--num-workers", "0", "--max-steps", "1"]
    code, _, err = run_cli(
        [*CLI, "train", "cyclegan", str(prepared_bci), "--name", "lab", "--runs-dir", str(runs), *tiny]
    )
    assert code == 0, err
    code, out, err = run_cli([*CLI, "weights", "import", "cyclegan-bci.lab", str(runs / "lab")])
    assert code == 0, err
    registry_file = _environment / "registry.toml"  # nothing configured: HISTOSTAIN_HOME/registry.toml
    assert "registered in" in out and str(registry_file) in out and registry_file.is_file()
    assert _models(run_cli)["cyclegan-bci.lab"]["cached"] is True

    rng = np.random.default_rng(0)
    write_image(tmp_path / "tiles" / "t.png", rng.integers(0, 256, (40, 36, 3), dtype=np.uint8))
    outputs = {}
    for spec in ("cyclegan-bci.lab", str(runs / "lab")):
        out_dir = tmp_path / f"out{len(outputs)}"
        code, out, err = run_cli(
            [*CLI, "translate", str(tmp_path / "tiles"), "-w", spec, "--direction", "he2ihc", "-o", str(out_dir)]
        )
        assert code == 0, err
        record = json.loads((out_dir / "translate.json").read_text())
        outputs[spec] = (out_dir / "t.png").read_bytes()
        assert record["weights"]["direction"] == "he2ihc"
        model = record["weights"]["model"]  # the record says which model (and under which terms) made it
        assert model["spec"] == ("registry" if spec == "cyclegan-bci.lab" else "run")
        assert model["run_dir"] == str((runs / "lab").resolve()) and "BCI" in model["licence"]
    assert len(set(outputs.values())) == 1  # the cached copy and the run's checkpoint are the same model

    code, _, err = run_cli(
        [*CLI, "translate", str(tmp_path / "tiles"), "-w", "hovernet_fast-pannuke", "--direction", "ihc2he", "-o", "x"]
    )
    assert code == 2 and "translate needs a translation model" in _one_error_line(err)
    assert not (tmp_path / "x").exists()


def _one_nucleus_maps(self, rgb: np.ndarray):
    """What a trained HoVer-Net answers for a tile with one round nucleus of type 2 in the middle: NP 1 inside a
    disc, HV the normalised offsets from its centre, TP type 2 (stands in for the network, whose random weights
    would find an unpredictable number of nuclei)."""
    from histostain.segmentation.inference import HoVerNetMaps

    height, width = rgb.shape[:2]
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    dy, dx = yy - height / 2, xx - width / 2
    inside = dx**2 + dy**2 <= 15**2
    hv = np.stack([np.where(inside, dx / 15, 0), np.where(inside, dy / 15, 0)], axis=-1).astype(np.float32)
    tp = np.zeros((height, width, 6), np.float32)
    tp[..., 0] = ~inside
    tp[..., 2] = inside
    return HoVerNetMaps(inside.astype(np.float32), hv, tp)


def test_segment_by_registry_name_uses_the_cards_classes_scale_and_licence(
    run_cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lab's model with its own class names: `weights import` then `segment -w NAME` names the nucleus by the
    card (not the PanNuke default) in GeoJSON, summary.csv and the run record, and says the licence."""
    classes = ["Background", "Tumour", "Immune", "Stroma", "Necrosis", "Gland"]
    registry = tmp_path / "lab.toml"
    registry.write_text(
        '[models."hovernet_fast-lab.cells"]\ntask = "segmentation"\narch = "hovernet"\n'
        'arch_args = { mode = "fast", num_types = 6 }\nmpp = 0.5\n'
        f"class_names = {json.dumps(classes)}\n"
        'filename = "cells.tar"\nlicence = "internal: lab use only"\n',
        encoding="utf-8",
    )
    monkeypatch.setenv("HISTOSTAIN_REGISTRY", str(registry))
    monkeypatch.setattr("histostain.segmentation.inference.HoVerNetPredictor.maps", _one_nucleus_maps)
    weights = _hovernet_file(tmp_path / "Downloads" / "cells.tar")
    code, _, err = run_cli([*CLI, "weights", "import", "hovernet_fast-lab.cells", str(weights)])
    assert code == 0, err
    write_image(tmp_path / "tiles" / "he.png", np.full((80, 72, 3), 200, dtype=np.uint8))
    out = tmp_path / "seg"
    code, stdout, err = run_cli(
        [*CLI, "segment", str(tmp_path / "tiles"), "-w", "hovernet_fast-lab.cells", "-o", str(out), "--json"]
    )
    assert code == 0, err
    report = json.loads(stdout)
    assert report["weights_model"] == "hovernet_fast-lab.cells" and report["licence"] == "internal: lab use only"
    geojson = json.loads((out / "he.geojson").read_text())
    names = [feature["properties"]["classification"]["name"] for feature in geojson["features"]]
    assert names == ["Immune"]  # type 2 by the card, where PanNuke would say "Inflammatory"
    header = (out / "summary.csv").read_text().splitlines()[0]
    assert "Tumour" in header and "Inflammatory" not in header
    record = json.loads((out / "segment.json").read_text())
    assert record["weights"]["model"]["name"] == "hovernet_fast-lab.cells"
    assert record["weights"]["model"]["licence"] == "internal: lab use only"

    # the same run without --json shows the licence in its summary table
    code, stdout, err = run_cli(
        ["--device", "cpu", "segment", str(tmp_path / "tiles"), "-w", "hovernet_fast-lab.cells", "-o", str(out)]
    )
    assert code == 0, err
    assert "internal: lab use only" in stdout and "hovernet_fast-lab.cells" in stdout


def test_segment_refuses_a_model_of_another_task_or_a_file_of_other_classes(run_cli, tmp_path: Path) -> None:
    write_image(tmp_path / "tiles" / "he.png", np.full((40, 40, 3), 200, dtype=np.uint8))
    code, _, err = run_cli([*CLI, "segment", str(tmp_path / "tiles"), "-w", "cyclegan-bci.seed", "-o", "x"])
    assert code == 2 and "segment needs a segmentation model" in _one_error_line(err)
    registry = tmp_path / "lab.toml"
    registry.write_text(
        '[models."hovernet_fast-lab.five"]\ntask = "segmentation"\narch = "hovernet"\n'
        'arch_args = { mode = "fast", num_types = 5 }\nfilename = "five.pth"\n'
        f'urls = ["{_hovernet_file(tmp_path / "server" / "six.pth", official=False).resolve().as_uri()}"]\n',
        encoding="utf-8",
    )
    code, _, err = run_cli(
        [*CLI, "--settings", str(_settings_with_registry(tmp_path, registry)), "segment", str(tmp_path / "tiles"),
         "-w", "hovernet_fast-lab.five", "-o", "y"]
    )  # fmt: skip
    line = _one_error_line(err)
    assert code == 2 and "6" in line and "5" in line  # the file holds 6 types, the card says 5
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def _settings_with_registry(tmp_path: Path, registry: Path) -> Path:
    """A settings file naming the user registry (the other way to configure it besides HISTOSTAIN_REGISTRY)."""
    path = tmp_path / "histostain.toml"
    path.write_text(f'registry = "{registry}"\n', encoding="utf-8")
    return path


def test_segment_with_the_imported_official_pannuke_file_names_nuclei_by_pannuke(
    run_cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The issue's 'done': `weights import hovernet_fast-pannuke` of hover_net's official .tar, then
    `segment -w hovernet_fast-pannuke`: PanNuke class names and colours in the GeoJSON, the licence said."""
    from histostain.vocabulary import PANNUKE_TYPE_NAMES

    monkeypatch.setattr("histostain.segmentation.inference.HoVerNetPredictor.maps", _one_nucleus_maps)
    download = _hovernet_file(tmp_path / "Downloads" / "hovernet_fast_pannuke_type_tf2pytorch.tar")
    code, _, err = run_cli([*CLI, "weights", "import", "hovernet_fast-pannuke", str(download)])
    assert code == 0, err
    write_image(tmp_path / "tiles" / "he.png", np.full((64, 64, 3), 200, dtype=np.uint8))
    out = tmp_path / "seg"
    code, stdout, err = run_cli(
        [*CLI, "segment", str(tmp_path / "tiles"), "-w", "hovernet_fast-pannuke", "-o", str(out), "--json"]
    )
    assert code == 0, err
    assert "CC BY-NC-SA 4.0" in json.loads(stdout)["licence"]
    [feature] = json.loads((out / "he.geojson").read_text())["features"]
    classification = feature["properties"]["classification"]
    assert classification["name"] == PANNUKE_TYPE_NAMES[2]
    assert len(classification["color"]) == 3


def test_a_detector_run_is_registered_then_segments_by_name(
    run_cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, _environment: Path
) -> None:
    """`train detector` -> `weights import detector-endonuke.lab RUN` -> `segment --model detector -w NAME`: the
    card carries the run's network, classes, scale and the EndoNuke terms, and the run and the name give the same
    points."""
    from histostain.datasets.endonuke import prepare_endonuke
    from histostain.synth import write_dataset

    monkeypatch.setenv("HISTOSTAIN_NUM_THREADS", "1")
    write_dataset("endonuke", tmp_path / "raw", n=5, size=64, seed=1)
    prepare_endonuke(tmp_path / "raw", tmp_path / "prepared", mpp=0.5, fractions="0.6,0.2,0.2")
    runs = tmp_path / "runs"
    tiny = ["--width", "4", "--levels", "2", "--crop", "48", "--epochs", "1", "--batch-size", "2", "--num-workers", "0"]
    code, _, err = run_cli([*CLI, "train", "detector", str(tmp_path / "prepared"), "--name", "lab",
                            "--runs-dir", str(runs), *tiny])  # fmt: skip
    assert code == 0, err
    code, out, err = run_cli([*CLI, "weights", "import", "detector-endonuke.lab", str(runs / "lab")])
    assert code == 0, err
    code, out, err = run_cli([*CLI, "weights", "info", "detector-endonuke.lab", "--json"])
    assert code == 0, err
    card = json.loads(out)["card"]
    assert card["arch"] == "detector" and card["mpp"] == 0.5
    assert card["arch_args"] == {"width": 4, "levels": 2, "num_classes": 3}
    assert card["classes"] == ["stroma", "epithelium", "other"] and "EndoNuke" in card["licence"]
    points = {}
    for spec in ("detector-endonuke.lab", str(runs / "lab")):
        out_dir = tmp_path / f"points{len(points)}"
        code, out, err = run_cli([*CLI, "segment", str(tmp_path / "prepared" / "test" / "images"), "-o", str(out_dir),
                                  "--model", "detector", "-w", spec, "--formats", "txt"])  # fmt: skip
        assert code == 0, err
        points[spec] = sorted(p.read_text() for p in out_dir.glob("*.txt"))
    assert points["detector-endonuke.lab"] == points[str(runs / "lab")]
