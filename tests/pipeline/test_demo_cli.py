"""`histostain demo` through the real entry point with tiny weights (the packaged demo weights are tested in
tests/weights/test_demo_weights.py and by the slow test below): four routes, their reports, the table, the
demo's own folder replaced on a re-run, and a user's folder never touched."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from histostain.segmentation.hovernet import HoVerNet
from histostain.translation.compat import save_generator
from histostain.translation.cyclegan import ResnetGenerator, init_weights

CLI = ["--quiet", "--device", "cpu"]


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    folder = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    generator = save_generator(folder / "g.pt", init_weights(ResnetGenerator(ngf=4, n_blocks=1)), direction="ihc2he")
    net = HoVerNet("fast", 6, encoder_width=1 / 16, units=[1, 1, 1, 1], decoder_width=0.125, decoder_units=[1, 1])
    torch.save({"desc": net.state_dict()}, folder / "h.tar")
    return ["-t", str(generator), "-w", str(folder / "h.tar")]


def test_demo_runs_four_routes_and_compares_them(run_cli, tiny_weights: list[str], tmp_path: Path) -> None:
    out = tmp_path / "demo"
    code, stdout, err = run_cli([*CLI, "demo", "-o", str(out), "--tiles", "2", *tiny_weights, "--json"])
    assert code == 0, err
    report = json.loads(stdout)
    assert [row["route"] for row in report["rows"]] == ["translate", "no-translate", "classical", "detector"]
    truth = sorted(p.stem for p in (out / "data" / "truth").iterdir())
    assert truth == ["demo_00", "demo_01"]
    for row in report["rows"]:
        folder = out / row["route"]
        metrics = json.loads((folder / "metrics.json").read_text())["summary"]
        assert row["f1"] == metrics["f1"] and row["report"] == str(folder / "report.html")
        assert (folder / "report.html").is_file()
        record = json.loads((folder / "pipeline.json").read_text())
        assert record["provenance"]["command"][-1] == "--json" and "demo" in record["provenance"]["command"]
    assert (out / "translate" / "translated" / "demo_00.png").is_file()
    assert not (out / "classical" / "translated").exists()
    # the weight-free route finds the synthetic nuclei (exact ground truth): an independent floor
    assert report["rows"][2]["f1"] > 0.7
    assert json.loads((out / "demo.json").read_text())["status"] == "finished"

    # a re-run replaces the demo's own folder (fewer tiles: the old ones are gone)
    code, stdout, err = run_cli([*CLI, "demo", "-o", str(out), "--tiles", "1", *tiny_weights, "--json"])
    assert code == 0, err
    assert sorted(p.stem for p in (out / "data" / "truth").iterdir()) == ["demo_00"]

    # the table a user sees
    code, stdout, err = run_cli([*CLI, "demo", "-o", str(out), "--tiles", "1", *tiny_weights])
    assert code == 0, err
    assert "no-translate" in stdout and "classical" in stdout and "report.html" in stdout


def test_demo_never_replaces_a_folder_it_did_not_make(run_cli, tiny_weights: list[str], tmp_path: Path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "results.csv").write_text("precious\n")
    code, _, err = run_cli([*CLI, "demo", "-o", str(out), "--tiles", "1", *tiny_weights])
    assert code == 2 and "not a histostain demo" in err and "Traceback" not in err
    assert (out / "results.csv").read_text() == "precious\n" and sorted(p.name for p in out.iterdir()) == [
        "results.csv"
    ]
