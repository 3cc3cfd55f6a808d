"""Training options from their layers: defaults < a resumed run's config < a TOML file < command-line flags.

The one resolver both trainers use, so precedence, the ``[run]`` table being ignored and the wording of an
invalid value (which option, from which layer, which help page) are the same everywhere.

``train --config`` takes training options; the global settings (device, precision, home, ...) have their own
file, given before the command (``histostain --settings FILE train ...``). Both are TOML and both used to be
called ``--config``, so a settings file given to ``train --config`` is named for what it is, with the fix, instead
of a list of "unknown option" errors.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from histostain.errors import ConfigError
from histostain.runtime.training.rundir import RUN_TABLE, read_toml

ConfigT = TypeVar("ConfigT", bound=BaseModel)


def resolve_training_config(
    model: type[ConfigT],
    command: str,
    *,
    config_file: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    base: Mapping[str, Any] | None = None,
) -> ConfigT:
    """defaults < ``base`` (a resumed run's config) < ``config_file`` < ``overrides`` (flags; None = not given).

    A run's own ``config.toml`` works as ``config_file`` too (its ``[run]`` table is ignored). An invalid value
    is a ConfigError naming the option and the layer it came from; ``command`` (e.g. ``"train cyclegan"``)
    picks the help page in the hint.
    """
    data: dict[str, Any] = {}
    sources: dict[str, str] = {}
    layers: list[tuple[str, Mapping[str, Any]]] = [("the run's config.toml", base or {})]
    if config_file is not None:
        file_data = read_toml(config_file)
        file_data.pop(RUN_TABLE, None)
        _refuse_settings_file(model, command, config_file, file_data)
        layers.append((str(config_file), file_data))
    layers.append(("the command line", {k: v for k, v in (overrides or {}).items() if v is not None}))
    for source, values in layers:
        for key, value in values.items():
            data[key] = value
            sources[key] = source
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        key = str(first["loc"][0]) if first["loc"] else ""
        where = f" (from {sources[key]})" if key in sources else ""
        message = first["msg"].removeprefix("Value error, ")
        label = f"{key}: " if key else ""
        page = command.replace(" ", "-")
        hint = f"see `histostain {command} --help` and docs/commands/{page}.md"
        if first["type"] == "extra_forbidden":
            message = "unknown option"
            if key in _settings_keys():
                message = "a histostain setting, not a training option"
                hint = (
                    f"settings come from a settings file given before the command (`histostain --settings FILE "
                    f"{command} ...`) or from HISTOSTAIN_{key.upper()}"
                )
        raise ConfigError(f"invalid training option {label}{message}{where}", hint=hint) from exc


def _settings_keys() -> frozenset[str]:
    from histostain.settings import Settings

    return frozenset(Settings.model_fields)


def _refuse_settings_file(model: type[BaseModel], command: str, file: str | Path, data: Mapping[str, Any]) -> None:
    """A file whose every key is a global setting and none a training option is a settings file: say so."""
    keys = list(data)
    if not keys or any(key in model.model_fields or key not in _settings_keys() for key in keys):
        return
    raise ConfigError(
        f"{file} is a histostain settings file ({', '.join(keys)}), not training options",
        hint=f"pass it as `histostain --settings {file} {command} ...`, before the command",
    )


def check_resume_fixed(stored: Any, resolved: Any, keys: Sequence[str]) -> None:
    """Refuse options that cannot change when resuming (they define the networks, optimiser or data order)."""
    for key in keys:
        old, new = getattr(stored, key), getattr(resolved, key)
        if old != new:
            raise ConfigError(
                f"cannot change {key} when resuming (the run was started with {old!r}, got {new!r})",
                hint="drop the option, or start a new run with another --name",
            )


__all__ = ["check_resume_fixed", "resolve_training_config"]
