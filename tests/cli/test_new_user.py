"""What a new user tripped over (issue: unwritable outputs, global options, doctor, help, defaults that chain).

Every test drives the real entry point and checks the exit code, the one-line message and that nothing
half-written is left behind. Unwritable locations are made with a path that runs through a FILE (this works
for root too), a monkeypatched permission probe (a read-only folder) and a writer that fails with ENOSPC (a
full disk).
"""

from __future__ import annotations

import errno
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from histostain.io.images import write_image
from histostain.translation.compat import save_generator
from histostain.translation.cyclegan import ResnetGenerator, init_weights


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("Error: ") and "Traceback" not in err
    return lines[0]


@pytest.fixture
def weights(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    path = tmp_path / "weights" / "g.pt"
    save_generator(path, init_weights(ResnetGenerator(ngf=2, n_blocks=1)), direction="ihc2he")
    return path


@pytest.fixture
def tiles(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    for index in range(2):
        write_image(tmp_path / "tiles" / f"t{index}.png", rng.integers(0, 256, (24, 20, 3), dtype=np.uint8))
    return tmp_path / "tiles"


@pytest.fixture
def a_file(tmp_path: Path) -> Path:
    path = tmp_path / "notes.txt"
    path.write_text("not a folder")
    return path


# ---------------------------------------------------------------------------------- 1. unwritable outputs


def test_1_synth_into_a_path_through_a_file_is_one_line_before_any_tile(run_cli, a_file: Path) -> None:
    code, out, err = run_cli(["-q", "synth", "--layout", "tiles", "--n", "1", "--size", "32", "-o", str(a_file / "x")])
    assert code == 2 and out == ""
    line = _one_error_line(err)
    assert str(a_file) in line and "is a file, not a folder" in line
    assert a_file.read_text() == "not a folder" and sorted(p.name for p in a_file.parent.iterdir()) == ["notes.txt"]


def test_1_prepare_into_a_read_only_folder_is_one_line_before_the_source_is_read(
    run_cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from histostain.io import writable

    read_only = tmp_path / "ro"
    read_only.mkdir()
    real_access = writable.os.access
    monkeypatch.setattr(writable.os, "access", lambda p, mode: False if Path(p) == read_only else real_access(p, mode))
    code, _, err = run_cli(["-q", "prepare", "bci", str(tmp_path / "missing-source"), "-o", str(read_only / "p")])
    assert code == 2
    line = _one_error_line(err)
    assert str(read_only) in line and "not writable" in line  # refused before the (missing) source was looked at
    assert list(read_only.iterdir()) == []


def test_1_translate_out_is_a_file_is_one_line(run_cli, tiles: Path, weights: Path, a_file: Path) -> None:
    code, _, err = run_cli(
        ["-q", "translate", str(tiles), "-w", str(weights), "--direction", "ihc2he", "-o", str(a_file)]
    )
    assert code == 2
    assert "is a file, not a folder" in _one_error_line(err)
    assert a_file.read_text() == "not a folder"


def test_1_a_disk_that_fills_up_mid_run_is_one_line_and_leaves_no_half_written_output(
    run_cli, tiles: Path, weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from histostain.io.atomic import atomic_write

    def full_disk(handle) -> None:
        handle.write(b"\x89PNG partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    def write_image(path, image, *args, **kwargs) -> Path:
        return atomic_write(path, full_disk)  # the real atomic writer, on a disk that is full

    monkeypatch.setattr("histostain.translation.translate.write_image", write_image)
    out = tmp_path / "out"
    code, _, err = run_cli(["-q", "translate", str(tiles), "-w", str(weights), "--direction", "ihc2he", "-o", str(out)])
    assert code == 2
    assert "no space left on the device" in _one_error_line(err)
    assert not list(out.glob("*.png")) and not list(out.glob(".*tmp*"))  # neither outputs nor temp files
    assert json.loads((out / "translate.json").read_text())["status"] == "failed"


# --------------------------------------------------------------------------------------------- 3. doctor


def test_3_doctor_with_an_unavailable_device_reports_why_and_exits_2(run_cli) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    code, out, err = run_cli(["--device", "cuda", "doctor"])
    assert code == 2
    assert "torch / torchvision" in out and "unavailable" in out  # the report is printed
    assert "CUDA is not available" in _one_error_line(err)
    code, out, _ = run_cli(["--device", "cuda", "doctor", "--json"])
    report = json.loads(out)
    assert code == 2 and report["resolved"]["device"] is None and "CUDA" in report["resolved"]["error"]["message"]


def test_13_doctor_says_whether_the_fid_weights_are_there_and_published(
    run_cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, install_fid_weights
) -> None:
    monkeypatch.setenv("HISTOSTAIN_HOME", str(tmp_path / "home"))
    code, out, _ = run_cli(["doctor", "--json"])
    assert code == 0 and json.loads(out)["fid_weights"]["present"] is False
    install_fid_weights(tmp_path / "home" / "weights")
    code, out, _ = run_cli(["doctor", "--json"])
    fid = json.loads(out)["fid_weights"]
    assert fid["present"] is True and fid["published"] is False  # random test weights are not the published file


# ---------------------------------------------------------------------------- 4. global options anywhere


def test_4_global_options_work_after_the_command(run_cli, tiles: Path, weights: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["translate", str(tiles), "-w", str(weights), "--direction", "ihc2he", "-o", str(out)]
    typed = [*args, "--device", "cpu", "-q", "--precision=fp32", "--json"]
    code, stdout, err = run_cli(typed)
    assert code == 0, err
    record = json.loads((out / "translate.json").read_text())
    assert record["provenance"]["command"] == ["histostain", *typed]  # recorded as typed, not as rearranged
    assert record["details"]["device"] == "cpu" and record["details"]["precision"] == "fp32"
    assert json.loads(stdout)["translated"] == 2


def test_4_hoisting_leaves_command_values_and_double_dash_alone() -> None:
    from histostain.cli import hoist_global_options

    assert hoist_global_options(["-q", "synth", "--out", "o", "--device", "cpu"]) == [
        "-q",
        "--device",
        "cpu",
        "synth",
        "--out",
        "o",
    ]
    assert hoist_global_options(["--settings", "s.toml", "doctor", "--debug"]) == [
        "--settings",
        "s.toml",
        "--debug",
        "doctor",
    ]
    assert hoist_global_options(["translate", "--", "--device"]) == ["translate", "--", "--device"]


# ------------------------------------------------------------------------------------ 5. settings vs config


def test_5_a_training_config_given_as_settings_says_where_it_belongs(run_cli, tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('lr = 0.0002\nepochs = 1\n\n[run]\nname = "g"\n')
    code, _, err = run_cli(["--settings", str(config), "doctor"])
    assert code == 2
    line = _one_error_line(err)
    assert "is a training configuration" in line and "--config" in line
    code, _, err = run_cli(["--config", str(config), "doctor"])  # the old name of --settings is gone
    assert code == 2 and "--config" in err


# ----------------------------------------------------------------------------------------------- 7. help


def _all_commands() -> list[tuple[str, object]]:
    import typer.main

    from histostain.cli import app

    root = typer.main.get_command(app)
    found = []
    for name in root.list_commands(None):  # type: ignore[arg-type]
        command = root.load(name)  # type: ignore[attr-defined]
        subcommands = getattr(command, "commands", None)
        if subcommands:
            found += [(f"{name} {sub}", cmd) for sub, cmd in subcommands.items()]
        else:
            found.append((name, command))
    return found


def test_7_every_command_has_an_example_and_every_optional_value_shows_its_default() -> None:
    missing_default = []
    missing_example = []
    for name, command in _all_commands():
        if "Example:" not in (command.epilog or ""):  # type: ignore[attr-defined]
            missing_example.append(name)
        for param in command.params:  # type: ignore[attr-defined]
            if param.param_type_name != "option" or param.required or param.name in {"help"}:
                continue
            is_flag = getattr(param, "is_flag", False)
            # values with a default typer prints it; flags and None ("automatic") defaults need it spelt out
            if (is_flag or param.default is None) and not isinstance(param.show_default, str):
                missing_default.append(f"{name} {max(param.opts, key=len)}")
    assert missing_example == []
    assert missing_default == []


@pytest.mark.parametrize("argv", [["--help"], ["synth", "--help"], ["prepare", "bci", "--help"], ["translate", "-h"]])
def test_7_help_reads_like_a_manual(run_cli, argv: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "120")
    code, out, _ = run_cli(argv)
    assert code == 0
    assert "<bool>" not in out and "{" not in out and "(" + "default" not in out
    assert not re.search(r"\w\s+[.,](\s|$)", out, re.M)  # no text swallowed before punctuation ("parallel .")
    if argv != ["--help"]:
        assert "Example: histostain" in out


# ------------------------------------------------------------------------------------------ 8. tile errors


@pytest.mark.parametrize(
    ("flags", "fragment"),
    [
        (["--tile", "0"], "--tile 0: must be at least 16"),
        (["--tile", "-8"], "--tile -8: must be at least 16"),
        (["--tile", "3"], "--tile 3: must be at least 16"),
        (["--overlap", "-1"], "--overlap -1: must be 0 or more"),
        (["--tile", "64", "--overlap", "40"], "--overlap 40 with --tile 64"),
        (["--batch-size", "0"], "--batch-size 0: must be at least 1"),
    ],
)
def test_8_tile_options_are_named_with_the_value_given(
    run_cli, tiles: Path, weights: Path, tmp_path: Path, flags: list[str], fragment: str
) -> None:
    out = tmp_path / "out"
    code, _, err = run_cli(
        ["-q", "translate", str(tiles), "-w", str(weights), "--direction", "ihc2he", "-o", str(out), *flags]
    )
    assert code == 2 and fragment in _one_error_line(err)
    assert not out.exists()


# --------------------------------------------------------------------------------- 10. defaults that chain


@pytest.mark.slow
def test_10_synth_then_prepare_with_default_options_works(run_cli, tmp_path: Path) -> None:
    code, _, err = run_cli(["-q", "synth", "--layout", "bci", "--n", "2", "-o", str(tmp_path / "raw")])
    assert code == 0, err
    code, out, err = run_cli(["-q", "prepare", "bci", str(tmp_path / "raw"), "-o", str(tmp_path / "p"), "--json"])
    assert code == 0, err
    assert sum(json.loads(out)["splits"].values()) == 2 * 4  # 1024 x 1024 images, 512 px patches


# ----------------------------------------------------------------------------------- 11. names and forms


def test_11_every_command_writing_a_folder_takes_out_and_o_and_weights_take_w() -> None:
    for name, command in _all_commands():
        for param in command.params:  # type: ignore[attr-defined]
            if "--out" in param.opts:
                assert "-o" in param.opts, name
            if "--weights" in param.opts:
                assert "-w" in param.opts, name


# ------------------------------------------------------------------------------------------------ 13. odds


def test_13_endonuke_synth_summary_counts_endonuke_classes(run_cli, tmp_path: Path) -> None:
    code, out, _ = run_cli(["-q", "synth", "--layout", "endonuke", "--n", "2", "-o", str(tmp_path / "e"), "--json"])
    assert code == 0
    assert set(json.loads(out)["nuclei"]) == {"stroma", "epithelium", "other"}


def test_13_a_killed_translate_leaves_a_temp_file_that_the_next_run_removes(
    run_cli, tiles: Path, weights: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    stale = out / ".t0.png.k1ll3d.tmp.png"  # what io.atomic leaves behind when a run is killed mid-write
    stale.write_bytes(b"\x89PNG half")
    code, _, err = run_cli(["-q", "translate", str(tiles), "-w", str(weights), "--direction", "ihc2he", "-o", str(out)])
    assert code == 0, err
    assert not stale.exists() and sorted(p.name for p in out.glob("*.png")) == ["t0.png", "t1.png"]


def test_13_a_missing_weights_file_hint_does_not_send_the_user_to_doctor(run_cli, tiles: Path, tmp_path: Path) -> None:
    missing = tmp_path / "nope.pth"
    code, _, err = run_cli(
        ["-q", "translate", str(tiles), "-w", str(missing), "--direction", "ihc2he", "-o", str(tmp_path / "o")]
    )
    assert code == 2
    line = _one_error_line(err)
    assert "weights file not found" in line and "doctor" not in line
