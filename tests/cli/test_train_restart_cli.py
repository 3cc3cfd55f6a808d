"""New-user defects of `histostain train`, each reproduced through the real entry point (one line on stderr,
exit code, nothing half-written left):

1. an unwritable --runs-dir is refused in one line before any data is read;
2. a run that died before its first checkpoint starts again; --overwrite; --resume with --overwrite; Ctrl-C
   exits 130 after saving;
5. a settings file given to `train --config` is named for what it is;
7. the help of both train commands: every default shown, PREPARED, a runnable example;
13. a wanted TensorBoard that is not installed is said once and recorded.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from histostain.errors import InputError
from histostain.runtime.checkpoint import load_histostain_checkpoint
from histostain.runtime.training import Trainer

CLI = ["--quiet", "--device", "cpu"]  # global options: no progress output, and CPU even on a machine with a GPU
TINY = ["--ngf", "4", "--ndf", "4", "--n-blocks", "1", "--crop", "32", "--num-workers", "0"]


@pytest.fixture
def prepared(prepared_bci: Path) -> Path:
    """The session's miniature prepared BCI (tests/conftest.py)."""
    return prepared_bci


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HISTOSTAIN_NUM_THREADS", "1")  # torch is first imported inside the command


def _one_error_line(err: str) -> str:
    """The single `Error: ...` line a refused command prints (and nothing else: no traceback)."""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "Traceback" not in err, err
    return lines[0].removeprefix("Error: ")


def _said(err: str) -> str:
    """stderr with the log handler's wrapping undone (a log line is one line; rich folds it to the terminal)."""
    return " ".join(err.split())


def _run_table(folder: Path) -> dict[str, Any]:
    with (folder / "config.toml").open("rb") as handle:
        return tomllib.load(handle)


def _cyclegan(prepared: Path, runs: Path, name: str = "r", *extra: str, quiet: bool = True) -> list[str]:
    globals_ = CLI if quiet else CLI[1:]
    return [*globals_, "train", "cyclegan", str(prepared), "--name", name, "--runs-dir", str(runs), *extra]


# ------------------------------------------------------------------------------------------ 1: unwritable --runs-dir


@pytest.fixture
def no_data_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """Reading the prepared BCI data is a bug in these tests: the location must be refused before."""
    import histostain.datasets.torch_data as torch_data

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the dataset was read before the output location was checked")

    monkeypatch.setattr(torch_data, "TranslationPairs", refuse)


@pytest.mark.usefixtures("no_data_read")
def test_p1_runs_dir_that_is_a_file_is_one_line_before_any_data(tmp_path: Path, prepared: Path, run_cli) -> None:
    runs = tmp_path / "runs"
    runs.write_text("not a folder")
    code, out, err = run_cli(_cyclegan(prepared, runs))
    assert code == 2 and out == ""
    assert _one_error_line(err) == f"--runs-dir {runs} is a file, not a folder (hint: choose a folder for the outputs)"
    assert runs.read_text() == "not a folder"


@pytest.mark.usefixtures("no_data_read")
def test_p1_runs_dir_through_a_file_is_one_line(tmp_path: Path, prepared: Path, run_cli) -> None:
    (tmp_path / "data.txt").write_text("x")
    runs = tmp_path / "data.txt" / "runs"
    code, out, err = run_cli(_cyclegan(prepared, runs))
    assert code == 2 and out == ""
    assert _one_error_line(err).startswith(f"cannot write --runs-dir {runs}: {tmp_path / 'data.txt'} is a file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.txt"]


@pytest.mark.usefixtures("no_data_read")
def test_p1_read_only_runs_dir_is_one_line(
    tmp_path: Path, prepared: Path, run_cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs = tmp_path / "readonly"
    runs.mkdir()
    real_access = os.access

    def access(path: Any, mode: int, **kwargs: Any) -> bool:
        # root may write anywhere: the folder answers "not writable" as a read-only mount or chmod 555 would
        return not (Path(path) == runs and mode & os.W_OK) and real_access(path, mode, **kwargs)

    monkeypatch.setattr(os, "access", access)
    code, out, err = run_cli(_cyclegan(prepared, runs))
    assert code == 2 and out == ""
    assert _one_error_line(err).startswith(f"cannot write --runs-dir {runs}: the folder is not writable")
    assert list(runs.iterdir()) == []


def test_p1_hovernet_checks_runs_dir_before_its_data(tmp_path: Path, run_cli) -> None:
    runs = tmp_path / "runs"
    runs.write_text("x")
    missing = tmp_path / "no_such_prepared"  # the data would fail too, but the location is checked first
    code, _, err = run_cli([*CLI, "train", "hovernet", str(missing), "--name", "h", "--runs-dir", str(runs)])
    assert code == 2 and _one_error_line(err).startswith(f"--runs-dir {runs} is a file, not a folder")


# ------------------------------------------------------------------------------------------ 2: restart, overwrite


def _leave_a_dead_start(prepared: Path, runs: Path, run_cli, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Start a run that dies at its first batch (a bad image) and add what a later kill -9 leaves behind."""
    import histostain.datasets.torch_data as torch_data

    calls = {"n": 0}
    real = torch_data.TranslationPairs.__getitem__

    def bad_image(self: Any, index: int) -> Any:
        calls["n"] += 1
        if calls["n"] > 1:  # the service reads sample 0 to check the patch size; the loop's first read fails
            raise InputError("cannot read prepared/bci/train/IHC/x.png: truncated file")
        return real(self, index)

    with monkeypatch.context() as patch:
        patch.setattr(torch_data.TranslationPairs, "__getitem__", bad_image)
        code, _, err = run_cli(_cyclegan(prepared, runs, "r", *TINY, "--max-steps", "2"))
    assert code == 2 and "truncated file" in err
    folder = runs / "r"
    assert (folder / "config.toml").is_file() and not (folder / "checkpoints" / "last.pt").exists()
    (folder / "metrics.csv").write_text("step,epoch,stale_column\n1,1,9\n")
    (folder / "samples" / "step_0000099.png").write_bytes(b"stale")
    (folder / "checkpoints" / ".last.pt.4242.tmp.pt").write_bytes(b"a save cut short")
    return folder


def _assert_fresh(folder: Path, command: list[str]) -> None:
    """The folder holds exactly the new start: its checkpoint, its [run] record, none of the stale files."""
    assert load_histostain_checkpoint(folder / "checkpoints" / "last.pt")["step"] == 1
    run = _run_table(folder)["run"]
    assert run["command"] == ["histostain", *command] and "resumed" not in run
    assert "stale_column" not in (folder / "metrics.csv").read_text().splitlines()[0]
    assert sorted(p.name for p in (folder / "samples").iterdir()) == ["step_0000001.png"]
    assert sorted(p.name for p in (folder / "checkpoints").iterdir()) == ["last.pt"]


def test_p2_run_that_died_before_its_first_checkpoint_restarts_with_the_same_command(
    tmp_path: Path, prepared: Path, run_cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs = tmp_path / "runs"
    folder = _leave_a_dead_start(prepared, runs, run_cli, monkeypatch)
    again = _cyclegan(prepared, runs, "r", *TINY, "--max-steps", "1", "--sample-every", "1", quiet=False)
    code, _, err = run_cli(again)
    assert code == 0, err
    assert "has no checkpoint (its last start stopped before the first save): starting it afresh" in _said(err)
    _assert_fresh(folder, again)


def test_p2_resume_of_a_run_without_checkpoint_starts_fresh_with_its_options(
    tmp_path: Path, prepared: Path, run_cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs = tmp_path / "runs"
    folder = _leave_a_dead_start(prepared, runs, run_cli, monkeypatch)
    resumed = _cyclegan(prepared, runs, "r", "--resume", "--max-steps", "1", "--sample-every", "1", quiet=False)
    code, _, err = run_cli(resumed)
    assert code == 0, err
    assert "nothing to resume:" in _said(err) and "starting it afresh with its recorded options" in _said(err)
    _assert_fresh(folder, resumed)
    assert _run_table(folder)["ngf"] == 4  # the dead start's options (TINY) were the base, not the defaults


def test_p2_overwrite_replaces_a_run_with_checkpoints(tmp_path: Path, prepared: Path, run_cli) -> None:
    runs = tmp_path / "runs"
    first = _cyclegan(prepared, runs, "r", *TINY, "--max-steps", "2", "--log-every", "1")
    assert run_cli(first)[0] == 0
    code, out, err = run_cli(first)  # the same command again: refused, the run kept
    assert code == 2 and out == ""
    assert _one_error_line(err) == (
        f"run folder {runs / 'r'} already exists and has checkpoints (hint: add --resume to continue it, "
        "--overwrite to start it again from scratch, or choose another --name)"
    )
    again = [*first[:-4], "--max-steps", "1", "--overwrite"]
    code, _, err = run_cli(again)
    assert code == 0, err
    assert load_histostain_checkpoint(runs / "r" / "checkpoints" / "last.pt")["step"] == 1
    run = _run_table(runs / "r")["run"]
    assert run["command"] == ["histostain", *again] and "resumed" not in run
    steps = [line.split(",")[0] for line in (runs / "r" / "metrics.csv").read_text().splitlines()]
    assert steps == ["step", "1"]  # the replaced run's rows (steps 1 and 2) are gone
    assert [p.name for p in runs.iterdir()] == ["r"]  # no trash left beside it


def test_p2_overwrite_never_deletes_a_folder_that_is_not_a_run(tmp_path: Path, prepared: Path, run_cli) -> None:
    runs = tmp_path / "runs"
    (runs / "r").mkdir(parents=True)
    (runs / "r" / "thesis.tex").write_text("precious")
    for extra in ([], ["--overwrite"]):
        code, out, err = run_cli(_cyclegan(prepared, runs, "r", *TINY, *extra))
        assert code == 2 and out == ""
        assert _one_error_line(err).startswith(f"{runs / 'r'} exists and is not a histostain run folder")
    assert [p.name for p in (runs / "r").iterdir()] == ["thesis.tex"]


@pytest.mark.parametrize("command", ["cyclegan", "hovernet"])
def test_p2_resume_with_overwrite_is_one_line(tmp_path: Path, prepared: Path, run_cli, command: str) -> None:
    args = [*CLI, "train", command, str(prepared), "--name", "r", "--runs-dir", str(tmp_path / "runs")]
    code, out, err = run_cli([*args, "--resume", "--overwrite"])
    assert code == 2 and out == ""
    assert _one_error_line(err) == (
        "--resume and --overwrite cannot be used together (--resume continues the run, --overwrite deletes it and "
        "starts again) (hint: drop one of them)"
    )
    assert not (tmp_path / "runs").exists()


def test_p2_ctrl_c_saves_prints_the_summary_and_exits_130(
    tmp_path: Path, prepared: Path, run_cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_init = Trainer.__init__

    def init(self: Trainer, *args: Any, **kwargs: Any) -> None:
        real_init(self, *args, **kwargs)
        # the user presses Ctrl-C during step 1: a real SIGINT, handled by the loop's own signal handler
        self.on_step_end = lambda t: os.kill(os.getpid(), signal.SIGINT) if t.state.step == 1 else None

    monkeypatch.setattr(Trainer, "__init__", init)
    runs = tmp_path / "runs"
    code, out, err = run_cli(_cyclegan(prepared, runs, "r", *TINY, "--max-steps", "3"))
    assert code == 130, err
    assert "interrupted" in out and "last checkpoint" in out  # the summary is still printed
    assert "continue with the same command plus --resume" in err and "Traceback" not in err
    assert load_histostain_checkpoint(runs / "r" / "checkpoints" / "last.pt")["step"] == 1


# ------------------------------------------------------------------------------------------ 5: a settings file


def test_p5_settings_file_given_to_train_config_is_one_line(tmp_path: Path, prepared: Path, run_cli) -> None:
    settings = tmp_path / "runs.toml"
    settings.write_text('device = "cpu"\nprecision = "fp32"\n')
    code, out, err = run_cli(_cyclegan(prepared, tmp_path / "runs", "r", "--config", str(settings)))
    assert code == 2 and out == ""
    assert _one_error_line(err) == (
        f"{settings} is a histostain settings file (device, precision), not training options "
        f"(hint: pass it as `histostain --settings {settings} train cyclegan ...`, before the command)"
    )
    assert not (tmp_path / "runs").exists()


# ------------------------------------------------------------------------------------------ 7: --help


def _option_help(out: str, flag: str) -> str:
    """The rows of ``flag`` in the rich help panel (its first row and the continuation rows below it)."""
    rows = out.splitlines()
    first = next(i for i, row in enumerate(rows) if re.match(rf"│ [ *]  {flag}[\s/]", row))
    block = [rows[first]]
    for row in rows[first + 1 :]:
        if re.match(r"│ [ *]  -", row) or row.startswith("╰"):
            break
        block.append(row)
    return _said(" ".join(block))


def _train_command(name: str) -> Any:
    import typer.main

    from histostain.cli import app

    return typer.main.get_command(app).load("train").commands[name]  # type: ignore[attr-defined]


@pytest.mark.parametrize("name", ["cyclegan", "hovernet"])
def test_p7_every_option_shows_its_default_and_the_argument_is_prepared(name: str) -> None:
    command = _train_command(name)
    missing = [
        param.name
        for param in command.params
        if param.param_type_name == "option" and not param.required and not isinstance(param.show_default, str)
    ]
    assert missing == [], f"options of train {name} without a shown default"
    (argument,) = [param for param in command.params if param.param_type_name == "argument"]
    assert argument.metavar == "PREPARED"


@pytest.mark.parametrize(
    ("name", "shown"),
    [
        ("cyclegan", {"--val-fid": "off", "--max-steps": "no limit", "--resume": "off", "--overwrite": "off"}),
        ("hovernet", {"--init": "scratch", "--max-steps": "no limit", "--config": "none", "--json": "off"}),
    ],
)
def test_p7_help_states_the_defaults_and_a_runnable_example(
    name: str, shown: dict[str, str], run_cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # one line per option
    code, out, _ = run_cli(["train", name, "--help"])
    assert code == 0
    assert re.search(rf"Usage: histostain train {name} \[OPTIONS\] PREPARED", out)
    for flag, default in shown.items():
        assert f"[default: {default}]" in _option_help(out, flag)
    assert "scratch ," not in out and "(scratch)" not in out
    example = shlex.split(_train_command(name).epilog.removeprefix("Example: "))
    assert example[:3] == ["histostain", "train", name] and " ".join(example) in " ".join(out.split())
    _train_command(name).make_context(name, example[3:])  # every flag of the example exists and parses


# ------------------------------------------------------------------------------------------ 13: tensorboard


def test_p13_missing_tensorboard_is_said_once_and_recorded(
    tmp_path: Path, prepared: Path, run_cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # `import tensorboard` fails: not installed
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    runs = tmp_path / "runs"
    code, _, err = run_cli(_cyclegan(prepared, runs, "r", *TINY, "--max-steps", "2", "--log-every", "1"))
    assert code == 0, err
    warning = "tensorboard is not installed: no event files are written (pip install tensorboard)"
    assert _said(err).count(warning) == 1 and err.count("tensorboard is") == 1
    config = _run_table(runs / "r")
    assert config["tensorboard"] is True and config["run"]["tensorboard"] == "not installed"
    assert not (runs / "r" / "tensorboard").exists()

    off = tmp_path / "off.toml"
    off.write_text("tensorboard = false\n")
    code, _, err = run_cli(_cyclegan(prepared, runs, "off", *TINY, "--max-steps", "1", "--config", str(off)))
    assert code == 0 and "tensorboard" not in err
    assert _run_table(runs / "off")["run"]["tensorboard"] == "off"
