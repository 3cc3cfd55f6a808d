"""Settings shared by every command, with one precedence order.

CLI flag > environment (``HISTOSTAIN_*``) > settings file (``histostain.toml``) > built-in default.
The settings file is the one given with ``--settings``, else ``$HISTOSTAIN_SETTINGS``, else ``./histostain.toml``
when it exists. :func:`load_settings` also records where each value came from, which ``doctor`` shows.

A settings file is not a training configuration (``train ... --config``, a run's ``config.toml``): each is
recognised when given to the other option, and the error says where it belongs.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, EnvSettingsSource, PydanticBaseSettingsSource, SettingsConfigDict

from histostain.errors import ConfigError

ENV_PREFIX = "HISTOSTAIN_"
SETTINGS_ENV = "HISTOSTAIN_SETTINGS"
DEFAULT_SETTINGS_NAME = "histostain.toml"
# Keys that only a training configuration has (a run's config.toml has a [run] table): a file with any of them
# and no known setting is a training config given to --settings.
_TRAINING_KEYS = frozenset({"run", "epochs", "lr", "batch_size", "seed", "log_every", "save_every", "max_steps"})
DEVICE_PATTERN = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")

Precision = Literal["auto", "fp32", "bf16", "fp16"]


def default_home() -> Path:
    """Cache root for weights and samples: ``$XDG_CACHE_HOME/histostain`` or ``~/.cache/histostain``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "histostain"


class Settings(BaseSettings):
    """Global settings; every field can come from a flag, the environment, the config file or the default."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", validate_default=True)

    device: str = Field("auto", description="auto | cpu | cuda | cuda:N | mps")
    precision: Precision = Field("auto", description="auto | fp32 | bf16 | fp16")
    home: Path = Field(default_factory=default_home, description="cache root for weights and samples")
    num_threads: int | None = Field(None, ge=1, description="CPU threads for torch (default: torch's choice)")
    quiet: bool = Field(False, description="no progress bars and no info messages")
    registry: Path | None = Field(None, description="TOML file of your own model entries (docs/weights.md)")
    offline: bool = Field(False, description="never use the network; named models must be in the cache")

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        value = value.strip().lower()
        if not DEVICE_PATTERN.match(value):
            raise ValueError("must be auto, cpu, cuda, cuda:N or mps")
        return value

    @field_validator("home")
    @classmethod
    def _expand_home(cls, value: Path) -> Path:
        return Path(os.path.expandvars(str(value))).expanduser()

    @property
    def weights_dir(self) -> Path:
        return self.home / "weights"


class _MappingSource(PydanticBaseSettingsSource):
    """A settings source over an already-parsed mapping (the config file)."""

    def __init__(self, settings_cls: type[BaseSettings], values: Mapping[str, Any]) -> None:
        super().__init__(settings_cls)
        self._values = dict(values)

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return self._values.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self._values)


@dataclass(frozen=True)
class ResolvedSettings:
    """The settings plus, per field, where its value came from."""

    settings: Settings
    sources: dict[str, str] = field(default_factory=dict)
    settings_file: Path | None = None


def find_settings_file(explicit: Path | None, environ: Mapping[str, str] | None = None) -> Path | None:
    """The settings file to read: the flag, else ``$HISTOSTAIN_SETTINGS``, else ``./histostain.toml`` if present."""
    environ = os.environ if environ is None else environ
    if explicit is not None:
        if not explicit.is_file():
            raise ConfigError(f"settings file not found: {explicit}", hint="check the --settings path")
        return explicit
    from_env = environ.get(SETTINGS_ENV)
    if from_env:
        path = Path(from_env).expanduser()
        if not path.is_file():
            raise ConfigError(f"settings file not found: {path} (from {SETTINGS_ENV})", hint=f"unset {SETTINGS_ENV}")
        return path
    local = Path.cwd() / DEFAULT_SETTINGS_NAME
    return local if local.is_file() else None


def read_settings_file(path: Path) -> dict[str, Any]:
    """Parse a TOML settings file; syntax errors, and a training configuration given here, are ConfigErrors."""
    try:
        with path.open("rb") as handle:
            values = tomllib.load(handle)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}", hint="fix the file or pass another --settings") from exc
    except OSError as exc:
        raise ConfigError(f"cannot read settings file {path}: {exc.strerror}") from exc
    unknown = sorted(set(values) - set(Settings.model_fields))
    if unknown and set(unknown) & _TRAINING_KEYS and not set(values) & set(Settings.model_fields):
        raise ConfigError(
            f"{path} is a training configuration ({', '.join(unknown[:3])}), not a histostain settings file",
            hint=f"pass it to the training command: `histostain train cyclegan|hovernet ... --config {path}`",
        )
    return values


def load_settings(
    flags: Mapping[str, Any] | None = None,
    settings_file: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> ResolvedSettings:
    """Resolve the settings from flags (only those the user set), environment, settings file and defaults."""
    flags = {key: value for key, value in (flags or {}).items() if value is not None}
    path = find_settings_file(settings_file, environ)
    file_values = read_settings_file(path) if path is not None else {}

    class _Bound(Settings):
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            env = env_settings if environ is None else _environment_source(settings_cls, environ)
            return (init_settings, env, _MappingSource(settings_cls, file_values))

    env_values = EnvSettingsSource(Settings)() if environ is None else _environment_source(Settings, environ)()
    sources: dict[str, str] = {}
    for name in Settings.model_fields:
        if name in flags:
            sources[name] = "flag"
        elif name in env_values:
            sources[name] = f"environment ({ENV_PREFIX}{name.upper()})"
        elif name in file_values:
            sources[name] = f"file ({path})"
        else:
            sources[name] = "default"

    try:
        bound = _Bound(**flags)
    except ValidationError as exc:
        first = exc.errors()[0]
        name = str(first["loc"][0]) if first["loc"] else "?"
        origin = sources.get(name, f"file ({path})")
        raise ConfigError(
            f"invalid setting {name}={first.get('input')!r} from {origin}: {first['msg']}",
            hint="see `histostain doctor` for the settings in force",
        ) from exc
    return ResolvedSettings(settings=bound, sources=sources, settings_file=path)


def _environment_source(settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> PydanticBaseSettingsSource:
    """An environment source over an explicit mapping (tests pass one instead of mutating os.environ)."""
    source = EnvSettingsSource(settings_cls)
    source.env_vars = {key.lower(): value for key, value in environ.items()}
    return source
