"""The root command: help, version, doctor, global options and the error contract (exit 2, one line)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from histostain import __version__


@pytest.fixture(autouse=True)
def _in_empty_folder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No ./histostain.toml of the developer's is picked up (HISTOSTAIN_* are cleared by conftest)."""
    monkeypatch.chdir(tmp_path)


def test_version(run_cli) -> None:
    code, out, _ = run_cli(["--version"])
    assert code == 0 and out.startswith(f"histostain {__version__} ")


def test_doctor_json_reports_this_cpu_machine(run_cli) -> None:
    import torch

    code, out, _ = run_cli(["doctor", "--json"])
    assert code == 0
    report = json.loads(out)  # stdout holds JSON only
    assert report["torch"] == torch.__version__
    assert report["cuda"]["available"] == torch.cuda.is_available()
    if not torch.cuda.is_available():
        assert report["resolved"]["device"] in {"cpu", "mps"}
    if report["resolved"]["device"] == "cpu" and not report["cpu"]["native_bf16"]:
        assert report["resolved"]["precision"] == "fp32" and report["resolved"]["autocast"] is False
    assert report["settings"]["device"] == {"value": "auto", "source": "default"}


def test_doctor_shows_where_settings_came_from(run_cli, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "site.toml"
    config.write_text(f'home = "{tmp_path / "cache"}"\nprecision = "fp32"\n')
    monkeypatch.setenv("HISTOSTAIN_PRECISION", "bf16")
    code, out, _ = run_cli(["--settings", str(config), "--device", "cpu", "doctor", "--json"])
    assert code == 0
    settings = json.loads(out)["settings"]
    assert settings["device"] == {"value": "cpu", "source": "flag"}
    assert settings["precision"] == {"value": "bf16", "source": "environment (HISTOSTAIN_PRECISION)"}
    assert settings["home"] == {"value": str(tmp_path / "cache"), "source": f"file ({config})"}


def test_doctor_table_is_human_readable(run_cli) -> None:
    code, out, _ = run_cli(["doctor"])
    assert code == 0
    for label in ("torch / torchvision", "device", "precision", "cache dir", "setting device"):
        assert label in out


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--precision", "int8", "doctor"], "invalid setting precision='int8' from flag"),
        (["--settings", "missing.toml", "doctor"], "settings file not found: missing.toml"),
    ],
)
def test_known_errors_print_one_red_line_and_exit_2(run_cli, args: list[str], fragment: str) -> None:
    code, out, err = run_cli(args)
    assert code == 2
    assert out == ""
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("Error: ") and fragment in lines[0]
    assert "Traceback" not in err


def test_environment_errors_name_the_variable(run_cli, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HISTOSTAIN_DEVICE", "tpu")
    code, _, err = run_cli(["doctor"])
    assert code == 2 and "HISTOSTAIN_DEVICE" in err


def test_debug_adds_the_traceback(run_cli) -> None:
    code, _, err = run_cli(["--debug", "--precision", "int8", "doctor"])
    assert code == 2
    assert "Traceback" in err and "Error: invalid setting" in err


def _subprocess(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120)


def test_unexpected_exceptions_exit_1_with_a_traceback() -> None:
    result = _subprocess(
        "import histostain.runtime.environment as env\n"
        "env.environment_report = lambda *a, **k: 1 / 0\n"
        "from histostain.cli import main\n"
        "main(['doctor'])\n"
    )
    assert result.returncode == 1
    assert "ZeroDivisionError" in result.stderr


def test_help_lists_only_built_commands_and_does_not_import_torch() -> None:
    result = _subprocess(
        "import sys\n"
        "from histostain.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit as exc:\n    code = exc.code\n"
        "print('TORCH-IMPORTED' if 'torch' in sys.modules else 'TORCH-NOT-IMPORTED', code)\n"
    )
    assert result.returncode == 0, result.stderr
    assert "TORCH-NOT-IMPORTED 0" in result.stdout
    for built in ("doctor", "synth", "prepare", "translate", "train", "segment", "pipeline", "evaluate", "weights"):
        assert built in result.stdout


def test_python_dash_m_entry_point() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "histostain", "--version"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and result.stdout.startswith("histostain ")


def test_the_invocation_is_recorded_as_typed_for_provenance(run_cli) -> None:
    from histostain.provenance import Provenance, invocation

    code, _, _ = run_cli(["--quiet", "--device", "cpu", "doctor", "--json"])
    assert code == 0
    assert invocation() == ["histostain", "--quiet", "--device", "cpu", "doctor", "--json"]
    record = Provenance.capture({"path": Path("x") / "y", "sizes": (1, 2)})
    assert record.command == ("histostain", "--quiet", "--device", "cpu", "doctor", "--json")
    assert record.to_dict()["options"] == {"path": "x/y", "sizes": [1, 2]}  # JSON-ready
    assert Provenance.from_dict(record.to_dict()) == record


def test_root_lists_commands_without_importing_them_and_their_help_lines_are_their_own() -> None:
    """The root help shows each command's one-line help from a table; it must be the command's own help."""
    from histostain.cli import RootGroup

    for entry in RootGroup.lazy_commands:
        command = entry.build()
        assert command.name == entry.name
        assert " ".join((command.help or "").split()).startswith(" ".join(entry.short_help.split())), entry.name
    result = _subprocess(
        "import sys\n"
        "from histostain.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in sys.modules if m.startswith('histostain.cli.')))\n"
    )
    assert result.returncode == 0, result.stderr
    assert "histostain.cli.train" not in result.stdout and "histostain.cli.evaluate" not in result.stdout
    assert (
        "pydantic"
        not in _subprocess(
            "import sys\nfrom histostain.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print([m for m in sys.modules if m.startswith('pydantic')])\n"
        ).stdout
    )


def test_a_lazily_listed_command_runs_and_shows_its_own_help(run_cli) -> None:
    code, out, _ = run_cli(["train", "--help"])
    assert code == 0 and "cyclegan" in out and "hovernet" in out
    code, out, err = run_cli(["train", "nope"])
    assert code == 2 and "nope" in err
