"""What `evaluate` says besides its numbers: each warning exactly once (point 6), the fp32 note only when a
reduced precision was asked for (point 6), and FID/KID from weights that are not the published file flagged
(point 12)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from histostain.io.images import write_image
from histostain.metrics.defaults import FID_WEIGHTS_SHA256_PREFIX
from histostain.metrics.evaluate_fid import write_stats
from histostain.runtime.device import Capabilities

Runner = Callable[[list[str]], tuple[int, str, str]]  # the run_cli fixture of tests/conftest.py

NOT_PUBLISHED = "is not the published FID-Inception file"
FP32_NOTE = "FID/KID features are computed in fp32"


def _stats_pair(folder: Path) -> list[str]:
    """Two statistics files of 5 images each (published weights' hash): no network, one N < 2048 warning each."""
    rng = np.random.default_rng(0)
    sha = FID_WEIGHTS_SHA256_PREFIX + "0" * 56
    paths = [write_stats(folder / f"{name}.npz", rng.normal(size=4), np.eye(4), 5, sha) for name in ("a", "b")]
    return [str(path) for path in paths]


@pytest.mark.parametrize("quiet", [False, True], ids=["default", "quiet"])
def test_each_warning_is_printed_exactly_once(tmp_path: Path, run_cli: Runner, quiet: bool) -> None:
    """Today a FID warning shows as a log WARNING line and again as a yellow `warning:` line, also under -q."""
    code, stdout, err = run_cli([*(["-q"] if quiet else []), "evaluate", "fid", *_stats_pair(tmp_path)])
    assert code == 0, err
    for side in ("real", "fake"):
        assert err.count(f"N {side} = 5 < 2048") == 1, err
    assert err.count("warning:") == 2  # the CLI's own line, once per warning
    assert "WARNING" not in err  # no log record repeating them


def _images(folder: Path, count: int = 2) -> str:
    rng = np.random.default_rng(2)
    for index in range(count):
        write_image(folder / f"{index}.png", rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    return str(folder)


@pytest.mark.slow
def test_fp32_note_only_when_a_reduced_precision_was_requested(
    tmp_path: Path, run_cli: Runner, monkeypatch: pytest.MonkeyPatch, install_fid_weights
) -> None:
    """On a machine where `auto` picks bf16, the user asked for nothing: no note that bf16 "is not used"."""
    install_fid_weights(tmp_path / "home" / "weights")
    monkeypatch.setenv("HISTOSTAIN_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(
        "histostain.runtime.device.probe_capabilities", lambda: Capabilities(cpu_bf16=True, cpu_name="fake bf16 CPU")
    )
    images = _images(tmp_path / "real")
    code, _, err = run_cli(["--device", "cpu", "evaluate", "fid", images, images])  # auto -> bf16 on this "CPU"
    assert code == 0, err
    assert "device: cpu (bf16;" in err  # auto chose bf16 ...
    assert FP32_NOTE not in " ".join(err.split())  # ... which is no reason to talk about it
    code, _, err = run_cli(["--device", "cpu", "--precision", "bf16", "evaluate", "fid", images, images])
    assert code == 0, err
    words = " ".join(err.split())  # the log handler wraps long lines at the console width
    assert words.count(f"{FP32_NOTE}; the requested precision bf16 is not used") == 1


@pytest.mark.slow
def test_random_fid_weights_are_flagged_in_warning_table_and_json(
    tmp_path: Path, run_cli: Runner, monkeypatch: pytest.MonkeyPatch, install_fid_weights
) -> None:
    """The tests' random network gives a plausible-looking FID; the result must say it compares with nothing."""
    install_fid_weights(tmp_path / "home" / "weights")
    monkeypatch.setenv("HISTOSTAIN_HOME", str(tmp_path / "home"))
    images = _images(tmp_path / "real")
    code, stdout, err = run_cli(["evaluate", "fid", images, images, "-o", str(tmp_path / "res")])
    assert code == 0, err
    assert "NOT the published FID-Inception file (not comparable with papers)" in stdout  # a row of the table
    assert err.count(NOT_PUBLISHED) == 1, err
    payload = json.loads((tmp_path / "res" / "fid.json").read_text())
    assert payload["meta"]["weights_published"] is False
    assert sum(NOT_PUBLISHED in warning for warning in payload["warnings"]) == 1
    assert "not comparable with published values" in payload["warnings"][0]
