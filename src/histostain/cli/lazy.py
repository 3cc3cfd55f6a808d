"""Commands loaded when they run: the root group lists every command without importing its module.

``histostain --help`` should answer at once. Building a command means importing its module, and commands whose
defaults come from the services' configuration models (``train``: pydantic) cost a visible fraction of a second
to import. So the root group knows each command's name, module and one-line help; listing them shows that
line, and only the command being run (or asked for ``--help``) is imported and built.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

import typer
from typer.core import TyperCommand, TyperGroup


@dataclass(frozen=True)
class LazyCommand:
    """Where a command lives: ``module:attribute`` is a Typer sub-app or a command function (whose module may
    hold an ``EXAMPLE`` line for the end of its help)."""

    name: str
    target: str
    short_help: str

    def build(self) -> Any:
        module_name, _, attribute = self.target.partition(":")
        module = importlib.import_module(module_name)
        obj = getattr(module, attribute)
        if isinstance(obj, typer.Typer):
            command = typer.main.get_group(obj)
        else:
            single = typer.Typer(add_completion=False)
            single.command(self.name, epilog=getattr(module, "EXAMPLE", None))(obj)
            command = typer.main.get_command(single)
        command.name = self.name
        return command


class LazyGroup(TyperGroup):
    """A Typer group whose ``lazy_commands`` are imported only when resolved (help lists their short help)."""

    lazy_commands: tuple[LazyCommand, ...] = ()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._lazy = {command.name: command for command in self.lazy_commands}

    def list_commands(self, ctx: typer.Context) -> list[str]:
        return [*super().list_commands(ctx), *(name for name in self._lazy if name not in self.commands)]

    def load(self, name: str) -> Any:
        """The real command (imported and built on first use)."""
        if name not in self.commands and name in self._lazy:
            self.commands[name] = self._lazy[name].build()
        return self.commands.get(name)

    def get_command(self, ctx: typer.Context, cmd_name: str) -> Any:
        """Loaded commands as they are; the others as a stand-in that only carries the help line."""
        if cmd_name in self.commands or cmd_name not in self._lazy:
            return super().get_command(ctx, cmd_name)
        entry = self._lazy[cmd_name]
        return TyperCommand(cmd_name, help=entry.short_help, short_help=entry.short_help)

    def resolve_command(self, ctx: typer.Context, args: list[str]) -> tuple[str | None, Any, list[str]]:
        if args:
            self.load(args[0])
        return super().resolve_command(ctx, args)


__all__ = ["LazyCommand", "LazyGroup"]
