"""The model registry: every model histostain can use by name, with its model card.

A card says what a weights file is (task, architecture and its arguments), how to feed it (patch in/out,
margin, input scale in um/px), what it answers (class names; colours come from the shared palette), where it
comes from (direct URLs, sha256 or its published prefix, or a manual-download note where the publisher gives
no direct URL; or ``packaged``: a file shipped inside this package, such as the demo weights, used in place and
never downloaded), and under which terms (licence, citation, intended use). The packaged entries live in
``models.toml`` beside this module; a lab adds its own in a TOML file of the same shape, named by
``HISTOSTAIN_REGISTRY`` or by ``registry = "FILE"`` in the settings file. A user entry may not reuse a packaged
name (so ``hovernet_fast-pannuke`` always means the published model).
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from histostain.errors import ConfigError
from histostain.vocabulary import PANNUKE_TYPE_NAMES, type_colour

REGISTRY_ENV = "HISTOSTAIN_REGISTRY"
NAME_PATTERN = re.compile(r"^[a-z0-9_]+-[a-z0-9_]+(\.[a-z0-9_]+)?$")  # <arch>-<dataset>[.<tag>]
URL_SCHEMES = ("https://", "http://", "file://")
TASKS = ("segmentation", "translation", "fid")
ARCHES = ("hovernet", "cyclegan", "inception", "detector")
VOCABULARIES: dict[str, list[str]] = {"pannuke": ["Background", *PANNUKE_TYPE_NAMES.values()]}
PATCH_DEFAULTS = {"fast": (256, 164), "original": (270, 80)}


class ModelCard(BaseModel):
    """One registry entry (fields as in ``models.toml``; docs/weights.md explains each)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    task: Literal["segmentation", "translation", "fid"]
    arch: Literal["hovernet", "cyclegan", "inception", "detector"]
    arch_args: dict[str, Any] = Field(default_factory=dict)
    patch_in: int | None = Field(None, ge=1)
    patch_out: int | None = Field(None, ge=1)
    mpp: float | None = Field(None, gt=0)
    class_names: list[str] = Field(default_factory=list)
    vocabulary: str | None = None
    filename: str
    urls: list[str] = Field(default_factory=list)
    sha256: str | None = None
    sha256_prefix: str | None = None
    size_bytes: int | None = Field(None, ge=0)
    licence: str = "unknown"
    citation: str = ""
    intended_use: str = ""
    manual_download: str | None = None
    packaged: str | None = None  # a file shipped in the histostain.weights package (e.g. "demo/hovernet-demo.pt")
    source: str = "histostain"  # "histostain" (packaged) or the user registry file it came from
    run_dir: str | None = None  # a training run registered with `weights import NAME RUN_DIR`

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if not NAME_PATTERN.match(value):
            raise ValueError(
                "must be <arch>-<dataset>[.<tag>] in lower case letters, digits and _ (e.g. hovernet_fast-pannuke)"
            )
        return value

    @field_validator("filename")
    @classmethod
    def _check_filename(cls, value: str) -> str:
        if not value or Path(value).name != value or value in (".", ".."):
            raise ValueError("must be a plain file name (no folders)")
        return value

    @field_validator("packaged")
    @classmethod
    def _check_packaged(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = value.split("/")
        if not value or value.startswith("/") or "\\" in value or any(part in ("", ".", "..") for part in parts):
            raise ValueError("must be a relative path inside the histostain.weights package (e.g. demo/x.pt)")
        return value

    @field_validator("urls")
    @classmethod
    def _check_urls(cls, value: list[str]) -> list[str]:
        for url in value:
            if not url.startswith(URL_SCHEMES):
                raise ValueError(f"{url!r}: only {', '.join(URL_SCHEMES)} URLs")
        return value

    @field_validator("sha256", "sha256_prefix")
    @classmethod
    def _check_digest(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[0-9a-f]{8,64}", value.lower()):
            raise ValueError("must be hexadecimal (sha256: 64 digits; sha256_prefix: at least 8)")
        return None if value is None else value.lower()

    @model_validator(mode="after")
    def _check_consistency(self) -> ModelCard:
        if self.sha256 is not None and len(self.sha256) != 64:
            raise ValueError("sha256 must have 64 hexadecimal digits (use sha256_prefix for a published prefix)")
        if self.vocabulary is not None and self.vocabulary not in VOCABULARIES:
            raise ValueError(f"vocabulary {self.vocabulary!r}: unknown (known: {', '.join(VOCABULARIES)})")
        if self.vocabulary is not None and self.class_names:
            raise ValueError("give class_names or vocabulary, not both")
        if self.packaged is not None:
            if self.urls:
                raise ValueError("a packaged model has no download URLs")
            if Path(self.packaged).name != self.filename:
                raise ValueError(f"filename must be the packaged file's name ({Path(self.packaged).name})")
        return self

    # ------------------------------------------------------------------------------------------ derived facts

    @property
    def classes(self) -> list[str]:
        """Class names by type id (0 = background), from the shared vocabulary when the card names one."""
        return list(VOCABULARIES[self.vocabulary]) if self.vocabulary else list(self.class_names)

    @property
    def type_names(self) -> dict[int, str]:
        """``{type id: name}`` of the nucleus types (background left out), as outputs name them."""
        return {index: name for index, name in enumerate(self.classes) if index > 0}

    @property
    def colours(self) -> dict[int, tuple[int, int, int]]:
        """The shared palette's colour of every type id."""
        return {index: type_colour(index) for index in self.type_names}

    @property
    def geometry(self) -> dict[str, Any]:
        """Patch in/out, margin and um/px (HoVer-Net: the mode's reference geometry unless the card says more)."""
        patch_in, patch_out = self.patch_in, self.patch_out
        mode = self.arch_args.get("mode")
        if self.arch == "hovernet" and mode in PATCH_DEFAULTS:
            patch_in = patch_in or PATCH_DEFAULTS[mode][0]
            patch_out = patch_out or PATCH_DEFAULTS[mode][1]
        margin = (patch_in - patch_out) // 2 if patch_in and patch_out else None
        return {"patch_in": patch_in, "patch_out": patch_out, "margin": margin, "mpp": self.mpp}

    @property
    def stated_licence(self) -> str | None:
        """The licence when the card states one (None for "unknown"): what segment shows with every run."""
        return None if self.licence == "unknown" else self.licence

    @property
    def downloadable(self) -> bool:
        return bool(self.urls)

    def packaged_path(self) -> Path | None:
        """The shipped file of a ``packaged`` card (inside the installed ``histostain.weights`` package), else
        None. The path is returned whether or not the file exists (a broken install is the caller's error)."""
        if self.packaged is None:
            return None
        return Path(str(resources.files("histostain.weights").joinpath(*self.packaged.split("/"))))

    def matches_digest(self, digest: str) -> bool | None:
        """Whether a file's sha256 is this card's (None when the card knows neither the digest nor a prefix)."""
        if self.sha256:
            return digest.lower() == self.sha256
        if self.sha256_prefix:
            return digest.lower().startswith(self.sha256_prefix)
        return None

    def card(self) -> dict[str, Any]:
        """Everything a user should know, for `weights info` and run records."""
        data = self.model_dump(exclude={"class_names", "vocabulary"})
        data.update(classes=self.classes, geometry=self.geometry)
        return data


@dataclass(frozen=True)
class Registry:
    """The packaged cards plus the user's, by name."""

    cards: dict[str, ModelCard]
    user_file: Path | None = None
    problems: list[str] = field(default_factory=list)

    def names(self) -> list[str]:
        return sorted(self.cards)

    def get(self, name: str) -> ModelCard:
        """The card of ``name``; an unknown name is a one-line error listing close names."""
        card = self.cards.get(name)
        if card is None:
            import difflib

            close = difflib.get_close_matches(name, self.cards, n=3, cutoff=0.5)
            hint = f"did you mean {', '.join(close)}?" if close else "see `histostain weights list`"
            raise ConfigError(f"no model named {name!r} in the registry", hint=hint)
        return card

    def __contains__(self, name: object) -> bool:
        return name in self.cards


def _parse(data: Mapping[str, Any], origin: str) -> dict[str, ModelCard]:
    """The cards of one registry document (``[models."NAME"]`` tables); errors name the file and the entry."""
    unknown = set(data) - {"models"}
    if unknown:
        raise ConfigError(f"{origin}: unknown top-level key(s) {sorted(unknown)}", hint='entries go in [models."NAME"]')
    models = data.get("models", {})
    if not isinstance(models, Mapping):
        raise ConfigError(f"{origin}: [models] must be a table of entries")
    cards: dict[str, ModelCard] = {}
    for name, entry in models.items():
        if not isinstance(entry, Mapping):
            raise ConfigError(f"{origin}: models.{name} must be a table")
        if origin != "histostain" and "packaged" in entry:
            raise ConfigError(
                f"{origin}: models.{name}: packaged is only for models shipped with histostain",
                hint="give urls, or register the file with `histostain weights import`",
            )
        try:
            cards[name] = ModelCard(name=name, source=origin, **entry)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"]) or "entry"
            raise ConfigError(f"{origin}: models.{name}: {where}: {first['msg']}", hint="see docs/weights.md") from None
        except TypeError as exc:
            raise ConfigError(f"{origin}: models.{name}: {exc}") from None
    return cards


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(
            f"registry file not found: {path}", hint=f"check {REGISTRY_ENV} or the settings' registry"
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None


@cache
def packaged_cards() -> dict[str, ModelCard]:
    """The entries shipped with histostain (``models.toml``)."""
    text = resources.files("histostain.weights").joinpath("models.toml").read_text(encoding="utf-8")
    return _parse(tomllib.loads(text), "histostain")


def user_registry_file(settings_file_value: str | os.PathLike[str] | None = None) -> Path | None:
    """The user's registry: ``$HISTOSTAIN_REGISTRY``, else the settings file's ``registry``, else none."""
    value = os.environ.get(REGISTRY_ENV) or settings_file_value
    return Path(os.path.expandvars(str(value))).expanduser() if value else None


def load_registry(user_file: str | os.PathLike[str] | None = None) -> Registry:
    """The packaged cards plus those of ``user_file`` (a user entry cannot replace a packaged one)."""
    cards = dict(packaged_cards())
    path = Path(user_file) if user_file is not None else None
    if path is not None:
        extra = _parse(_read_toml(path), str(path))
        clash = sorted(set(extra) & set(cards))
        if clash:
            raise ConfigError(
                f"{path}: {', '.join(clash)} is a histostain model name",
                hint="give your model another name, e.g. with a .tag (hovernet_fast-pannuke.mylab)",
            )
        cards.update(extra)
    return Registry(cards, path)


def add_user_entry(path: Path, card: ModelCard) -> None:
    """Append (or replace) ``card`` in the user registry file ``path``, atomically, keeping other entries."""
    from histostain.io.atomic import atomic_write_text

    existing = _read_toml(path) if path.is_file() else {"models": {}}
    models = dict(existing.get("models", {}))
    models[card.name] = card.model_dump(exclude={"name", "source"}, exclude_none=True, exclude_defaults=True) | {
        "task": card.task,
        "arch": card.arch,
        "filename": card.filename,
    }
    atomic_write_text(path, dump_toml({"models": models}))


def dump_toml(data: Mapping[str, Any]) -> str:
    """A small TOML writer for registry documents (tables of scalars, lists and inline tables)."""
    lines = ["# histostain user model registry (docs/weights.md)", ""]
    for name, entry in data.get("models", {}).items():
        lines.append(f'[models."{name}"]')
        for key, value in entry.items():
            lines.append(f"{key} = {_toml_value(value)}")
        lines.append("")
    return "\n".join(lines)


def _toml_value(value: Any) -> str:
    import json

    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{key} = {_toml_value(item)}" for key, item in value.items()) + " }"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


__all__ = [
    "ARCHES",
    "REGISTRY_ENV",
    "TASKS",
    "ModelCard",
    "Registry",
    "add_user_entry",
    "dump_toml",
    "load_registry",
    "packaged_cards",
    "user_registry_file",
]
