"""`histostain evaluate <command> --help` (issue point 7): every default shown as `[default: X]`, capital
argument names in the usage line, no text eaten by rich markup, one runnable example per command."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
import typer

Runner = Callable[[list[str]], tuple[int, str, str]]  # the run_cli fixture of tests/conftest.py

USAGE = {
    "fid": "histostain evaluate fid [OPTIONS] REAL FAKE",
    "kid": "histostain evaluate kid [OPTIONS] REAL FAKE",
    "celldet": "histostain evaluate celldet [OPTIONS] TRUE PRED",
    "instance": "histostain evaluate instance [OPTIONS] TRUE PRED",
    "paired": "histostain evaluate paired [OPTIONS] REAL FAKE",
}
# defaults that were missing from the help before (issue point 7), as they must read now
SHOWN = {
    "fid": ["[default: auto: 0 on a CPU, min(4, CPUs) on a GPU]", "[default: none]"],
    "kid": ["[default: auto: 0 on a CPU, min(4, CPUs) on a GPU]"],
    "celldet": [
        "[default: from the prepared manifest, else none]",
        "[default: test if present, else the only split]",
        "[default: none]",
    ],
    "instance": ["[default: test if present, else the only split]"],
    "paired": ["[default: all]"],
}


def _help(run_cli: Runner, monkeypatch: pytest.MonkeyPatch, command: str, columns: int) -> str:
    monkeypatch.setenv("COLUMNS", str(columns))
    code, out, err = run_cli(["evaluate", command, "--help"])
    assert code == 0, err
    return out


def _option_lines(text: str) -> dict[str, str]:
    """Option name -> its row in the rich Options panel (one line per option at a wide console)."""
    rows = {}
    for line in text.splitlines():
        cells = line.strip("│ ").split()
        if cells and cells[0].startswith("--"):
            rows[cells[0]] = line
    return rows


@pytest.mark.parametrize("command", list(USAGE))
def test_every_option_shows_its_default_the_same_way(
    run_cli: Runner, monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    text = _help(run_cli, monkeypatch, command, 250)
    rows = _option_lines(text)
    assert "--out" in rows and "--json" in rows
    missing = [name for name, line in rows.items() if name != "--help" and "[default: " not in line]
    assert missing == [], f"options without a shown default: {missing}"
    for shown in SHOWN[command]:
        assert shown in text
    assert "[default: (" not in text and "(default" not in text  # one style only


@pytest.mark.parametrize("command", list(USAGE))
def test_usage_names_the_arguments_in_capitals_and_an_example_follows(
    run_cli: Runner, monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    text = _help(run_cli, monkeypatch, command, 80)
    assert USAGE[command] in text and "{" not in text
    example = next(line for line in text.splitlines() if "Example:" in line)
    assert f"histostain evaluate {command} " in example
    assert "…" not in text  # nothing cropped at 80 columns
    assert re.search(r" \.(\s|$)", text) is None  # the old "in parallel ." (markup ate a bracketed default)


def test_help_strings_hold_no_square_brackets() -> None:
    """Rich markup treats `[...]` in help text as a style tag and drops it: defaults go in show_default."""
    from histostain.cli.evaluate import evaluate_app

    group = typer.main.get_group(evaluate_app)
    for name, command in group.commands.items():
        for text in [command.help or "", command.epilog or "", *(getattr(p, "help", "") or "" for p in command.params)]:
            assert "[" not in text and "]" not in text, (name, text)
        metavars = [p.metavar for p in command.params if isinstance(p, typer.core.TyperArgument)]
        assert metavars and all(m and m.isupper() for m in metavars), (name, metavars)
