"""Helpers every command shares: the global options object, settings/device resolution, output."""

from __future__ import annotations

import json
import logging
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

    from histostain.provenance import Provenance
    from histostain.runtime.device import DeviceManager
    from histostain.settings import ResolvedSettings


@dataclass
class AppState:
    """Global options as given on the command line (None = not given, so lower sources decide)."""

    device: str | None = None
    precision: str | None = None
    quiet: bool = False
    debug: bool = False
    settings_file: Path | None = None
    _resolved: ResolvedSettings | None = field(default=None, repr=False)

    def flags(self) -> dict[str, Any]:
        flags: dict[str, Any] = {"device": self.device, "precision": self.precision}
        if self.quiet:
            flags["quiet"] = True
        return flags

    def settings(self) -> ResolvedSettings:
        """Resolve settings once per invocation (flag > env > file > default)."""
        if self._resolved is None:
            from histostain.settings import load_settings

            self._resolved = load_settings(self.flags(), self.settings_file)
            configure_output(quiet=self._resolved.settings.quiet, debug=self.debug)
        return self._resolved

    def device_manager(self, *, exact_cpu: bool = False) -> DeviceManager:
        """The device of this invocation; ``exact_cpu``: ``auto`` precision stays fp32 on a CPU (commands whose
        answers bf16 could change, see runtime.device.plan_device)."""
        from histostain.runtime.device import DeviceManager

        settings = self.settings().settings
        manager = DeviceManager.create(settings.device, settings.precision, settings.num_threads, exact_cpu=exact_cpu)
        logging.getLogger("histostain").info("device: %s", manager.describe())
        return manager


# The state of the current invocation; set by the root callback.
STATE = AppState()


def state(ctx: typer.Context | None = None) -> AppState:
    if ctx is not None and isinstance(ctx.obj, AppState):
        return ctx.obj
    return STATE


# Parameters that only change how a result is shown, never what is made: not part of the provenance options.
_PRESENTATION_PARAMS = frozenset({"as_json"})


def provenance(ctx: typer.Context, **extra: Any) -> Provenance:
    """The run record of this invocation: the command as typed, version, UTC time and the resolved options
    (every parameter of the command, defaults included, plus the global settings in force)."""
    from histostain.provenance import Provenance

    settings = state(ctx).settings().settings
    options: dict[str, Any] = {k: v for k, v in ctx.params.items() if k not in _PRESENTATION_PARAMS}
    options["settings"] = {
        "device": settings.device,
        "precision": settings.precision,
        "num_threads": settings.num_threads,
        "home": settings.home,
    }
    options.update(extra)
    return Provenance.capture(options)


def stderr_console() -> Console:
    from rich.console import Console

    return Console(stderr=True, soft_wrap=True)


def stdout_console() -> Console:
    from rich.console import Console

    return Console(soft_wrap=True)


def configure_output(quiet: bool, debug: bool) -> None:
    """Install the one log handler (rich, on stderr) and set progress mode; library code never prints."""
    from histostain.runtime import progress

    level = logging.DEBUG if debug else logging.WARNING if quiet else logging.INFO
    logger = logging.getLogger("histostain")
    logger.setLevel(level)
    if not any(getattr(h, "_histostain", False) for h in logger.handlers):
        from rich.logging import RichHandler

        handler = RichHandler(console=stderr_console(), show_path=False, show_time=False, markup=False)
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler._histostain = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
        logger.propagate = False
    for handler in logger.handlers:
        handler.setLevel(level)
    progress.configure(enabled=False if quiet else None)


def strict_json(value: Any) -> Any:
    """``value`` with every NaN or infinity as null: they are not JSON, and strict parsers (jq, JavaScript,
    Go) reject a document holding them (a metric with nothing to count, such as the precision of no detection,
    is NaN inside histostain)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: strict_json(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [strict_json(item) for item in value]
    return value


def print_json(payload: Any) -> None:
    """Machine-readable output on stdout, nothing else on it; strict JSON (NaN and infinity become null)."""
    sys.stdout.write(json.dumps(strict_json(payload), indent=2, default=str, allow_nan=False) + "\n")
    sys.stdout.flush()


def print_table(table: Table) -> None:
    stdout_console().print(table)


def print_summary(title: str, rows: list[tuple[str, str]], header: bool = True) -> None:
    """The closing two-column summary table every command prints (item, value)."""
    from rich.table import Table

    table = Table(title=title, title_justify="left", show_header=header)
    table.add_column("item", style="bold")
    table.add_column("value", justify="right" if header else "left", overflow="fold")
    for name, value in rows:
        table.add_row(name, value)
    print_table(table)


def slide_line(slide: dict[str, Any]) -> str:
    """One whole slide's line of a summary table (``SlideSegmentReport.to_dict()``)."""
    if slide["skipped"]:
        return "already done (skipped)"
    width, height = slide["size"]
    parts = [f"{width} x {height} px", f"{slide['nuclei']} nuclei", f"{slide['chunks']} chunks"]
    if slide["glass"]:
        parts.append(f"{slide['glass']} glass")
    if slide["resumed"]:
        parts.append(f"{slide['resumed']} resumed")
    parts.append(f"{slide['seconds']:.1f} s")
    return ", ".join(parts)
