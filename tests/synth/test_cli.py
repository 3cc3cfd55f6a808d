"""`histostain synth` on the command line."""

from __future__ import annotations

import json

import pytest

from histostain.cli import main


def run(argv: list[str]) -> int:
    try:
        main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def test_synth_writes_a_dataset_and_prints_json(tmp_path, capsys):
    out = tmp_path / "ds"
    code = run(["--quiet", "synth", "--layout", "pannuke", "--n", "6", "--size", "64", "--folds", "2",
                "--seed", "3", "--quirks", "--out", str(out), "--json"])  # fmt: skip
    assert code == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["layout"] == "pannuke" and payload["tiles"] == 6
    assert sum(payload["nuclei"].values()) > 0
    assert len(payload["quirk_records"]) == 5
    assert (out / "Fold 2/masks/fold2/masks.npy").is_file()
    manifest = json.loads((out / "synth.json").read_text())
    assert manifest["seed"] == 3 and manifest["layout"] == "pannuke"
    assert manifest["command"] == ["histostain", "synth", "--layout", "pannuke", "--n", "6", "--seed", "3",
                                   "--size", "64", "--folds", "2", "--quirks", "--out", str(out)]  # fmt: skip


def test_synth_summary_table(tmp_path, capsys):
    code = run(["--quiet", "synth", "--layout", "tiles", "--n", "2", "--size", "64", "--out", str(tmp_path / "t")])
    assert code == 0
    text = capsys.readouterr().out
    for word in ("tiles", "nuclei neoplastic", "files written", "tiles/s"):
        assert word in text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--layout", "nope"], "unknown layout"),
        (["--layout", "bci", "--size", "8"], "--size"),
        (["--layout", "bci", "--n", "0"], "--n"),
        (["--layout", "pannuke", "--n", "2", "--folds", "3"], "folds"),
    ],
)
def test_synth_rejects_bad_options_with_one_line(tmp_path, capsys, args, message):
    code = run(["synth", *args, "--out", str(tmp_path / "x")])
    assert code == 2
    err = capsys.readouterr().err
    assert "Error:" in err and message in err and "Traceback" not in err
    assert not (tmp_path / "x").exists()


def test_synth_refuses_non_empty_out(tmp_path, capsys):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "a.txt").write_text("a")
    assert run(["synth", "--layout", "bci", "--n", "1", "--size", "64", "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert run(["-q", "synth", "--layout", "bci", "--n", "1", "--size", "64", "--out", str(out), "--overwrite"]) == 0
    assert (out / "BCI_dataset").is_dir() and not (out / "a.txt").exists()
