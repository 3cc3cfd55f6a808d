"""Load CycleGAN generators from the checkpoint formats people actually have, detected automatically.

Formats (tried in this order, every file read with ``weights_only=True``):

``histostain``
    Our own checkpoints (``{"format": "histostain", "arch": "cyclegan" | "cyclegan_generator", ...}``). A training
    checkpoint holds both generators (``G_A`` maps domain A to B, ``G_B`` maps back); ``direction`` picks one using
    the domains recorded in the checkpoint's config (A = IHC unless the config says otherwise).
``reference``
    junyanz/pytorch-CycleGAN-and-pix2pix ``*_net_G*.pth``: a bare state dict with keys ``model.N...``. ``module.``
    prefixes are stripped, stale instance-norm ``running_mean``/``running_var``/``num_batches_tracked`` entries
    (pre-0.4 files) are dropped as the reference's own loader does, and ngf, n_blocks, norm, dropout
    (``conv_block.6``) and the channel counts are read off the tensors.
``seed``
    Jorge-G-P/IHC_HE_GenAI ``generator_HE.tar`` style ``{"state_dict": ..., "optimizer": ..., "epoch": ...}`` files.
    Keys are renamed to the reference layout and the seed's variant is built (no norm after the stem,
    reflect-padded stride-2 convs), so the outputs are what the seed model computes.
``reference`` pix2pix
    A reference pix2pix ``latest_net_G.pth`` of a U-Net (``--netG unet_256``: keys ``model.model...``) is read by
    ``pix2pix_compat`` into :class:`~histostain.translation.pix2pix.UnetGenerator` (record ``arch`` ``unet_256``);
    a ``resnet_9blocks`` pix2pix generator has the CycleGAN layout with batch norm and loads as above.

Anything else is a :class:`~histostain.errors.WeightsError` that says what was expected and what was found.
"""

from __future__ import annotations

import logging
import os
import pathlib
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from histostain.errors import ConfigError, WeightsError
from histostain.runtime.checkpoint import (
    LoadedWeights,
    clean_state_dict,
    is_histostain_checkpoint,
    load_checkpoint,
    make_checkpoint,
    save_checkpoint,
    sha256_file,
)
from histostain.translation.cyclegan import (
    GENERATOR_ARCH,
    GENERATOR_CONFIG_KEYS,
    ResnetGenerator,
    build_generator,
    generator_config,
)
from histostain.translation.pix2pix_compat import is_unet_generator, prepare_unet

log = logging.getLogger(__name__)

DIRECTIONS = ("ihc2he", "he2ihc")
FORMATS = ("histostain", "reference", "seed")
GENERATOR_CHECKPOINT_ARCH = "cyclegan_generator"  # a single exported generator
TRAINING_CHECKPOINT_ARCH = "cyclegan"  # both generators (and usually both discriminators)
_STALE_NORM_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")
_SEED_RESIDUAL = re.compile(r"^residual_layers\.(\d+)\.block\.([01])\.conv\.0\.(weight|bias)$")
_REF_BLOCK = re.compile(r"^model\.(\d+)\.conv_block\.(\d+)\.")


@dataclass
class _Found:
    """A generator built and loaded from one file, before the public record is made."""

    model: nn.Module  # a ResnetGenerator, or a pix2pix UnetGenerator
    format: str  # one of FORMATS
    config: dict[str, Any]
    direction: str | None = None  # ihc2he / he2ihc when known (or requested)
    entry: str | None = None  # which generator of a multi-network checkpoint (G_A / G_B)
    notes: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------------------ helpers


def _check_direction(direction: str | None) -> str | None:
    if direction is None:
        return None
    value = direction.strip().lower().replace("-", "").replace("_", "")
    if value not in DIRECTIONS:
        raise ConfigError(f"unknown direction {direction!r}", hint="use ihc2he or he2ihc")
    return value


def strip_wrappers(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """The state dict without the DataParallel/DDP/torch.compile prefixes (see ``clean_state_dict``)."""
    return clean_state_dict(state_dict)[0]


def _is_tensor_dict(value: Any) -> bool:
    return isinstance(value, Mapping) and bool(value) and all(torch.is_tensor(v) for v in value.values())


def describe_keys(keys: list[str], limit: int = 3) -> str:
    """``"668 keys starting with conv0., d0."`` plus a guess at what the file is, for error messages."""
    if not keys:
        return "an empty state dict"
    prefixes = Counter(key.split(".", 1)[0] + "." for key in keys)
    common = ", ".join(prefix for prefix, _ in prefixes.most_common(limit))
    text = f"{len(keys)} keys starting with {common}"
    guess = _guess_kind(keys)
    return f"{text} ({guess}?)" if guess else text


def _guess_kind(keys: list[str]) -> str | None:
    names = set(keys)
    if any(k.startswith(("conv0.", "d0.", "d1.", "decoder.np", "decoder.hv")) for k in keys):
        return "a HoVer-Net checkpoint"
    if any("Conv2d_1a_3x3" in k or k.startswith("Mixed_") for k in keys):
        return "an Inception network"
    if any(k.startswith("model.model.") for k in keys):
        return "a pix2pix U-Net generator"
    if "model.0.weight" in names and "model.1.weight" not in names and not any("conv_block" in k for k in keys):
        return "a CycleGAN discriminator (net_D)"
    if "initial_layer.0.weight" in names and any(k.startswith("model.") for k in keys):
        return "a seed-project discriminator"
    if any(k.startswith(("layer1.", "fc.")) for k in keys):
        return "a torchvision ResNet"
    return None


def _tensor(state_dict: Mapping[str, Any], key: str) -> torch.Tensor:
    value = state_dict.get(key)
    if not torch.is_tensor(value):
        raise KeyError(key)
    return value


def _load_strict(model: nn.Module, state_dict: Mapping[str, Any], path: Path, what: str) -> None:
    """Strict load; a mismatch becomes a WeightsError listing the first differences."""
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:
        expected = set(model.state_dict())
        found = set(state_dict)
        missing = sorted(expected - found)[:3]
        unexpected = sorted(found - expected)[:3]
        detail = []
        if missing:
            detail.append(f"missing {', '.join(missing)}")
        if unexpected:
            detail.append(f"unexpected {', '.join(unexpected)}")
        if not detail:
            first = str(exc).split("size mismatch for ", 1)
            detail.append("size mismatch for " + first[1].split("\n", 1)[0] if len(first) > 1 else "shape mismatch")
        raise WeightsError(
            f"{path}: the {what} tensors do not fit the generator they describe ({'; '.join(detail)})"
        ) from exc


# ---------------------------------------------------------------------------------------- reference format


def is_reference_generator(state_dict: Mapping[str, Any]) -> bool:
    """Whether a (wrapper-stripped) state dict has the reference ResnetGenerator's key layout."""
    return all(f"model.{i}.weight" in state_dict for i in (1, 4, 7))  # stem and both downsampling convs


def infer_reference_config(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Architecture of a reference-layout generator read from its tensors (padding assumed ``reflect``).

    Reflect and replicate padding have identical tensors; the reference never trains with anything but reflect.
    """
    stem = _tensor(state_dict, "model.1.weight")
    blocks: dict[int, set[int]] = {}
    for key in state_dict:
        match = _REF_BLOCK.match(str(key))
        if match and str(key).endswith(".weight"):
            blocks.setdefault(int(match.group(1)), set()).add(int(match.group(2)))
    n_blocks = len(blocks)
    if sorted(blocks) != list(range(10, 10 + n_blocks)):
        raise KeyError("residual blocks are not numbered model.10 .. model.N")
    convs = blocks.get(10, {1, 5})
    # conv positions: reflect [1, 5] (dropout [1, 6]); zero padding [0, 3] (dropout [0, 4]); norms hold weights too
    if 1 in convs:
        padding_type, use_dropout = "reflect", 6 in convs and 5 not in convs
    else:
        padding_type, use_dropout = "zero", 4 in convs and 3 not in convs
    if "model.2.weight" in state_dict:
        norm = "batch"
    elif "model.1.bias" in state_dict:
        norm = "instance"
    else:
        norm = "none"
    last = _tensor(state_dict, f"model.{17 + n_blocks}.weight")
    return {
        "arch": GENERATOR_ARCH,
        "input_nc": int(stem.shape[1]),
        "output_nc": int(last.shape[0]),
        "ngf": int(stem.shape[0]),
        "n_blocks": n_blocks,
        "norm": norm,
        "use_dropout": bool(use_dropout),
        "padding_type": padding_type,
        "stem_norm": True,
        "down_padding": "zeros",
    }


def drop_stale_norm_entries(model: nn.Module, state_dict: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Remove running stats that instance-norm layers of ``model`` do not have (the reference's patch)."""
    kept: dict[str, Any] = {}
    dropped: list[str] = []
    own = model.state_dict()
    for key, value in state_dict.items():
        if key not in own and key.endswith(_STALE_NORM_SUFFIXES):
            prefix = key.rsplit(".", 1)[0]
            try:
                module = model.get_submodule(prefix)
            except AttributeError:
                module = None
            if isinstance(module, nn.InstanceNorm2d | nn.Identity):
                dropped.append(key)
                continue
        kept[key] = value
    return kept, dropped


def generator_from_reference(state_dict: Mapping[str, Any], path: Path, format_name: str = "reference") -> _Found:
    """Build and strictly load a generator from a reference-layout state dict."""
    cleaned, stripped = clean_state_dict(state_dict)
    try:
        config = infer_reference_config(cleaned)
    except (KeyError, IndexError) as exc:
        raise WeightsError(
            f"{path}: keys look like a CycleGAN generator but the layout is incomplete ({exc})",
            hint="the file may be truncated or from a modified network definition",
        ) from exc
    model = build_generator(config)
    cleaned, dropped = drop_stale_norm_entries(model, cleaned)
    _load_strict(model, cleaned, path, format_name)
    notes = []
    if dropped:
        notes.append(f"dropped {len(dropped)} stale instance-norm statistics entries")
    if stripped:
        notes.append(f"stripped the {', '.join(stripped)} prefix")
    return _Found(model=model, format=format_name, config=config, notes=notes)


def generator_from_unet(state_dict: Mapping[str, Any], path: Path) -> _Found:
    """Build and strictly load a pix2pix U-Net from a reference-layout state dict (``pix2pix_compat``)."""
    cleaned, stripped = clean_state_dict(state_dict)
    try:
        model, config, prepared, notes = prepare_unet(cleaned)
    except (KeyError, ValueError, ConfigError) as exc:
        raise WeightsError(
            f"{path}: looks like a pix2pix U-Net generator but its layout is not readable ({exc})"
        ) from exc
    prepared, dropped = drop_stale_norm_entries(model, prepared)
    _load_strict(model, prepared, path, "pix2pix U-Net")
    if dropped:
        notes.append(f"dropped {len(dropped)} stale instance-norm statistics entries")
    if stripped:
        notes.append(f"stripped the {', '.join(stripped)} prefix")
    return _Found(model=model, format="reference", config=config, notes=notes)


# --------------------------------------------------------------------------------------------- seed format


def seed_key_map(n_blocks: int) -> dict[str, str]:
    """Seed project key prefix -> reference key prefix (tensor shapes match one to one)."""
    mapping = {
        "initial_layer.0": "model.1",
        "downsampling_layers.0.conv.0": "model.4",
        "downsampling_layers.1.conv.0": "model.7",
    }
    for i in range(n_blocks):
        mapping[f"residual_layers.{i}.block.0.conv.0"] = f"model.{10 + i}.conv_block.1"
        mapping[f"residual_layers.{i}.block.1.conv.0"] = f"model.{10 + i}.conv_block.5"
    mapping["upsampling_layers.0.conv.0"] = f"model.{10 + n_blocks}"
    mapping["upsampling_layers.1.conv.0"] = f"model.{13 + n_blocks}"
    mapping["last_layer"] = f"model.{17 + n_blocks}"
    return mapping


def is_seed_generator(state_dict: Mapping[str, Any]) -> bool:
    return "initial_layer.0.weight" in state_dict and "last_layer.weight" in state_dict


def seed_config(n_blocks: int, ngf: int, input_nc: int = 3, output_nc: int = 3) -> dict[str, Any]:
    """The seed generator as a configuration of ours: no stem norm, reflect-padded downsampling."""
    return {
        "arch": GENERATOR_ARCH,
        "input_nc": input_nc,
        "output_nc": output_nc,
        "ngf": ngf,
        "n_blocks": n_blocks,
        "norm": "instance",
        "use_dropout": False,
        "padding_type": "reflect",
        "stem_norm": False,
        "down_padding": "reflect",
    }


def generator_from_seed(state_dict: Mapping[str, Any], path: Path) -> _Found:
    """Rename a seed generator's keys and load them into the seed variant of our generator."""
    cleaned = strip_wrappers(state_dict)
    indices = {int(m.group(1)) for key in cleaned if (m := _SEED_RESIDUAL.match(str(key)))}
    n_blocks = len(indices)
    if indices != set(range(n_blocks)):
        raise WeightsError(f"{path}: seed generator residual layers are not numbered 0..{n_blocks - 1}")
    stem, last = cleaned["initial_layer.0.weight"], cleaned["last_layer.weight"]
    config = seed_config(n_blocks, int(stem.shape[0]), int(stem.shape[1]), int(last.shape[0]))
    mapping = seed_key_map(n_blocks)
    renamed: dict[str, Any] = {}
    for key, value in cleaned.items():
        prefix, _, leaf = str(key).rpartition(".")
        target = mapping.get(prefix)
        renamed[f"{target}.{leaf}" if target else str(key)] = value
    model = build_generator(config)
    renamed, dropped = drop_stale_norm_entries(model, renamed)
    _load_strict(model, renamed, path, "seed-project generator")
    notes = ["seed variant: no norm after the stem, reflect-padded downsampling"]
    return _Found(model=model, format="seed", config=config, notes=notes)


def seed_direction_from_name(path: Path) -> str | None:
    """The seed names its generators by output domain: ``generator_HE`` makes H&E (ihc2he)."""
    name = path.name.lower()
    if re.search(r"gen(erator)?_?he(?![a-z])", name):
        return "ihc2he"
    if re.search(r"gen(erator)?_?ihc", name):
        return "he2ihc"
    return None


# --------------------------------------------------------------------------------------- histostain format


def _find_value(tree: Any, names: tuple[str, ...], depth: int = 3) -> Any:
    """First value stored under one of ``names`` in nested dicts (breadth first, limited depth)."""
    level = [tree]
    for _ in range(depth):
        nxt = []
        for node in level:
            if not isinstance(node, Mapping):
                continue
            for name in names:
                if name in node and node[name] is not None:
                    return node[name]
            nxt.extend(v for v in node.values() if isinstance(v, Mapping))
        level = nxt
    return None


def _domain(value: Any) -> str | None:
    text = str(value).strip().lower().replace("&", "") if isinstance(value, str) else ""
    return text if text in ("ihc", "he") else None


def checkpoint_domains(record: Mapping[str, Any]) -> tuple[str, str, bool]:
    """``(domain_a, domain_b, recorded)``: which stain is A and B in a training run (default A = IHC).

    Looks for ``domains: {"A": ..., "B": ...}``, ``domain_a`` or a ``direction`` (``ihc2he`` = A is IHC), at the top
    of the checkpoint first and then inside its config.
    """
    domains = _find_value(record, ("domains",))
    if isinstance(domains, Mapping) and _domain(domains.get("A")) and _domain(domains.get("B")):
        return str(_domain(domains["A"])), str(_domain(domains["B"])), True
    a = _domain(_find_value(record, ("domain_a", "domain_A", "a_domain")))
    if a:
        return a, ("he" if a == "ihc" else "ihc"), True
    direction = _find_value(record, ("direction",))
    if isinstance(direction, str):
        value = direction.strip().lower().replace("-", "").replace("_", "")
        if value in DIRECTIONS:
            source, target = value.split("2")
            return source, target, True
    return "ihc", "he", False


def _generator_state(payload: Mapping[str, Any], entry: str) -> Mapping[str, Any] | None:
    """The state dict of one generator (``G_A``/``G_B``) in a training checkpoint, in any of the usual nestings."""
    names = (entry, f"net{entry}", f"net_{entry}")
    for container in (payload.get("state_dict"), payload.get("models"), payload.get("networks"), payload):
        if not isinstance(container, Mapping):
            continue
        for name in names:
            value = container.get(name)
            if _is_tensor_dict(value):
                return value
        for name in names:  # flat keys "G_A.model.1.weight"
            flat = {k[len(name) + 1 :]: v for k, v in container.items() if str(k).startswith(name + ".")}
            if _is_tensor_dict(flat):
                return flat
    return None


def _generator_config_from(config: Mapping[str, Any], entry: str | None) -> dict[str, Any] | None:
    names: tuple[str, ...] = ("generator", "netG", "generator_config")
    if entry:
        names = (entry, f"net{entry}", *names)
    found = _find_value(config, names)
    if isinstance(found, Mapping):
        return dict(found)
    if "ngf" in config and "n_blocks" in config:
        return {k: v for k, v in config.items() if k in GENERATOR_CONFIG_KEYS}
    return None


def generator_from_histostain(payload: Mapping[str, Any], path: Path, direction: str | None) -> _Found:
    """A generator from one of our checkpoints: G_A/G_B of a training checkpoint, or an exported generator."""
    arch = payload.get("arch")
    config = payload.get("config") if isinstance(payload.get("config"), Mapping) else {}
    assert isinstance(config, Mapping)
    state = payload.get("state_dict")
    gen_config: dict[str, Any] | None = None
    if _generator_state(payload, "G_A") is not None and _generator_state(payload, "G_B") is not None:
        record = {k: payload[k] for k in ("domains", "direction", "domain_a") if k in payload}
        record["config"] = config
        domain_a, domain_b, recorded_domains = checkpoint_domains(record)
        chosen = direction or f"{domain_a}2{domain_b}"
        entry = "G_A" if chosen.startswith(domain_a) else "G_B"
        if direction is None:
            log.warning("no --direction given: using %s (%s) of %s", entry, chosen, path.name)
        if not recorded_domains:
            log.info("%s does not record its domains; assuming A = IHC, B = H&E", path.name)
        described = payload.get("generators")
        if isinstance(described, Mapping) and isinstance(described.get(chosen), Mapping):
            entry = str(described[chosen].get("model", entry))
            if isinstance(described[chosen].get("config"), Mapping):
                gen_config = dict(described[chosen]["config"])
        state = _generator_state(payload, entry)
        if state is None:
            raise WeightsError(f"{path}: the checkpoint names {entry} for {chosen} but holds no such generator")
    elif _is_tensor_dict(state) and (is_reference_generator(bare := strip_wrappers(state)) or is_unet_generator(bare)):
        # one generator: an exported CycleGAN one, or `train pix2pix`'s (recorded direction at the top, else config)
        recorded = _check_direction(
            payload["direction"] if "direction" in payload else _find_value(config, ("direction",))
        )
        entry = None
        if direction and recorded and direction != recorded:
            raise WeightsError(
                f"{path} is a {recorded} generator but --direction {direction} was requested",
                hint=f"use --direction {recorded}, or the checkpoint of the other generator",
            )
        chosen = direction or recorded
    elif arch == GENERATOR_CHECKPOINT_ARCH:
        found = describe_keys(sorted(map(str, state))) if isinstance(state, Mapping) else type(state).__name__
        raise WeightsError(f"{path}: exported generator checkpoint without a generator state dict (found {found})")
    elif arch == TRAINING_CHECKPOINT_ARCH:
        raise WeightsError(
            f"{path}: CycleGAN training checkpoint without both generators G_A and G_B",
            hint="pass runs/<name>/checkpoints/last.pt of `histostain train cyclegan`, or an exported generator",
        )
    else:
        raise WeightsError(
            f"{path} is a histostain {arch!r} checkpoint, not a CycleGAN generator",
            hint="pass a checkpoint written by `histostain train cyclegan`",
        )
    assert state is not None
    state = strip_wrappers(state)
    if gen_config is None:
        gen_config = _generator_config_from(config, entry)
    if is_unet_generator(state):
        loaded = generator_from_unet(state, path)
        loaded.format = "histostain"
        if payload.get("norm_mode") in ("eval", "per-input"):  # `train pix2pix` records the mode it validated
            loaded.config["norm_mode"] = payload["norm_mode"]
    elif gen_config is None:
        loaded = generator_from_reference(state, path, format_name="histostain")
    else:
        try:
            model = build_generator(gen_config)
        except ConfigError as exc:
            raise WeightsError(f"{path}: invalid generator config in the checkpoint ({exc.message})") from exc
        cleaned, _dropped = drop_stale_norm_entries(model, state)
        _load_strict(model, cleaned, path, "histostain")
        loaded = _Found(model=model, format="histostain", config=generator_config(model))
    loaded.direction, loaded.entry = chosen, entry
    return loaded


# -------------------------------------------------------------------------------------------------- public


def _read(path: Path) -> Any:
    """``load_checkpoint`` with path objects allowed (the seed pickles its ``log_dir`` as a PosixPath)."""
    safe = [pathlib.PosixPath, pathlib.WindowsPath, pathlib.PurePosixPath, pathlib.PureWindowsPath]
    with torch.serialization.safe_globals(safe):
        return load_checkpoint(path)


def load_generator(path: str | os.PathLike[str], direction: str | None = None) -> tuple[nn.Module, LoadedWeights]:
    """Detect the format of ``path`` and return the generator it holds (eval mode, CPU) and what was loaded.

    The generator is a :class:`ResnetGenerator` (CycleGAN, or pix2pix ``resnet_*blocks``) or, for a reference
    pix2pix U-Net file, a :class:`~histostain.translation.pix2pix.UnetGenerator`; ``record.arch`` tells which.

    ``direction`` (``ihc2he`` / ``he2ihc``) picks the generator of a training checkpoint; for single-generator
    files it is checked against what the file records (or, for seed files, its name) and kept as metadata.
    """
    file = Path(path)
    direction = _check_direction(direction)
    payload = _read(file)
    tried = "histostain checkpoint, reference CycleGAN or pix2pix *_net_G.pth state dict, seed {'state_dict': ...} file"

    if is_histostain_checkpoint(payload):
        loaded = generator_from_histostain(payload, file, direction)
    elif _is_tensor_dict(payload) and is_reference_generator(strip_wrappers(payload)):
        loaded = generator_from_reference(payload, file)
        loaded.direction = direction
    elif _is_tensor_dict(payload) and is_unet_generator(strip_wrappers(payload)):
        loaded = generator_from_unet(payload, file)
        loaded.direction = direction
    elif isinstance(payload, Mapping) and _is_tensor_dict(payload.get("state_dict")):
        inner = strip_wrappers(payload["state_dict"])
        if is_seed_generator(inner):
            loaded = generator_from_seed(inner, file)
        elif is_reference_generator(inner):
            loaded = generator_from_reference(inner, file)
        elif is_unet_generator(inner):
            loaded = generator_from_unet(inner, file)
        else:
            raise WeightsError(
                f"{file}: expected a CycleGAN generator state dict; found {describe_keys(sorted(inner))}",
                hint=f"tried: {tried}",
            )
        named = seed_direction_from_name(file) if loaded.format == "seed" else None
        if named and direction and named != direction:
            log.warning("%s looks like a %s generator by its name, but --direction is %s", file.name, named, direction)
        loaded.direction = direction or named
    elif _is_tensor_dict(payload):
        raise WeightsError(
            f"{file}: expected a CycleGAN generator state dict; found {describe_keys(sorted(map(str, payload)))}",
            hint=f"tried: {tried}",
        )
    elif isinstance(payload, Mapping):
        keys = sorted(map(str, payload))
        nested = next(
            (payload[k] for k in ("model", "desc", "net", "generator") if _is_tensor_dict(payload.get(k))), None
        )
        found = f"a dict with keys {', '.join(keys[:6])}" + (
            f"; its state dict has {describe_keys(sorted(nested))}" if nested else ""
        )
        raise WeightsError(f"{file}: expected a CycleGAN generator checkpoint; found {found}", hint=f"tried: {tried}")
    else:
        raise WeightsError(
            f"{file}: expected a CycleGAN generator checkpoint; found a {type(payload).__name__}",
            hint=f"tried: {tried}",
        )
    loaded.model.eval()
    for note in loaded.notes:
        log.info("%s: %s", file.name, note)
    record = LoadedWeights(
        path=file,
        format=loaded.format,
        arch=str(loaded.config.get("arch", GENERATOR_ARCH)),
        config=dict(loaded.config),
        sha256=sha256_file(file),
        direction=loaded.direction,
        entry=loaded.entry,
        notes=list(loaded.notes),
    )
    return loaded.model, record


def save_generator(
    path: str | os.PathLike[str], model: ResnetGenerator, direction: str | None = None, **extra: Any
) -> Path:
    """Export one generator as a histostain checkpoint (``arch="cyclegan_generator"``), atomically."""
    model = getattr(model, "module", model)
    config: dict[str, Any] = {"generator": generator_config(model)}
    if direction is not None:
        config["direction"] = _check_direction(direction)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return save_checkpoint(path, make_checkpoint(GENERATOR_CHECKPOINT_ARCH, state, config, **extra))


__all__ = [
    "DIRECTIONS",
    "FORMATS",
    "checkpoint_domains",
    "describe_keys",
    "drop_stale_norm_entries",
    "generator_from_reference",
    "generator_from_seed",
    "generator_from_unet",
    "infer_reference_config",
    "is_reference_generator",
    "is_seed_generator",
    "load_generator",
    "save_generator",
    "seed_config",
    "seed_direction_from_name",
    "seed_key_map",
    "strip_wrappers",
]
