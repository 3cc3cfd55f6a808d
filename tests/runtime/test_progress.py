"""The progress helper: bars on a terminal, periodic log lines otherwise, nothing lost from the loop."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from histostain.runtime import progress


@pytest.fixture(autouse=True)
def _restore_progress_mode() -> Iterator[None]:
    yield
    progress.configure(enabled=None)


def test_track_yields_every_item_in_order_without_a_terminal(caplog: pytest.LogCaptureFixture) -> None:
    progress.configure(enabled=False, log_interval=0.0)
    with caplog.at_level(logging.INFO, logger="histostain.runtime.progress"):
        items = list(progress.track(range(5), "Counting", unit="tile"))
    assert items == [0, 1, 2, 3, 4]
    lines = [r.getMessage() for r in caplog.records]
    # with a zero interval every step logs, and the final line says done 5/5
    assert any("Counting at 3/5 (60%)" in line for line in lines)
    assert lines[-1].startswith("Counting done 5/5 (100%)")
    assert "tile/s" in lines[-1]


def test_log_lines_are_rate_limited(caplog: pytest.LogCaptureFixture) -> None:
    progress.configure(enabled=False, log_interval=3600.0)
    with caplog.at_level(logging.INFO, logger="histostain.runtime.progress"):
        list(progress.track(iter(range(100)), "Quiet loop"))
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and lines[0].startswith("Quiet loop done 100")  # total unknown for an iterator


def test_task_status_and_manual_advance(caplog: pytest.LogCaptureFixture) -> None:
    progress.configure(enabled=False, log_interval=3600.0)
    with caplog.at_level(logging.INFO, logger="histostain.runtime.progress"):
        with progress.progress_task("Epoch 1", total=4, unit="batch") as task:
            for _ in range(4):
                task.advance(status="loss 0.25")
        assert task.completed == 4
    assert caplog.records[-1].getMessage().endswith("loss 0.25")


def test_rich_bar_mode_runs_and_draws_on_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    progress.configure(enabled=True)
    assert list(progress.track([1, 2, 3], "Drawing")) == [1, 2, 3]
    captured = capsys.readouterr()
    assert "Drawing" in captured.err
    assert captured.out == ""


def test_auto_mode_follows_the_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    progress.configure(enabled=None)
    monkeypatch.setattr("sys.stderr.isatty", lambda: False, raising=False)
    assert not progress.bars_enabled()
