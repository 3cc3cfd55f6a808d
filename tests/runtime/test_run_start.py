"""How a training start treats its run folder (new, resumed, a dead start's remains, --overwrite, refused), the
runs folder check, the settings file given as training options, and TensorBoard's real state.

The CLI tests (tests/cli/test_train_restart_cli.py) run the same cases through ``histostain train``.
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from histostain.errors import ConfigError, InputError
from histostain.provenance import Provenance
from histostain.runtime.training import (
    LoopConfig,
    MetricsLog,
    RunDirectory,
    open_run,
    resolve_training_config,
    tensorboard_problem,
)
from histostain.translation.train_config import CycleGANConfig


def _started(tmp_path: Path, name: str = "r", *, checkpoints: tuple[str, ...] = (), **info: Any) -> RunDirectory:
    """A run folder as a start leaves it: config.toml with its [run] table, checkpoints/, samples/."""
    run = RunDirectory(tmp_path, name)
    run.create()
    run.write_config({"lr": 0.1}, Provenance.capture(command=["histostain", "train"]), info=info)
    for checkpoint in checkpoints:
        (run.checkpoints / checkpoint).write_bytes(b"weights")
    return run


# ------------------------------------------------------------------------------------------ point 2: the plan


def test_a_new_or_empty_folder_starts_and_resume_needs_a_run(tmp_path: Path) -> None:
    run = RunDirectory(tmp_path, "new")
    start = run.plan_start(resume=False)
    assert (start.resume, start.replace, start.note) == (False, False, "")
    with pytest.raises(ConfigError, match="cannot resume: there is no run"):
        run.plan_start(resume=True)
    run.root.mkdir()
    assert run.plan_start(resume=False, overwrite=True).replace is False  # nothing to delete


@pytest.mark.parametrize("resume", [False, True])
def test_a_run_that_died_before_its_first_checkpoint_is_started_again(tmp_path: Path, resume: bool) -> None:
    run = _started(tmp_path)
    (run.checkpoints / ".last.pt.1234.tmp.pt").write_bytes(b"half")  # the temp file of a save a kill cut short
    (run.samples / "step_0000001.png").write_bytes(b"png")
    start = run.plan_start(resume=resume)
    assert (start.resume, start.replace, start.reuse_options) == (False, True, resume)
    assert "has no checkpoint" in start.note and "starting it afresh" in start.note
    assert start.note.startswith("nothing to resume") == resume


def test_a_run_with_checkpoints_is_resumed_replaced_or_refused(tmp_path: Path) -> None:
    run = _started(tmp_path, checkpoints=("last.pt", "epoch_0005.pt"))
    with pytest.raises(ConfigError, match="already exists and has checkpoints") as info:
        run.plan_start(resume=False)
    assert "--resume" in info.value.one_line() and "--overwrite" in info.value.one_line()
    start = run.plan_start(resume=True)
    assert (start.resume, start.replace, start.reuse_options) == (True, False, True)
    start = run.plan_start(resume=False, overwrite=True)
    assert (start.resume, start.replace) == (False, True) and "epoch_0005.pt, last.pt" in start.note
    with pytest.raises(ConfigError, match="--resume and --overwrite cannot be used together"):
        run.plan_start(resume=True, overwrite=True)
    (run.checkpoints / "last.pt").unlink()
    with pytest.raises(ConfigError, match="last.pt does not exist .the run has epoch_0005.pt"):
        run.plan_start(resume=True)


def test_a_folder_that_is_not_a_run_is_never_touched(tmp_path: Path) -> None:
    run = RunDirectory(tmp_path, "mine")
    run.root.mkdir()
    (run.root / "notes.txt").write_text("precious")
    (run.root / "config.toml").write_text("lr = 1\n")  # TOML, but no [run] table
    for resume, overwrite in ((False, False), (False, True), (True, False)):
        with pytest.raises(InputError, match="is not a histostain run folder"):
            run.plan_start(resume=resume, overwrite=overwrite)
    with pytest.raises(InputError, match="not deleting it"):
        run.remove()
    assert (run.root / "notes.txt").read_text() == "precious"
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="run folder .* is a file, not a folder"):
        RunDirectory(tmp_path, "file").plan_start(resume=False)


def test_remove_frees_the_name_and_leaves_nothing_behind(tmp_path: Path) -> None:
    run = _started(tmp_path, checkpoints=("last.pt",))
    run.remove()
    assert list(tmp_path.iterdir()) == []


def test_a_run_being_trained_by_a_live_process_here_is_refused(tmp_path: Path) -> None:
    import socket
    import subprocess

    host = socket.gethostname()
    # a live histostain process that is not this one (its command line names histostain, as `histostain train`)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "histostain", "train"])
    try:
        run = _started(tmp_path, pid=other.pid, host=host)
        with pytest.raises(ConfigError, match=f"being trained right now by process {other.pid} on this machine"):
            run.plan_start(resume=False)
        with pytest.raises(ConfigError, match="being trained right now"):
            _started(tmp_path, "busy", checkpoints=("last.pt",), pid=other.pid, host=host).plan_start(resume=True)
        assert run.plan_start(resume=False, overwrite=True).replace  # the user may insist
        assert _started(tmp_path, "elsewhere", pid=other.pid, host="another-machine").plan_start(resume=False).replace
    finally:
        other.kill()
        other.wait()
    assert run.plan_start(resume=False).replace  # the process is gone: the run starts again
    if Path("/proc/self/cmdline").is_file():  # a live process that is not histostain (a pid reused): no block
        unrelated = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        try:
            assert _started(tmp_path, "reused", pid=unrelated.pid, host=host).plan_start(resume=False).replace
        finally:
            unrelated.kill()
            unrelated.wait()


def test_open_run_reuses_a_dead_starts_options_only_with_resume(tmp_path: Path) -> None:
    _started(tmp_path)
    seen: list[Any] = []

    def resolve(stored: Any) -> LoopConfig:
        seen.append(stored)
        return LoopConfig(epochs=1)

    def never(stored: Any, resolved: Any) -> None:
        raise AssertionError("nothing to resume: no fixed options to compare")

    start, _ = open_run(tmp_path, "r", True, None, resolve, never)
    assert (start.resume, start.replace, seen[-1]) == (False, True, {"lr": 0.1})
    start, _ = open_run(tmp_path, "r", False, None, resolve, never)
    assert (start.resume, seen[-1]) == (False, None)


# ------------------------------------------------------------------------------------------ point 1: --runs-dir


@pytest.mark.parametrize("where", ["file", "through_file"])
def test_a_runs_dir_that_cannot_be_a_folder_is_refused_before_anything(tmp_path: Path, where: str) -> None:
    (tmp_path / "file").write_text("x")
    runs = tmp_path / "file" if where == "file" else tmp_path / "file" / "runs"
    with pytest.raises(InputError, match="--runs-dir .* is a file|is a file, not a folder"):
        open_run(runs, "r", False, None, lambda stored: pytest.fail("resolved"), lambda s, r: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


# ------------------------------------------------------------------------------------------ metrics.csv


def test_a_metrics_log_made_before_the_folder_is_replaced_keeps_no_stale_columns(tmp_path: Path) -> None:
    path = tmp_path / "metrics.csv"
    path.write_text("step,stale_column\n7,1\n")
    log = MetricsLog(path)  # as a trainer makes it, before the dead start's files are replaced
    path.unlink()
    log.write({"step": 1, "loss": 0.5})
    assert path.read_text() == "step,loss\n1,0.5\n"


# ------------------------------------------------------------------------------------------ point 5


@pytest.mark.parametrize(
    "text", ['device = "cpu"\nprecision = "fp32"\n', 'home = "/data/cache"\nnum_threads = 4\nquiet = true\n']
)
def test_a_settings_file_as_training_options_is_named_for_what_it_is(tmp_path: Path, text: str) -> None:
    path = tmp_path / "runs.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        resolve_training_config(CycleGANConfig, "train cyclegan", config_file=path)
    keys = ", ".join(tomllib.loads(text))
    assert info.value.one_line() == (
        f"{path} is a histostain settings file ({keys}), not training options "
        f"(hint: pass it as `histostain --settings {path} train cyclegan ...`, before the command)"
    )


def test_a_setting_among_training_options_says_where_settings_go(tmp_path: Path) -> None:
    path = tmp_path / "mixed.toml"
    path.write_text('lr = 0.001\ndevice = "cuda"\n')
    with pytest.raises(ConfigError) as info:
        resolve_training_config(CycleGANConfig, "train cyclegan", config_file=path)
    message = info.value.one_line()
    assert message.startswith(
        f"invalid training option device: a histostain setting, not a training option (from {path})"
    )
    assert "histostain --settings FILE train cyclegan" in message and "HISTOSTAIN_DEVICE" in message
    path.write_text("lr = 0.001\nwhatever = 1\n")  # an unknown key stays an unknown option
    with pytest.raises(ConfigError, match="whatever: unknown option"):
        resolve_training_config(CycleGANConfig, "train cyclegan", config_file=path)


# ------------------------------------------------------------------------------------------ point 13


def test_tensorboard_problem_names_a_missing_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # import tensorboard fails as when not installed
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    assert tensorboard_problem() == "not installed"
