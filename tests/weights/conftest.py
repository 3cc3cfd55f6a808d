"""Weights files and training runs for the import / resolve tests: tiny networks in the formats users have.

* HoVer-Net in hover_net's official ``.tar`` (``{"desc": state_dict}``) and TIAToolbox's flat ``.pth``;
* CycleGAN generators: a histostain export and a seed-project ``generator_HE.tar`` (``{"state_dict": ...}`` with
  the seed's key names);
* two real training runs, made once by ``histostain train hovernet|cyclegan`` on miniature prepared data.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from tests.weights.fabricate import save_seed_generator, tiny_hovernet


@pytest.fixture(autouse=True)
def _no_registry_or_offline_from_the_shell(monkeypatch: pytest.MonkeyPatch) -> None:
    """A developer's HISTOSTAIN_REGISTRY / HISTOSTAIN_OFFLINE must not reach these tests."""
    monkeypatch.delenv("HISTOSTAIN_REGISTRY", raising=False)
    monkeypatch.delenv("HISTOSTAIN_OFFLINE", raising=False)


@pytest.fixture(scope="session")
def weight_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Files as users download them, by kind: official, tiatoolbox, five_types, generator, seed_generator."""
    from histostain.translation.compat import save_generator
    from histostain.translation.cyclegan import ResnetGenerator, init_weights

    folder = tmp_path_factory.mktemp("downloads")
    files = {
        "official": folder / "hovernet_fast_pannuke_type_tf2pytorch.tar",
        "tiatoolbox": folder / "hovernet_fast-pannuke (1).pth",  # a browser saved it twice
        "five_types": folder / "hovernet_fast_monusac_type_tf2pytorch.tar",
        "generator": folder / "latest_G_ihc2he.pt",
        "generator_he2ihc": folder / "latest_G_he2ihc.pt",
        "seed_generator": folder / "generator_HE.tar",
    }
    torch.save({"desc": tiny_hovernet().state_dict()}, files["official"])
    torch.save(tiny_hovernet(seed=1).state_dict(), files["tiatoolbox"])
    torch.save({"desc": tiny_hovernet(num_types=5).state_dict()}, files["five_types"])
    torch.manual_seed(0)
    save_generator(files["generator"], init_weights(ResnetGenerator(ngf=2, n_blocks=1)), direction="ihc2he")
    save_generator(files["generator_he2ihc"], init_weights(ResnetGenerator(ngf=2, n_blocks=1)), direction="he2ihc")
    save_seed_generator(files["seed_generator"])
    return files


def _cli(args: list[str]) -> None:
    from histostain.cli import main

    try:
        main(args)
    except SystemExit as exc:
        assert exc.code in (0, None), f"{args} exited {exc.code}"


@pytest.fixture(scope="session")
def trained_runs(tmp_path_factory: pytest.TempPathFactory, prepared_bci: Path) -> dict[str, Path]:
    """Two real run folders, ``hovernet`` and ``cyclegan``, each trained for 2 steps with tiny networks."""
    from histostain.datasets.pannuke import prepare_pannuke
    from histostain.synth import write_dataset

    root = tmp_path_factory.mktemp("runs")
    write_dataset("pannuke", root / "raw", n=8, size=64, seed=2)
    prepare_pannuke(root / "raw", root / "pannuke", split="random", fractions="0.5,0.25,0.25")
    (root / "tiny.toml").write_text("units = [1, 1, 1, 1]\ndecoder_units = [1, 1]\ntensorboard = false\n")
    runs = root / "runs"
    common = ["--quiet", "--device", "cpu", "train"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HISTOSTAIN_NUM_THREADS", "1")
        patch.setenv("HISTOSTAIN_HOME", str(root / "home"))
        _cli(
            [*common, "hovernet", str(root / "pannuke"), "--name", "hv", "--runs-dir", str(runs)]
            + ["--config", str(root / "tiny.toml"), "--encoder-width", "0.125", "--decoder-width", "0.125"]
            + ["--num-workers", "0", "--max-steps", "2", "--phase1-epochs", "1", "--phase2-epochs", "1"]
            + ["--batch-size-phase1", "2"]
        )
        _cli(
            [*common, "cyclegan", str(prepared_bci), "--name", "cg", "--runs-dir", str(runs), "--direction", "he2ihc"]
            + ["--ngf", "4", "--ndf", "4", "--n-blocks", "1", "--crop", "32", "--num-workers", "0", "--max-steps", "2"]
        )
    return {"hovernet": runs / "hv", "cyclegan": runs / "cg"}


@pytest.fixture
def copy_run(tmp_path: Path, trained_runs: dict[str, Path]):
    """``copy_run(arch)``: a private copy of a trained run (for tests that change it)."""

    def copy(arch: str) -> Path:
        target = tmp_path / "runs" / trained_runs[arch].name
        shutil.copytree(trained_runs[arch], target)
        return target

    return copy
