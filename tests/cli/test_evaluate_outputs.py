"""`evaluate ... --out/-o DIR`: a folder holding <metric>.json (+ <metric>_per_image.csv), refused in one line
before any work when it cannot be written (issue points 1 and 11)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from histostain.io.images import write_image, write_label_tiff
from histostain.metrics.defaults import FID_WEIGHTS_FILENAME, FID_WEIGHTS_SHA256_PREFIX

Runner = Callable[[list[str]], tuple[int, str, str]]  # the run_cli fixture of tests/conftest.py

# command -> (module of its service, the service's name)
SERVICES = {
    "celldet": ("histostain.metrics.evaluate_celldet", "evaluate_celldet"),
    "instance": ("histostain.metrics.evaluate_instance", "evaluate_instance"),
    "paired": ("histostain.metrics.evaluate_paired", "evaluate_paired"),
    "fid": ("histostain.metrics.evaluate_fid", "evaluate_fid"),
    "kid": ("histostain.metrics.evaluate_fid", "evaluate_kid"),
}


def _inputs(root: Path, command: str) -> list[str]:
    """Two small, valid inputs of ``command`` under ``root`` (FID: statistics files, so no network runs)."""
    if command == "celldet":
        for side, lines in (("gt", "10 10\n50 50\n"), ("pred", "11 10\n")):
            (root / side).mkdir(parents=True, exist_ok=True)
            (root / side / "a.txt").write_text(lines)
        return [str(root / "gt"), str(root / "pred")]
    if command == "instance":
        labels = np.zeros((16, 16), np.int32)
        labels[2:6, 2:6] = 1
        write_label_tiff(root / "gt" / "x.tif", labels)
        write_label_tiff(root / "pred" / "x.tif", labels)
        return [str(root / "gt"), str(root / "pred")]
    if command == "fid":
        from histostain.metrics.evaluate_fid import write_stats

        sha = FID_WEIGHTS_SHA256_PREFIX + "0" * 56
        rng = np.random.default_rng(0)
        for name in ("a.npz", "b.npz"):
            write_stats(root / name, rng.normal(size=4), np.eye(4), n=5000, weights_sha256=sha)
        return [str(root / "a.npz"), str(root / "b.npz")]
    rng = np.random.default_rng(1)  # paired, kid: two folders of images
    for side in ("real", "fake"):
        for index in range(2):
            write_image(root / side / f"{index}.png", rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
    return [str(root / "real"), str(root / "fake")]


def _snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root`` with its content (None for folders): to prove nothing was written."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("Error: ") and "Traceback" not in err
    return lines[0]


def _never_called(monkeypatch: pytest.MonkeyPatch, command: str) -> None:
    """Replace the command's service by one that fails the test: the refusal must come before any work."""
    module, name = SERVICES[command]

    def service(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"{name} ran although --out cannot be written")

    monkeypatch.setattr(f"{module}.{name}", service)


# ------------------------------------------------------------------------------------ point 11: --out is a folder


@pytest.mark.parametrize("command", ["celldet", "instance", "paired"])
def test_out_folder_receives_metric_json_and_per_image_csv(tmp_path: Path, run_cli: Runner, command: str) -> None:
    inputs = _inputs(tmp_path / "in", command)
    out = tmp_path / "results" / "run1"  # created, parents included
    code, stdout, err = run_cli(["--quiet", "evaluate", command, *inputs, "-o", str(out)])
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == [f"{command}.json", f"{command}_per_image.csv"]
    payload = json.loads((out / f"{command}.json").read_text())
    assert payload["metric"] == command and payload["provenance"]["options"]["out"] == str(out)
    rows = (out / f"{command}_per_image.csv").read_text().splitlines()
    assert len(rows) == 1 + len(payload["per_image"]) >= 2  # header + one line per image / pair


def test_fid_out_folder_receives_fid_json_only(tmp_path: Path, run_cli: Runner) -> None:
    """FID compares two sets as a whole: no per-image rows, so no CSV (and its help promises none)."""
    inputs = _inputs(tmp_path / "in", "fid")
    code, _, err = run_cli(["--quiet", "evaluate", "fid", *inputs, "--out", str(tmp_path / "res")])
    assert code == 0, err
    assert [p.name for p in (tmp_path / "res").iterdir()] == ["fid.json"]
    assert json.loads((tmp_path / "res" / "fid.json").read_text())["metric"] == "fid"
    for command in ("fid", "kid"):
        code, help_text, _ = run_cli(["evaluate", command, "--help"])
        assert code == 0 and "csv" not in help_text.lower() and f"{command}.json" in help_text


def test_fid_weights_short_option_is_w(tmp_path: Path, run_cli: Runner) -> None:
    inputs = _inputs(tmp_path / "in", "kid")
    code, out, err = run_cli(["--quiet", "evaluate", "fid", *inputs, "-w", str(tmp_path / "nowhere.pth")])
    assert code == 2 and out == ""
    assert "nowhere.pth" in _one_error_line(err)


# ------------------------------------------------------------------ point 1: unwritable --out, one line, no work


@pytest.mark.parametrize("command", list(SERVICES))
def test_out_that_is_a_file_is_refused_before_any_work(
    tmp_path: Path, run_cli: Runner, monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    inputs = _inputs(tmp_path / "in", command)
    (tmp_path / "out").mkdir()
    target = tmp_path / "out" / "metrics.json"  # the old habit: a file name
    target.write_text("keep me")
    before = _snapshot(tmp_path)
    _never_called(monkeypatch, command)
    code, stdout, err = run_cli(["--quiet", "evaluate", command, *inputs, "--out", str(target)])
    assert code == 2 and stdout == ""
    assert _one_error_line(err) == (
        f"Error: --out {target} is a file, not a folder (hint: choose a folder for the outputs)"
    )
    assert _snapshot(tmp_path) == before  # nothing written, nothing half-written


@pytest.mark.parametrize("command", ["celldet", "paired"])
def test_out_through_a_file_is_refused_before_any_work(
    tmp_path: Path, run_cli: Runner, monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    inputs = _inputs(tmp_path / "in", command)
    (tmp_path / "notes.txt").write_text("a file")
    target = tmp_path / "notes.txt" / "results"
    before = _snapshot(tmp_path)
    _never_called(monkeypatch, command)
    code, stdout, err = run_cli(["--quiet", "evaluate", command, *inputs, "-o", str(target)])
    assert code == 2 and stdout == ""
    line = _one_error_line(err)
    assert f"cannot write --out {target}: {tmp_path / 'notes.txt'} is a file, not a folder" in line
    assert _snapshot(tmp_path) == before


def test_paired_out_holding_a_folder_where_the_json_goes_is_refused(
    tmp_path: Path, run_cli: Runner, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Today's IsADirectoryError traceback after the work: now one line, before it."""
    inputs = _inputs(tmp_path / "in", "paired")
    (tmp_path / "res" / "paired.json").mkdir(parents=True)
    before = _snapshot(tmp_path)
    _never_called(monkeypatch, "paired")
    code, stdout, err = run_cli(["--quiet", "evaluate", "paired", *inputs, "--out", str(tmp_path / "res")])
    assert code == 2 and stdout == ""
    res = tmp_path / "res"
    assert _one_error_line(err) == (
        f"Error: cannot write --out {res}: {res / 'paired.json'} is a folder, not a file "
        f"(hint: remove or rename {res / 'paired.json'}, or choose another --out folder)"
    )
    assert _snapshot(tmp_path) == before


def _read_only(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    """``folder`` behaves as read-only for the up-front check (tests run as root, where chmod does not bite)."""
    real_access = os.access

    def access(path: object, mode: int, *args: object, **kwargs: object) -> bool:
        if Path(str(path)) == folder and mode & os.W_OK:
            return False
        return real_access(path, mode, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "access", access)


@pytest.mark.parametrize("existing", [True, False], ids=["existing-folder", "folder-to-create"])
def test_out_in_a_read_only_location_is_refused(
    tmp_path: Path, run_cli: Runner, monkeypatch: pytest.MonkeyPatch, existing: bool
) -> None:
    inputs = _inputs(tmp_path / "in", "celldet")
    readonly = tmp_path / "readonly"
    readonly.mkdir()
    target = readonly if existing else readonly / "new"
    _read_only(monkeypatch, readonly)
    _never_called(monkeypatch, "celldet")
    code, stdout, err = run_cli(["--quiet", "evaluate", "celldet", *inputs, "--out", str(target)])
    assert code == 2 and stdout == ""
    line = _one_error_line(err)
    assert f"cannot write --out {target}: " in line and "not writable (permission denied or read-only)" in line
    assert list(readonly.iterdir()) == []


def test_fid_save_stats_unwritable_is_refused_before_any_feature(
    tmp_path: Path, run_cli: Runner, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Today FID loads the network, computes every feature and then fails to write --save-stats."""
    (tmp_path / "home" / "weights").mkdir(parents=True)
    (tmp_path / "home" / "weights" / FID_WEIGHTS_FILENAME).write_bytes(b"found; never loaded")
    monkeypatch.setenv("HISTOSTAIN_HOME", str(tmp_path / "home"))
    real, fake = _inputs(tmp_path / "in", "paired")

    def no_features(*args: object, **kwargs: object) -> None:
        raise AssertionError("features computed although --save-stats cannot be written")

    monkeypatch.setattr("histostain.metrics.evaluate_fid.extract_features", no_features)
    monkeypatch.setattr("histostain.metrics.evaluate_fid.load_fid_inception", no_features)
    (tmp_path / "file").write_text("x")
    (tmp_path / "stats.npz").mkdir()
    cases = {
        tmp_path / "file" / "real.npz": f"cannot write --save-stats {tmp_path / 'file' / 'real.npz'}: "
        f"{tmp_path / 'file'} is a file, not a folder",
        tmp_path / "stats.npz": f"--save-stats {tmp_path / 'stats.npz'} is a folder; expected a .npz file name "
        f"(hint: e.g. --save-stats {tmp_path / 'stats.npz' / 'real_stats.npz'})",
    }
    before = _snapshot(tmp_path)
    for target, message in cases.items():
        code, stdout, err = run_cli(["--quiet", "evaluate", "fid", real, fake, "--save-stats", str(target)])
        assert code == 2 and stdout == ""
        assert message in _one_error_line(err)
    assert _snapshot(tmp_path) == before


def test_out_is_not_created_when_the_evaluation_fails(tmp_path: Path, run_cli: Runner) -> None:
    """The check creates nothing, so a run stopped by its inputs leaves no empty output folder behind."""
    (tmp_path / "gt").mkdir()
    code, _, err = run_cli(
        ["--quiet", "evaluate", "celldet", str(tmp_path / "gt"), str(tmp_path / "gt"), "-o", str(tmp_path / "res")]
    )
    assert code == 2 and "no annotation files" in _one_error_line(err)
    assert not (tmp_path / "res").exists()
