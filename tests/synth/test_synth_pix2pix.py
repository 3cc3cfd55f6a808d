"""`histostain synth --renderer pix2pix`: the procedural layout and its exact ground truth, H&E from a generator.

The generator is trained here, in a plain torch loop (L1 only, a few hundred steps, ~5 s on one CPU thread), to
map encoded label maps to the Beer-Lambert H&E of a few synthetic tiles: a reference-layout U-Net (5 levels,
ngf 4) saved as ``latest_net_G.pth``, as reference pix2pix saves it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from histostain.io.images import read_image
from histostain.synth.generate import generate_tile
from histostain.synth.label_maps import ENCODING, encode_label_map
from histostain.translation.pix2pix import UnetGenerator

SIZE = 64
TRAIN_SEEDS = range(100, 108)  # the synth runs below use seed 5: other tiles


def unet() -> UnetGenerator:
    return UnetGenerator(3, 3, num_downs=5, ngf=4, norm="batch")


def to_tensor(images: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


@pytest.fixture(scope="module")
def generators(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        tiles = [generate_tile(seed, SIZE) for seed in TRAIN_SEEDS]
        labels = to_tensor([encode_label_map(t.inst_map, t.type_map) for t in tiles])
        targets = to_tensor([t.he for t in tiles])
        torch.manual_seed(0)
        model = unet()
        optimiser = torch.optim.Adam(model.parameters(), lr=2e-3, betas=(0.5, 0.999))
        rng = np.random.default_rng(0)
        for _ in range(300):
            batch = rng.choice(len(tiles), 4, replace=False)
            k = int(rng.integers(4))
            a, b = (torch.rot90(x[batch], k, (2, 3)) for x in (labels, targets))
            loss = (model(a) - b).abs().mean()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        paths = {}
        for name, net in (("trained", model), ("untrained", unet())):
            folder = tmp_path_factory.mktemp(name)
            torch.save(net.state_dict(), folder / "latest_net_G.pth")
            paths[name] = folder / "latest_net_G.pth"
        mean = targets.mean(dim=(0, 2, 3)).add(1.0).mul(127.5).numpy()  # the training targets' mean colour
        np.save(paths["trained"].parent / "mean.npy", mean)
        return paths
    finally:
        torch.set_num_threads(previous)


def synth(run_cli, out: Path, layout: str, *extra: str) -> tuple[int, str, str]:
    argv = ["--quiet", "synth", "--layout", layout, "--n", "3", "--size", str(SIZE), "--seed", "5", "-o", str(out)]
    if layout == "pannuke":
        argv += ["--folds", "1"]
    return run_cli([*argv, *extra])


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


HE_FILES = {"bci": "BCI_dataset/HE/", "pannuke": "Fold 1/images/fold1/images.npy", "tiles": "he/"}


@pytest.mark.parametrize("layout", ["bci", "pannuke", "tiles"])
def test_every_he_layout_is_written_with_the_generator_and_the_same_ground_truth(
    run_cli, generators, tmp_path, layout
) -> None:
    weights = generators["trained"]
    code, out, err = synth(run_cli, tmp_path / "bl", layout)
    assert code == 0, err
    code, out, err = synth(run_cli, tmp_path / "p2p", layout, "--renderer", "pix2pix", "--weights", str(weights))
    assert code == 0, err
    plain, painted = files(tmp_path / "bl"), files(tmp_path / "p2p")
    assert set(plain) == set(painted)
    he = [name for name in plain if name.startswith(HE_FILES[layout])]
    assert he
    for name in plain:
        if name == "synth.json":
            continue
        if name in he:
            assert plain[name] != painted[name], name  # the generator's H&E
        else:
            assert plain[name] == painted[name], name  # ground truth, IHC, lists: exactly Beer-Lambert's
    manifest = json.loads(painted["synth.json"])
    rendered = manifest["renderer"]
    assert (rendered["he"], rendered["ihc"], rendered["label_map"]) == ("pix2pix", "beer-lambert", ENCODING)
    assert rendered["weights"]["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert rendered["weights"]["arch"] == "unet_32" and rendered["weights"]["format"] == "reference"
    assert manifest["provenance"]["options"]["renderer"] == "pix2pix"
    assert json.loads(plain["synth.json"])["renderer"] == {"he": "beer-lambert", "ihc": "beer-lambert"}


def test_the_trained_generator_renders_close_to_beer_lambert_and_deterministically(
    run_cli, generators, tmp_path
) -> None:
    assert synth(run_cli, tmp_path / "bl", "tiles")[0] == 0
    errors = {}
    for name, weights in generators.items():
        code, _, err = synth(run_cli, tmp_path / name, "tiles", "--renderer", "pix2pix", "-w", str(weights))
        assert code == 0, err
        errors[name] = np.mean(
            [
                np.abs(read_image(tmp_path / name / "he" / f"tile_{i:05d}.png").astype(float) - read_image(path))
                for i, path in enumerate(sorted((tmp_path / "bl" / "he").glob("*.png")))
            ]
        )
    mean = np.load(generators["trained"].parent / "mean.npy")
    flat = np.mean(
        [np.abs(read_image(path).astype(float) - mean) for path in sorted((tmp_path / "bl" / "he").glob("*.png"))]
    )
    # unseen tiles: the trained generator follows the labels (better than one flat colour), the untrained one not
    assert errors["trained"] < 0.75 * flat < 0.75 * errors["untrained"], (errors, flat)
    code, _, err = synth(
        run_cli, tmp_path / "again", "tiles", "--renderer", "pix2pix", "-w", str(generators["trained"])
    )
    assert code == 0, err
    again, first = files(tmp_path / "again"), files(tmp_path / "trained")
    del again["synth.json"], first["synth.json"]
    assert again == first


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--renderer", "pix2pix"], "needs --weights"),
        (["--weights", "{w}"], "only used with --renderer pix2pix"),
        (["--renderer", "neural"], "unknown renderer"),
        (["--layout", "endonuke", "--renderer", "pix2pix", "--weights", "{w}"], "writes IHC images only"),
        (["--renderer", "pix2pix", "--weights", "{missing}"], "not found"),
    ],
)
def test_bad_renderer_options_exit_2_with_one_line(run_cli, generators, tmp_path, extra, message) -> None:
    values = {"w": str(generators["trained"]), "missing": str(tmp_path / "nope.pth")}
    extra = [value.format(**values) for value in extra]
    layout = "tiles" if "--layout" not in extra else ""
    argv = ["synth", *(["--layout", layout] if layout else []), "--n", "1", "--size", "64", "-o", str(tmp_path / "x")]
    code, _, err = run_cli([*argv, *extra])
    assert code == 2
    assert "Error:" in err and message in err and "Traceback" not in err
    assert not (tmp_path / "x").exists()


def test_help_shows_the_renderer_and_its_default(run_cli, monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    code, out, _ = run_cli(["synth", "--help"])
    assert code == 0
    text = " ".join(out.replace("\u2502", " ").split())
    assert "--renderer" in text and "beer-lambert" in text and "required with --renderer pix2pix" in text
