"""`histostain synth` on the command line."""

from __future__ import annotations

import json

import pytest

from histostain import __version__


@pytest.fixture
def run(run_cli):
    """Exit code only; stdout and stderr stay in capsys for the test to read."""
    import sys

    def code_of(argv: list[str]) -> int:
        code, out, err = run_cli(argv)
        sys.stdout.write(out)
        sys.stderr.write(err)
        return code

    return code_of


def test_synth_writes_a_dataset_and_prints_json(tmp_path, capsys, run):
    out = tmp_path / "ds"
    argv = ["--quiet", "synth", "--layout", "pannuke", "--n", "6", "--size", "64", "--folds", "2",
            "--seed", "3", "--quirks", "--out", str(out), "--json"]  # fmt: skip
    code = run(argv)
    assert code == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["layout"] == "pannuke" and payload["tiles"] == 6
    assert sum(payload["nuclei"].values()) > 0
    assert len(payload["quirk_records"]) == 5
    assert (out / "Fold 2/masks/fold2/masks.npy").is_file()
    manifest = json.loads((out / "synth.json").read_text())
    assert manifest["seed"] == 3 and manifest["layout"] == "pannuke"
    record = manifest["provenance"]
    assert record["command"] == ["histostain", *argv]  # as typed, global options included
    assert record["histostain_version"] == __version__
    options = record["options"]
    assert (options["layout"], options["n"], options["size"], options["folds"], options["quirks"]) == (
        "pannuke",
        6,
        64,
        2,
        True,
    )


def test_synth_summary_table(tmp_path, capsys, run):
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
def test_synth_rejects_bad_options_with_one_line(tmp_path, capsys, args, message, run):
    code = run(["synth", *args, "--out", str(tmp_path / "x")])
    assert code == 2
    err = capsys.readouterr().err
    assert "Error:" in err and message in err and "Traceback" not in err
    assert not (tmp_path / "x").exists()


def test_synth_refuses_non_empty_out(tmp_path, capsys, run):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "a.txt").write_text("a")
    assert run(["synth", "--layout", "bci", "--n", "1", "--size", "64", "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert run(["-q", "synth", "--layout", "bci", "--n", "1", "--size", "64", "--out", str(out), "--overwrite"]) == 0
    assert (out / "BCI_dataset").is_dir() and not (out / "a.txt").exists()
