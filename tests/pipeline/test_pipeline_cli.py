"""`histostain pipeline` through the real entry point: translate + segment + score on synthetic tiles with
tiny models, the real-tissue path (classical, no translation) giving exactly `segment` + `evaluate celldet`,
resume, a changed setting refused, the config file, sharding, and bad input in one line with nothing lost."""

from __future__ import annotations

import csv
import json
import tomllib
from pathlib import Path

import pytest
import torch

from histostain.io.annotations import Nucleus, write_centroids_txt
from histostain.io.images import read_image, write_image
from histostain.segmentation.hovernet import HoVerNet
from histostain.synth import generate_tile
from histostain.translation.compat import save_generator
from histostain.translation.cyclegan import ResnetGenerator, init_weights

CLI = ["--quiet", "--device", "cpu"]
SAMPLE = Path(__file__).resolve().parents[1] / "data" / "endonuke_dev_sample"


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Four synthetic IHC tiles with their true centroids, a tiny generator and a tiny HoVer-Net."""
    root = tmp_path_factory.mktemp("synthetic")
    for seed in range(4):
        tile = generate_tile(seed, 96)
        write_image(root / "tiles" / f"t{seed}.png", tile.ihc)
        truth = [Nucleus(i + 1, (n.x, n.y), n.endonuke_class) for i, n in enumerate(tile.nuclei)]
        (root / "truth").mkdir(exist_ok=True)
        write_centroids_txt(root / "truth" / f"t{seed}.txt", truth)
    torch.manual_seed(0)
    generator = save_generator(root / "g.pt", init_weights(ResnetGenerator(ngf=4, n_blocks=1)), direction="ihc2he")
    net = HoVerNet("fast", 6, encoder_width=1 / 16, units=[1, 1, 1, 1], decoder_width=0.125, decoder_units=[1, 1])
    torch.save({"desc": net.state_dict()}, root / "hovernet.tar")
    return {"tiles": root / "tiles", "truth": root / "truth", "generator": generator, "hovernet": root / "hovernet.tar"}


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("Error: ") and "Traceback" not in err
    return lines[0]


def _csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_translate_segment_score_writes_every_output_and_resumes(run_cli, synthetic, tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = [
        *CLI, "pipeline", "-i", str(synthetic["tiles"]), "-o", str(out), "-t", str(synthetic["generator"]),
        "-w", str(synthetic["hovernet"]), "-g", str(synthetic["truth"]), "--mpp", "0.5", "--json",
    ]  # fmt: skip
    code, stdout, err = run_cli(args)
    assert code == 0, err
    report = json.loads(stdout)
    assert report["processed"] == 4 and report["segmenter"] == "hovernet" and report["stage_seconds"]["translate"] > 0
    for key in ("t0", "t1", "t2", "t3"):
        translated = read_image(out / "translated" / f"{key}.png")
        assert translated.shape == (96, 96, 3)
        for suffix in (".json", ".geojson", ".tif", "_overlay.png", ".txt"):
            assert (out / "nuclei" / f"{key}{suffix}").is_file()
        text = (out / "detections" / f"{key}.json").read_text()
        assert "NaN" not in text  # strict JSON: undefined scores are null
        record = json.loads(text)
        assert record["key"] == key and record["radius_px"] == pytest.approx(6.0)
        assert len(record["tp_true"]) == len(record["tp_pred"]) == record["row"]["tp"]
        assert len(record["pred"]) == record["row"]["nuclei"]
    rows = _csv(out / "summary.csv")
    assert [row["image"] for row in rows] == ["t0", "t1", "t2", "t3"]
    metrics = json.loads((out / "metrics.json").read_text())
    # pooled counts are the sums of the per-image rows (independent of how the scorer pools)
    for name in ("tp", "fp", "fn"):
        assert metrics["summary"][name] == sum(int(row[name]) for row in rows)
    tp, fp, fn = (metrics["summary"][k] for k in ("tp", "fp", "fn"))
    assert metrics["summary"]["f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    assert report["metrics"]["f1"] == metrics["summary"]["f1"]
    run_record = json.loads((out / "pipeline.json").read_text())
    assert run_record["status"] == "finished" and run_record["translator"]["direction"] == "ihc2he"
    assert len(run_record["settings"]["translator"]["weights_sha256"]) == 64
    saved = tomllib.loads((out / "pipeline.toml").read_text())
    assert saved["translator"] == str(synthetic["generator"].resolve()) and saved["radius_um"] == 3.0
    html = (out / "report.html").read_text()
    assert f"{metrics['summary']['f1']:.3f}" in html

    # a second run skips everything and still scores every image
    code, stdout, err = run_cli(args)
    assert code == 0, err
    again = json.loads(stdout)
    assert again["skipped"] == 4 and again["processed"] == 0 and again["metrics"] == report["metrics"]

    # the same folder with another radius is refused in one line, and nothing is lost
    before = sorted(p.name for p in (out / "detections").iterdir())
    code, _, err = run_cli([*args[:-1], "--radius-um", "5"])
    assert code == 2 and "--overwrite" in _one_error_line(err)
    assert sorted(p.name for p in (out / "detections").iterdir()) == before


def test_the_real_tissue_path_equals_segment_then_evaluate(run_cli, tmp_path: Path) -> None:
    """Classical, no translation, on real EndoNuke tiles: the pipeline's pooled P/R/F1 are exactly those of
    `segment` + `evaluate celldet` on the same tiles (two routes to the same numbers)."""
    images, labels = SAMPLE / "images", SAMPLE / "labels" / "bulk" / "ptg1"
    code, stdout, err = run_cli(
        [*CLI, "pipeline", "-i", str(images), "-o", str(tmp_path / "p"), "--no-translate", "--segmenter", "classical",
         "-g", str(labels), "--mpp", "0.5", "--json"]
    )  # fmt: skip
    assert code == 0, err
    piped = json.loads(stdout)["metrics"]
    assert not (tmp_path / "p" / "translated").exists()
    code, _, err = run_cli([*CLI, "segment", str(images), "-o", str(tmp_path / "s"), "--mpp", "0.5"])
    assert code == 0, err
    code, stdout, err = run_cli(
        [*CLI, "evaluate", "celldet", str(labels), str(tmp_path / "s"), "--radius-um", "3", "--mpp", "0.5", "--json"]
    )
    assert code == 0, err
    evaluated = json.loads(stdout)["summary"]
    for name in ("tp", "fp", "fn", "precision", "recall", "f1"):
        assert piped[name] == pytest.approx(evaluated[name]), name
    assert piped["f1"] > 0.7  # six real tiles, two of them the development set's hardest


def test_a_config_file_holds_the_options_and_flags_win(run_cli, synthetic, tmp_path: Path) -> None:
    config = tmp_path / "pipeline.toml"
    config.write_text(
        f'input = ["{synthetic["tiles"]}"]\nout = "{tmp_path / "cfg"}"\nno_translate = true\n'
        f'segmenter = "classical"\nground_truth = "{synthetic["truth"]}"\nmpp = 0.5\nformats = ["txt"]\n'
        "radius_um = 4.0\n",
        encoding="utf-8",
    )
    code, stdout, err = run_cli([*CLI, "pipeline", "--config", str(config), "--radius-um", "2", "--json"])
    assert code == 0, err
    report = json.loads(stdout)
    assert report["metrics"]["radius_um"] == 2.0 and report["metrics"]["radius_px"] == pytest.approx(4.0)
    assert sorted(p.name for p in (tmp_path / "cfg" / "nuclei").iterdir()) == [f"t{i}.txt" for i in range(4)]
    saved = tomllib.loads((tmp_path / "cfg" / "pipeline.toml").read_text())
    assert saved["radius_um"] == 2.0 and saved["formats"] == ["txt"] and saved["no_translate"] is True
    # the saved configuration repeats the run: everything is found done
    code, stdout, err = run_cli([*CLI, "pipeline", "--config", str(tmp_path / "cfg" / "pipeline.toml"), "--json"])
    assert code == 0, err
    assert json.loads(stdout)["skipped"] == 4


def test_shards_split_the_images_and_each_scores_its_share(run_cli, synthetic, tmp_path: Path) -> None:
    out = tmp_path / "sharded"
    base = [*CLI, "pipeline", "-i", str(synthetic["tiles"]), "-o", str(out), "--no-translate", "-g",
            str(synthetic["truth"]), "--mpp", "0.5", "--formats", "txt", "--json"]  # fmt: skip
    seen = []
    for part in (0, 1):
        code, stdout, err = run_cli([*base, "--num-parts", "2", "--part-id", str(part)])
        assert code == 0, err
        assert json.loads(stdout)["processed"] == 2
        seen += [row["image"] for row in _csv(out / f"summary.part-{part}-of-2.csv")]
        assert (out / f"metrics.part-{part}-of-2.json").is_file()
    assert sorted(seen) == ["t0", "t1", "t2", "t3"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "no translator"),
        (["--no-translate", "--segmenter", "hovernet"], "needs --segmenter-weights"),
        (["--no-translate", "-g", "{truth}"], "--mpp"),
        (["--no-translate", "--positivity", "0.5,0.2"], "three numbers"),
        (["--no-translate", "--formats", "svg"], "unknown format"),
        (["-t", "hovernet_fast-pannuke"], "translate needs a translation model"),
    ],
)
def test_bad_options_are_one_line_errors_that_write_nothing(
    run_cli, synthetic, tmp_path: Path, extra: list[str], message: str
) -> None:
    extra = [value.replace("{truth}", str(synthetic["truth"])) for value in extra]
    out = tmp_path / "never"
    code, _, err = run_cli([*CLI, "pipeline", "-i", str(synthetic["tiles"]), "-o", str(out), *extra])
    assert code == 2 and message in _one_error_line(err)
    assert not out.exists()


def test_an_unreadable_tile_is_listed_and_the_others_are_finished(run_cli, tmp_path: Path) -> None:
    tiles = tmp_path / "tiles"
    write_image(tiles / "good.png", generate_tile(0, 64).ihc)
    (tiles / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    code, _, err = run_cli([*CLI, "pipeline", "-i", str(tiles), "-o", str(out), "--no-translate"])
    last = err.strip().splitlines()[-1]
    assert code == 2 and last.startswith("Error: 1 of 2 input(s) failed") and "broken.png" in last
    assert "Traceback" not in err
    assert (out / "detections" / "good.json").is_file() and (out / "report.html").is_file()
    assert not (out / "detections" / "broken.json").exists()


def test_overlapping_the_stages_changes_no_answer(run_cli, synthetic, tmp_path: Path) -> None:
    """Translating image i + 1 in a second thread while image i is segmented gives the same nuclei, in order."""
    found = {}
    for flag in ("--overlap-stages", "--no-overlap-stages"):
        out = tmp_path / flag.strip("-")
        code, _, err = run_cli(
            [*CLI, "pipeline", "-i", str(synthetic["tiles"]), "-o", str(out), "-t", str(synthetic["generator"]),
             "-w", str(synthetic["hovernet"]), "--formats", "txt", flag]
        )  # fmt: skip
        assert code == 0, err
        found[flag] = {
            p.name: (json.loads(p.read_text())["pred"], (out / "translated" / f"{p.stem}.png").read_bytes())
            for p in sorted((out / "detections").iterdir())
        }
    assert found["--overlap-stages"] == found["--no-overlap-stages"] and len(found["--overlap-stages"]) == 4
