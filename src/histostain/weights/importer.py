"""``weights import``: put weights you obtained yourself into the cache, checked before anything is copied.

Two sources:

* a **file** for a registry entry (``weights import hovernet_fast-pannuke hovernet_fast_pannuke_type_tf2pytorch.tar``):
  the file is loaded into the card's architecture with the card's arguments and classes first (HoVer-Net mode and
  number of types, CycleGAN direction, the FID-Inception layout), so a CycleGAN generator offered as HoVer-Net is
  refused with what it is; then it is copied into the cache under the card's file name (whatever it was called)
  and checked against the card's digest (:func:`histostain.weights.cache.install_file`);
* a **training run folder** (``weights import hovernet_fast-mylab.v1 runs/mylab``) under a new name: a model card is
  built from the run's record (architecture and its arguments from the checkpoint, class names, input scale and
  patch geometry for HoVer-Net, the directions a CycleGAN run can translate, licence from the training data),
  written to the user registry file and the run's best checkpoint (else its last) is installed in the cache.

A run folder is also usable without registering it: :func:`read_run` and :meth:`TrainingRun.card` are what
``--weights runs/NAME`` resolves through (:mod:`histostain.weights.resolve`).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from histostain.errors import ConfigError, HistostainError, InputError, WeightsError
from histostain.weights.cache import CacheRecord, install_file
from histostain.weights.registry import ModelCard, Registry, add_user_entry, packaged_cards

if TYPE_CHECKING:
    from histostain.runtime.checkpoint import LoadedWeights

log = logging.getLogger(__name__)

DEFAULT_REGISTRY_NAME = "registry.toml"  # <home>/registry.toml: the user registry when none is configured
RUN_TASKS = {
    "hovernet": "segmentation",
    "cyclegan": "translation",
    "pix2pix": "translation",
    "detector": "segmentation",
}  # `histostain train`
# a pix2pix run's card: its generator loads through the same translation loader (compat.load_generator)
CARD_ARCH = {"pix2pix": "cyclegan"}
ARCH_TITLES = {
    "hovernet": "HoVer-Net",
    "cyclegan": "CycleGAN generator",
    "inception": "FID-Inception",
    "detector": "nuclei detector",
}
HOVERNET_ARGS = ("mode", "num_types", "encoder_width", "units", "decoder_width", "decoder_units")
GENERATOR_ARGS = ("ngf", "n_blocks", "norm")
# checkpoint entries that hold tensors or optimiser state: never needed to describe a run
_HEAVY_ENTRIES = ("state_dict", "models", "optimizers", "schedulers", "scaler", "rank_states")
_DATASET_TERMS = {
    "pannuke": (
        "CC BY-NC-SA 4.0 (trained on PanNuke): non-commercial use only, share alike",
        "Gamper et al., PanNuke, arXiv:2003.10778 (2020)",
    ),
    "bci": (
        "trained on BCI: the BCI dataset's terms apply (research use)",
        "Liu et al., BCI, CVPRW 2022",
    ),
    "endonuke": (
        "trained on EndoNuke: the EndoNuke dataset's terms apply",
        "Naumov et al., EndoNuke, Data 7(6):75 (2022)",
    ),
}
DETECTOR_ARGS = ("width", "levels", "num_classes")
_ARCH_CITATIONS = {
    "hovernet": "Graham et al., HoVer-Net, Medical Image Analysis 58:101563 (2019)",
    "cyclegan": "Zhu et al., CycleGAN, ICCV 2017",
    "pix2pix": "Isola et al., pix2pix, CVPR 2017",
    "detector": "histostain IHC nuclei detector (a compact U-Net on Gaussian keypoint heatmaps)",
}


# ------------------------------------------------------------------------------------- checking a file


def check_weights(card: ModelCard, path: Path, registry: Registry | None = None) -> LoadedWeights:
    """Load ``path`` into ``card``'s architecture, arguments and classes; returns what the loader read.

    Anything else is a one-line :class:`WeightsError`; a file of another architecture is named for what it is
    (``... is a CycleGAN generator (seed format, ihc2he), not HoVer-Net weights``).
    """
    try:
        loaded = _load(card, path)
    except WeightsError as exc:
        what = identify(path, skip=card.arch)
        if what is None:
            raise WeightsError(f"cannot import {path} as {card.name}: {exc.message}", hint=exc.hint) from exc
        arch, description = what
        raise WeightsError(
            f"{path} is {description}, not {ARCH_TITLES[card.arch]} weights: refusing to import it as {card.name}",
            hint=_other_names_hint(arch, registry),
        ) from exc
    _check_facts(card, loaded, path)
    return loaded


def _load(card: ModelCard, path: Path) -> LoadedWeights:
    args = card.arch_args
    if card.arch == "hovernet":
        from histostain.segmentation.compat import load_hovernet

        _, loaded = load_hovernet(path, mode=args.get("mode"), num_types=args.get("num_types"))
        return loaded
    if card.arch == "cyclegan":
        from histostain.translation.compat import load_generator

        _, loaded = load_generator(path, _default_direction(card))
        return loaded
    if card.arch == "detector":
        from histostain.segmentation.detector_weights import load_detector

        _, weights = load_detector(path)
        return weights.loaded
    from histostain.metrics.inception import load_fid_inception

    _, loaded = load_fid_inception(path)
    return loaded


def card_directions(card: ModelCard) -> list[str]:
    """The translations a CycleGAN card's weights can do (``directions``, else its one ``direction``)."""
    directions = card.arch_args.get("directions")
    if isinstance(directions, list | tuple) and directions:
        return [str(value) for value in directions]
    direction = card.arch_args.get("direction")
    return [str(direction)] if direction else []


def _default_direction(card: ModelCard) -> str | None:
    direction = card.arch_args.get("direction")
    if direction:
        return str(direction)
    directions = card_directions(card)
    return directions[0] if directions else None


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float | int) and isinstance(b, float | int) and not isinstance(a, bool):
        return math.isclose(float(a), float(b), rel_tol=1e-6)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def _check_facts(card: ModelCard, loaded: LoadedWeights, path: Path) -> None:
    """What the loader could not check against the card: widths, the number and names of classes."""
    config = loaded.config
    keys = {"hovernet": HOVERNET_ARGS[2:], "cyclegan": GENERATOR_ARGS, "detector": DETECTOR_ARGS}.get(card.arch, ())
    for key in keys:
        if key in card.arch_args and key in config and not _same(card.arch_args[key], config[key]):
            raise WeightsError(
                f"cannot import {path} as {card.name}: its {key} is {config[key]}, the card says {card.arch_args[key]}"
            )
    if card.arch != "hovernet":
        return
    num_types = int(config.get("num_types") or 0)
    classes = card.classes
    if classes and (len(classes) != num_types if num_types else len(classes) > 1):
        raise WeightsError(
            f"cannot import {path} as {card.name}: the card names {len(classes)} classes "
            f"({', '.join(classes)}) but the file has "
            + (f"{num_types} type outputs" if num_types else "no type branch"),
            hint="fix class_names in the registry entry, or import the file under the model it belongs to",
        )
    recorded = loaded.class_names if loaded.format == "histostain" else None  # only histostain records names
    if recorded and classes:
        theirs = {int(code): name for code, name in recorded.items() if int(code) > 0}
        ours = {code: name for code, name in enumerate(classes) if code > 0}
        if theirs != ours:
            raise WeightsError(
                f"cannot import {path} as {card.name}: the file was trained on classes "
                f"{', '.join(theirs.values())}, the card names {', '.join(ours.values())}",
                hint="import the training run under a new name instead (`histostain weights import NAME RUN_DIR`)",
            )


@contextmanager
def _quiet_loaders() -> Iterator[None]:
    """Silence the loaders' info and warnings while guessing what a file is."""
    logger = logging.getLogger("histostain")
    previous = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(previous)


def identify(path: Path, skip: str | None = None) -> tuple[str, str] | None:
    """``(arch, description)`` of the weights in ``path`` among those histostain loads, or None."""
    with _quiet_loaders():
        for arch in ("cyclegan", "hovernet", "detector", "inception"):
            if arch == skip:
                continue
            try:
                description = _describe_as(arch, path)
            except HistostainError:
                continue
            except Exception:  # a guess only: any failure means "not this architecture"
                log.debug("identify %s as %s failed", path, arch, exc_info=True)
                continue
            return arch, description
    return None


def _describe_as(arch: str, path: Path) -> str:
    if arch == "cyclegan":
        from histostain.translation.compat import load_generator

        _, loaded = load_generator(path)
        if loaded.entry:
            return f"a CycleGAN training checkpoint ({loaded.format} format, both generators)"
        direction = f", {loaded.direction}" if loaded.direction else ""
        return f"a CycleGAN generator ({loaded.format} format{direction})"
    if arch == "hovernet":
        from histostain.segmentation.compat import describe_hovernet, load_hovernet

        _, loaded = load_hovernet(path)
        return f"HoVer-Net weights ({describe_hovernet(loaded.config)}, {loaded.format} format)"
    if arch == "detector":
        from histostain.segmentation.detector_weights import load_detector

        _, weights = load_detector(path)
        config = weights.loaded.config
        return f"a nuclei detector (width {config['width']}, {config['levels']} levels, histostain format)"
    from histostain.metrics.inception import load_fid_inception

    load_fid_inception(path)
    return "the FID-Inception network (pytorch-fid layout)"


def _other_names_hint(arch: str, registry: Registry | None) -> str:
    cards = registry.cards.values() if registry is not None else packaged_cards().values()
    names = sorted(card.name for card in cards if card.arch == arch)
    if names:
        return f"import it under a {ARCH_TITLES[arch]} model: {', '.join(names)}"
    return "see `histostain weights list` for the model it belongs to"


# ------------------------------------------------------------------------------------------ run folders


@dataclass(frozen=True)
class TrainingRun:
    """A ``histostain train hovernet|cyclegan`` run folder and what its record says."""

    root: Path
    arch: str  # hovernet | cyclegan
    checkpoint: Path  # checkpoints/best.pt, else checkpoints/last.pt
    header: dict[str, Any] = field(default_factory=dict)  # the checkpoint's entries without tensors
    config: dict[str, Any] = field(default_factory=dict)  # config.toml without [run]
    info: dict[str, Any] = field(default_factory=dict)  # config.toml's [run]

    @property
    def task(self) -> str:
        return RUN_TASKS[self.arch]

    def dataset(self) -> str | None:
        """The prepared dataset the run trained on (its manifest's ``dataset``), when it can still be read."""
        prepared = self.info.get("prepared")
        if not prepared:
            return None
        try:
            from histostain.datasets.prepared import read_manifest

            manifest = read_manifest(Path(str(prepared)))
        except (HistostainError, OSError, ValueError):
            return None
        return manifest.dataset if manifest is not None else None

    def default_name(self) -> str:
        """A registry-valid name for an unregistered run: ``<arch>-run.<run folder name>``."""
        slug = re.sub(r"[^a-z0-9_]+", "_", self.root.name.lower()).strip("_") or "run"
        return f"{self.arch}-run.{slug}"

    def card(self, name: str | None = None) -> ModelCard:
        """The model card of this run's checkpoint (``name`` must follow the registry's naming rule)."""
        name = name or self.default_name()
        dataset = self.dataset()
        licence, data_citation = _DATASET_TERMS.get(
            dataset or "", ("unknown: the terms of the training data apply", "")
        )
        citation = "; ".join(part for part in (_ARCH_CITATIONS[self.arch], data_citation) if part)
        step = self.header.get("step")
        trained = f"trained by `histostain train {self.arch}` in {self.root}"
        if dataset:
            trained += f" on prepared {dataset}"
        if isinstance(step, int):
            trained += f" ({self.checkpoint.name}, step {step})"
        values: dict[str, Any] = {
            "name": name,
            "task": self.task,
            "arch": CARD_ARCH.get(self.arch, self.arch),
            "filename": f"{name}.pt",
            "size_bytes": self.checkpoint.stat().st_size,
            "licence": licence,
            "citation": citation,
            "intended_use": trained,
            "run_dir": str(self.root),
        }
        fields = {"hovernet": self._hovernet_fields, "detector": self._detector_fields}.get(self.arch)
        values.update(fields() if fields is not None else self._cyclegan_fields())
        try:
            return ModelCard(**values)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"]) or "card"
            raise ConfigError(
                f"cannot register {self.root} as {name!r}: {where}: {first['msg'].removeprefix('Value error, ')}",
                hint="names are <arch>-<dataset>[.<tag>], e.g. hovernet_fast-mylab.v1 (see docs/weights.md)",
            ) from None

    def _hovernet_fields(self) -> dict[str, Any]:
        model = self.header.get("model_config")
        source = model if isinstance(model, Mapping) else self.config
        arch_args = {key: source[key] for key in HOVERNET_ARGS if source.get(key) is not None}
        arch_args["num_types"] = int(arch_args.get("num_types") or 0)
        geometry = self.header.get("geometry") if isinstance(self.header.get("geometry"), Mapping) else {}
        assert isinstance(geometry, Mapping)
        patch_in = geometry.get("patch_in") or self.info.get("input_size")
        patch_out = geometry.get("patch_out") or self.info.get("output_size")
        mpp = self.header.get("mpp", geometry.get("mpp"))
        names = self.header.get("class_names")
        classes: list[str] = []
        if isinstance(names, Mapping) and names and arch_args["num_types"]:
            by_code = {int(code): str(value) for code, value in names.items()}
            classes = [by_code.get(code, f"type {code}") for code in range(arch_args["num_types"])]
        return {
            "arch_args": arch_args,
            "patch_in": int(patch_in) if patch_in else None,
            "patch_out": int(patch_out) if patch_out else None,
            "mpp": float(mpp) if isinstance(mpp, int | float) else None,
            "class_names": classes,
        }

    def _detector_fields(self) -> dict[str, Any]:
        model = self.header.get("model_config")
        arch_args = {key: int(model[key]) for key in DETECTOR_ARGS if isinstance(model, Mapping) and key in model}
        mpp = self.header.get("mpp")
        names = self.header.get("class_names")
        classes: list[str] = []
        if isinstance(names, Mapping) and names:
            by_code = {int(code): str(value) for code, value in names.items()}
            classes = [by_code.get(code, f"type {code}") for code in range(max(by_code) + 1)]
        return {
            "arch_args": arch_args,
            "mpp": float(mpp) if isinstance(mpp, int | float) else None,
            "class_names": classes,
        }

    def _cyclegan_fields(self) -> dict[str, Any]:
        direction = str(self.header.get("direction") or self.config.get("direction") or "ihc2he")
        generators = self.header.get("generators") if isinstance(self.header.get("generators"), Mapping) else {}
        assert isinstance(generators, Mapping)
        directions = [direction, *sorted(d for d in generators if d != direction)]
        forward = generators.get(direction, {})
        gen_config = forward.get("config", {}) if isinstance(forward, Mapping) else {}
        source = gen_config if isinstance(gen_config, Mapping) and gen_config else self.config
        arch_args: dict[str, Any] = {"direction": direction, "directions": directions}
        arch_args.update({key: source[key] for key in GENERATOR_ARGS if source.get(key) is not None})
        return {"arch_args": arch_args}


def read_run(path: str | Path) -> TrainingRun:
    """The training run in folder ``path``: its checkpoint (best, else last), record and architecture.

    A folder that is not a histostain run, or a run without a checkpoint yet, is a one-line error.
    """
    from histostain.runtime.training.rundir import RunDirectory

    root = Path(path).expanduser().resolve()
    run = RunDirectory(root.parent, root.name)
    if not run.looks_like_run():
        raise InputError(
            f"{path} is not a histostain training run (no config.toml with a [run] table, no checkpoints/)",
            hint="give a weights file, a run folder of `histostain train` (runs/NAME) or a registry name",
        )
    checkpoint = run.best if run.best.is_file() else run.last
    if not checkpoint.is_file():
        raise WeightsError(
            f"{path} has no checkpoint yet (neither checkpoints/best.pt nor checkpoints/last.pt)",
            hint="train it until its first checkpoint is saved",
        )
    header = _checkpoint_header(checkpoint)
    arch = str(header.get("arch"))
    if arch not in RUN_TASKS:
        raise WeightsError(
            f"{checkpoint} holds a {arch!r} model; only {', '.join(RUN_TASKS)} training runs can be used as weights"
        )
    config: dict[str, Any] = {}
    info: dict[str, Any] = {}
    if run.config_path.is_file():
        config, info = run.read_config(), run.read_run_info()
    if not config and isinstance(header.get("config"), Mapping):
        config = dict(header["config"])
    return TrainingRun(root=root, arch=arch, checkpoint=checkpoint, header=header, config=config, info=info)


def _checkpoint_header(path: Path) -> dict[str, Any]:
    """The non-tensor entries of a histostain checkpoint, read without loading its tensors when possible."""
    from histostain.runtime.checkpoint import check_histostain_header, load_checkpoint

    payload: Any = None
    try:
        import torch

        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)  # tensors stay on disk
    except Exception:  # not a zip checkpoint, or unreadable: the safe loader says which, in one line
        payload = load_checkpoint(path)
    check_histostain_header(payload, path)
    return {key: value for key, value in payload.items() if key not in _HEAVY_ENTRIES}


# ------------------------------------------------------------------------------------------------ import


@dataclass(frozen=True)
class Imported:
    """What an import did: the card (new for a run), the cache record, and the registry file written (runs)."""

    card: ModelCard
    record: CacheRecord
    registered: Path | None = None


def import_weights(
    registry: Registry, name: str, path: str | Path, home: Path, *, user_registry: Path | None
) -> CacheRecord:
    """Import a file for registry entry ``name``, or a training run folder as the new model ``name``.

    ``user_registry``: the registry file a run's card is written to (None: the registry's own user file, else
    ``<home>/registry.toml``). Returns the cache record. See :func:`import_model` for the card as well.
    """
    return import_model(registry, name, path, home, user_registry=user_registry).record


def import_model(
    registry: Registry, name: str, path: str | Path, home: Path, *, user_registry: Path | None
) -> Imported:
    """:func:`import_weights`, returning the card and the registry file written as well."""
    source = Path(path).expanduser()
    if not source.exists():
        raise InputError(
            f"{source} not found", hint="give the downloaded weights file, or a training run folder (runs/NAME)"
        )
    if source.is_dir():
        target = user_registry or registry.user_file or Path(home) / DEFAULT_REGISTRY_NAME
        return _import_run(registry, name, source, Path(home), target)
    if name not in registry:
        raise ConfigError(
            f"no model named {name!r} in the registry",
            hint="import a file under a name `histostain weights list` shows, describe your model in your registry "
            "file first (docs/weights.md), or import its training run folder under a new name",
        )
    card = registry.get(name)
    check_weights(card, source, registry)
    record = install_file(card, Path(home), source, source="import", origin=str(source.resolve()))
    log.info("imported %s as %s (sha256 %s)", source, card.name, record.sha256)
    return Imported(card, record)


def _import_run(registry: Registry, name: str, folder: Path, home: Path, target: Path) -> Imported:
    if name in packaged_cards():
        raise ConfigError(
            f"{name} is a histostain model; a training run is registered under a new name",
            hint=f"e.g. {name.split('.', 1)[0]}.mylab (names are <arch>-<dataset>[.<tag>])",
        )
    existing = registry.cards.get(name)
    if existing is not None and existing.run_dir is None:
        raise ConfigError(
            f"{name} is already in your registry ({existing.source}) and is not a training run",
            hint="choose another name, or remove that entry first",
        )
    run = read_run(folder)
    card = run.card(name)
    check_weights(card, run.checkpoint, registry)
    record = install_file(card, home, run.checkpoint, source="import", origin=str(run.root))
    card = card.model_copy(update={"sha256": record.sha256, "size_bytes": record.size_bytes})
    add_user_entry(target, card)
    log.info("registered %s (%s, %s) in %s", card.name, run.arch, run.checkpoint.name, target)
    return Imported(card, record, target)


__all__ = [
    "ARCH_TITLES",
    "DEFAULT_REGISTRY_NAME",
    "Imported",
    "TrainingRun",
    "card_directions",
    "check_weights",
    "identify",
    "import_model",
    "import_weights",
    "read_run",
]
