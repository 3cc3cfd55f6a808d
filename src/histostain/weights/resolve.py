"""What ``--weights`` means: a weights file, a training run folder, or a model name from the registry.

:func:`resolve_weights` turns what the user typed into the file to load and, when it is known, the model card
that says how to use it (geometry, scale, class names, licence):

1. an existing **file** is used as it is (no card: the loaders recognise its format);
2. an existing **folder** must be a ``histostain train`` run: its best checkpoint (else its last), with a card
   built from the run's record (:func:`histostain.weights.importer.read_run`);
3. anything else is a **registry name**: the cached file, after checking that it is complete (its size against
   its cache record). A model that is not cached yet is downloaded (checksummed) unless histostain is offline
   (``HISTOSTAIN_OFFLINE=1`` or ``offline = true`` in the settings), which is a one-line error giving the URL and
   the ``weights import`` command. A **packaged** model (a card with ``packaged``, such as the demo weights
   ``cyclegan-demo`` and ``hovernet-demo``) is the file shipped inside the package: never downloaded, never
   cached, available offline.

A model of another task (a CycleGAN name given to ``segment``) is a one-line error listing the right models.

The user registry (entries of your own, docs/weights.md) is ``$HISTOSTAIN_REGISTRY``, else the settings'
``registry``, else ``<home>/registry.toml``; the last is where ``weights import NAME RUN_DIR`` writes when
nothing is configured, and it is read only when it exists.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from histostain.errors import ConfigError, HistostainError, WeightsError
from histostain.weights.cache import cached_path, read_record
from histostain.weights.importer import DEFAULT_REGISTRY_NAME, read_run
from histostain.weights.registry import ModelCard, Registry, load_registry, user_registry_file

if TYPE_CHECKING:
    from histostain.settings import ResolvedSettings, Settings

log = logging.getLogger(__name__)
_WARNED: set[str] = set()  # demo models whose "not for real tissue" warning this process has shown

TASK_USERS = {"segmentation": "segment", "translation": "translate", "fid": "evaluate fid|kid"}
# suffixes of weights files: a missing path with one of them is a missing file, not an unknown model name
WEIGHT_SUFFIXES = frozenset({".pt", ".pth", ".tar", ".ckpt", ".pkl", ".bin", ".safetensors", ".zip"})


@dataclass(frozen=True)
class ResolvedWeights:
    """The file to load and, for a registry name or a run folder, its model card."""

    path: Path
    card: ModelCard | None = None
    kind: str = "file"  # file | run | registry

    def record(self) -> dict[str, Any]:
        """What a run record keeps about the model (nothing beyond the path for a plain file)."""
        data: dict[str, Any] = {"spec": self.kind, "path": str(self.path)}
        if self.card is not None:
            card = self.card
            data.update(name=card.name, licence=card.licence, source=card.source, run_dir=card.run_dir)
        return data


def _plain(settings: Settings | ResolvedSettings | None) -> Settings:
    if settings is None:
        from histostain.settings import load_settings

        return load_settings().settings
    inner = getattr(settings, "settings", None)
    return inner if inner is not None else settings  # type: ignore[return-value]


def user_registry_path(settings: Settings | ResolvedSettings | None = None) -> Path:
    """The user registry file: ``$HISTOSTAIN_REGISTRY``, else the settings' ``registry``, else
    ``<home>/registry.toml`` (whether or not it exists yet)."""
    plain = _plain(settings)
    return user_registry_file(plain.registry) or plain.home / DEFAULT_REGISTRY_NAME


def open_registry(settings: Settings | ResolvedSettings | None = None, *, missing_ok: bool = False) -> Registry:
    """The packaged cards plus the user's. A configured registry file that does not exist is an error (a typo
    must not silently hide your models) unless ``missing_ok`` (``weights import`` is about to create it); the
    default ``<home>/registry.toml`` is read only when it exists."""
    plain = _plain(settings)
    configured = user_registry_file(plain.registry)
    path = configured or plain.home / DEFAULT_REGISTRY_NAME
    if path.is_file() or (configured is not None and not missing_ok):
        return load_registry(path)
    return Registry(load_registry().cards, path)


def packaged_weights(card: ModelCard) -> Path:
    """The file shipped with histostain for a ``packaged`` card; a missing file (a broken install) is an error."""
    path = card.packaged_path()
    if path is None:
        raise WeightsError(f"{card.name} is not a packaged model")
    if not path.is_file():
        raise WeightsError(
            f"{card.name} is packaged with histostain but its file is missing: {path}",
            hint="reinstall histostain (the package data was not installed)",
        )
    return path


def cached_weights(card: ModelCard, home: Path) -> Path | None:
    """The cached file of ``card`` when it is complete (file present, size as recorded), else None; for a
    packaged card, the shipped file (:func:`packaged_weights`).

    A damaged cache entry (size differs from its record, unreadable record) is a one-line error: `weights
    verify` re-hashes, this check only costs a stat.
    """
    if card.packaged is not None:
        return packaged_weights(card)
    path = cached_path(card, home)
    record = read_record(card, home)
    if record is None or not path.is_file():
        return None
    size = path.stat().st_size
    if size != record.size_bytes:
        raise WeightsError(
            f"the cached {card.name} is damaged: {path} has {size} bytes, its record says {record.size_bytes}",
            hint=f"run `histostain weights download {card.name} --force`, or import the file again",
        )
    return path


def _looks_like_path(spec: str) -> bool:
    return "/" in spec or "\\" in spec or spec.startswith(("~", ".")) or Path(spec).suffix.lower() in WEIGHT_SUFFIXES


def _check_task(card: ModelCard, task: str, registry: Registry | None, what: str) -> None:
    if card.task == task:
        return
    user = TASK_USERS.get(task, task)
    names = sorted(c.name for c in registry.cards.values() if c.task == task) if registry is not None else []
    raise ConfigError(
        f"{what} is a {card.task} model ({card.arch}); {user} needs a {task} model",
        hint=f"{task} models: {', '.join(names)}" if names else "see `histostain weights list`",
    )


def resolve_weights(
    spec: str | Path,
    *,
    task: str,
    settings: Settings | ResolvedSettings | None = None,
    registry: Registry | None = None,
) -> ResolvedWeights:
    """The weights ``spec`` names for a command of ``task`` (segmentation | translation | fid); see the module
    docstring. ``settings`` (home, offline, registry) is read only for run folders and registry names."""
    text = str(spec).strip()
    path = Path(text).expanduser()
    if path.is_file():
        return ResolvedWeights(path, None, "file")
    if path.is_dir():
        run = read_run(path)
        card = run.card()
        _check_task(card, task, None, f"{path} (a `histostain train {run.arch}` run)")
        log.info("using %s of the run %s", run.checkpoint.name, run.root)
        return ResolvedWeights(run.checkpoint, card, "run")
    plain = _plain(settings)
    registry = registry if registry is not None else open_registry(plain)
    if text not in registry:
        if _looks_like_path(text) or not text:
            raise WeightsError(
                f"weights file not found: {path}",
                hint="check the path, or give a training run folder or a model name (`histostain weights list`)",
            )
        try:
            registry.get(text)
        except HistostainError as exc:
            raise ConfigError(
                f"{text!r} is neither a weights file, a training run folder nor a model in the registry",
                hint=exc.hint,
            ) from None
    card = registry.get(text)
    _check_task(card, task, registry, card.name)
    if card.packaged is not None:
        path = packaged_weights(card)
        log.info("model %s: %s (packaged with histostain; licence: %s)", card.name, path, card.licence)
        if card.intended_use.startswith("DEMO") and card.name not in _WARNED:
            _WARNED.add(card.name)  # once per process: `histostain demo` uses the same model in several runs
            log.warning("%s: %s", card.name, card.intended_use)
        return ResolvedWeights(path, card, "registry")
    cached = cached_weights(card, plain.home)
    if cached is None:
        from histostain.weights.download import download

        log.info("%s is not in the cache yet: downloading it", card.name)
        download(card, plain.home, offline=plain.offline)
        cached = cached_path(card, plain.home)
    log.info("model %s: %s (licence: %s)", card.name, cached, card.licence)
    return ResolvedWeights(cached, card, "registry")


__all__ = [
    "TASK_USERS",
    "ResolvedWeights",
    "cached_weights",
    "open_registry",
    "packaged_weights",
    "resolve_weights",
    "user_registry_path",
]
