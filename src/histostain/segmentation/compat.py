"""Load HoVer-Net weights in every published container, always through the safe (weights-only) unpickler.

Recognised files (auto-detected from the content, not the file name):

* ``official``: hover_net's ``*.tar``, ``{"desc": state_dict, ...}``; training saves add ``optimizer`` etc., a
  ``module.`` prefix (DataParallel) and ``num_batches_tracked``; the converted TF releases have neither;
* ``tiatoolbox``: TIAToolbox's ``*.pth``, the same state dict flat (no ``desc`` wrapper);
* ``histostain``: our checkpoints (``format="histostain"``, ``arch="hovernet"``, ``config``, ``state_dict``).

The mode comes from the decoder kernels (3x3: fast, 5x5: original), the number of types from the ``tp`` head,
and the (test-only) scaled widths/depths from the tensor shapes, so no file needs a side-car config.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from histostain.errors import WeightsError
from histostain.runtime.checkpoint import (
    LoadedWeights,
    check_histostain_header,
    clean_state_dict,
    is_histostain_checkpoint,
    load_checkpoint,
    sha256_file,
)
from histostain.segmentation.geometry import geometry_for
from histostain.vocabulary import PANNUKE_TYPE_NAMES

if TYPE_CHECKING:
    import torch

    from histostain.segmentation.hovernet import HoVerNet

log = logging.getLogger(__name__)

ARCH = "hovernet"
FORMATS = ("official", "tiatoolbox", "histostain")
_STEM_KEY = "conv0./.weight"
_MODE_KEY = "decoder.np.u3.conva.weight"
_TYPES_KEY = "decoder.tp.u0.conv.weight"
_KSIZE_TO_MODE = {3: "fast", 5: "original"}


def describe_hovernet(config: Mapping[str, Any]) -> str:
    """E.g. ``fast mode with 6 types`` for a HoVer-Net config (``LoadedWeights.config``)."""
    return _describe(config.get("mode"), config.get("num_types"))


def _describe(mode: str | None, num_types: int | None) -> str:
    if mode is None:
        return f"{num_types} types" if num_types else "no type branch"
    if num_types is None:
        return f"{mode} mode without a type branch"
    return f"{mode} mode with {num_types} types"


def _key_sample(keys: list[str], count: int = 3) -> str:
    shown = ", ".join(keys[:count])
    return shown + (", ..." if len(keys) > count else "")


def _as_state_dict(candidate: Any, path: Path, where: str) -> dict[str, torch.Tensor]:
    import torch

    if not isinstance(candidate, Mapping) or not candidate:
        raise WeightsError(f"{path}: {where} is not a state dict (found {type(candidate).__name__})")
    bad = [str(key) for key, value in candidate.items() if not isinstance(key, str) or not torch.is_tensor(value)]
    if bad:
        raise WeightsError(f"{path}: {where} is not a state dict of tensors (entries {_key_sample(bad)})")
    state, stripped = clean_state_dict(candidate)
    for prefix in stripped:
        log.info("stripped the %r prefix from every key", prefix)
    return state


def _read(path: Path) -> tuple[dict[str, torch.Tensor], str, Mapping[str, Any]]:
    """(state dict, format, the whole payload) of a HoVer-Net weights file."""
    payload = load_checkpoint(path)
    if not isinstance(payload, Mapping):
        raise WeightsError(f"{path} holds a {type(payload).__name__}, not HoVer-Net weights")
    if is_histostain_checkpoint(payload):
        check_histostain_header(payload, path, ARCH)
        fmt, state = "histostain", _as_state_dict(payload.get("state_dict"), path, "its 'state_dict'")
    elif "desc" in payload:
        fmt, state = "official", _as_state_dict(payload["desc"], path, "its 'desc' entry")
    else:
        fmt, state = "tiatoolbox", _as_state_dict(payload, path, "the file")
    _check_architecture(state, path)
    return state, fmt, payload


def _check_architecture(state: Mapping[str, Any], path: Path) -> None:
    keys = list(state)
    if any(key.startswith(("res_blocks.", "nucleus_prediction.", "horizontal_vertical.")) for key in keys):
        raise WeightsError(
            f"{path} holds MONAI HoVerNet weights (keys {_key_sample(keys)}), which are not supported",
            hint="MONAI's port differs numerically (padding, bilinear upsampling, no /255); use official weights",
        )
    if _STEM_KEY not in state:
        raise WeightsError(f"{path} does not hold HoVer-Net weights (found keys {_key_sample(keys)})")
    if _MODE_KEY not in state:
        raise WeightsError(
            f"{path} holds only a HoVer-Net encoder (no decoder keys), e.g. the ImageNet pre-activation ResNet-50",
            hint="such files initialise training; inference needs a full HoVer-Net checkpoint",
        )


def infer_config(state: Mapping[str, torch.Tensor], path: str | os.PathLike[str] = "<state dict>") -> dict[str, Any]:
    """Constructor arguments of :class:`HoVerNet` implied by the tensors of a (normalised) state dict."""
    from histostain.segmentation.hovernet import DEFAULT_DECODER_UNITS, DEFAULT_UNITS

    ksize = int(state[_MODE_KEY].shape[-1])
    if ksize not in _KSIZE_TO_MODE:
        raise WeightsError(f"{path}: decoder kernels are {ksize}x{ksize}; HoVer-Net uses 3x3 (fast) or 5x5 (original)")
    types_weight = state.get(_TYPES_KEY)

    def count(pattern: str) -> int:
        regex = re.compile(pattern)
        return len({match.group(1) for key in state if (match := regex.match(key))})

    units = tuple(count(rf"d{group}\.units\.(\d+)\.") for group in range(4))
    decoder_units = tuple(count(rf"decoder\.np\.{stage}\.dense\.units\.(\d+)\.") for stage in ("u3", "u2"))
    return {
        "mode": _KSIZE_TO_MODE[ksize],
        "num_types": None if types_weight is None else int(types_weight.shape[0]),
        "encoder_width": state[_STEM_KEY].shape[0] / 64,
        "units": list(units if all(units) else DEFAULT_UNITS),
        "decoder_width": state[_MODE_KEY].shape[0] / 256,
        "decoder_units": list(decoder_units if all(decoder_units) else DEFAULT_DECODER_UNITS),
    }


def _check_request(config: Mapping[str, Any], mode: str | None, num_types: int | None, path: Path) -> None:
    from histostain.segmentation.hovernet import MODES

    if mode is not None and mode not in MODES:
        raise WeightsError(f"unknown HoVer-Net mode {mode!r}", hint=f"use one of: {', '.join(MODES)}")
    asked_types = None if num_types in (None, 0) else num_types
    mode_differs = mode is not None and mode != config["mode"]
    types_differ = num_types is not None and asked_types != config["num_types"]
    if mode_differs or types_differ:
        if mode_differs and types_differ:
            asked = _describe(mode, asked_types)
        elif mode_differs:
            asked = f"{mode} mode"
        else:
            asked = _describe(None, asked_types)
        raise WeightsError(
            f"{path}: this checkpoint is {_describe(config['mode'], config['num_types'])}; you asked for {asked}",
            hint="leave mode / number of types unset to use what the file contains",
        )


def _model_facts(fmt: str, config: Mapping[str, Any], payload: Mapping[str, Any]) -> tuple[float, dict | None]:
    """(input um/px, class names) of a loaded model: recorded by histostain training, else the publisher's.

    Published HoVer-Net weights all expect 40x input (0.25 um/px); a 6-type published model is the PanNuke one
    (CoNSeP and MoNuSAC models have 5 types whose names the checkpoints do not record).
    """
    mpp = geometry_for(str(config["mode"])).mpp
    names: dict[int, str] | None = None
    if fmt == "histostain":
        if isinstance(payload.get("mpp"), int | float):
            mpp = float(payload["mpp"])
        recorded = payload.get("class_names")
        if isinstance(recorded, Mapping):
            names = {int(k): str(v) for k, v in recorded.items()}
    if names is None and config.get("num_types") == len(PANNUKE_TYPE_NAMES) + 1:
        names = {0: "Background", **PANNUKE_TYPE_NAMES}
    return mpp, names


def load_hovernet(
    path: str | os.PathLike[str], mode: str | None = None, num_types: int | None = None
) -> tuple[HoVerNet, LoadedWeights]:
    """Load HoVer-Net weights from any supported file; returns the network (eval mode, CPU) and what was loaded.

    ``mode`` ("fast" | "original") and ``num_types`` (0 = no type branch) are checks, not overrides: when given
    and different from the file, a WeightsError says what the file contains. The network's forward takes NCHW
    RGB in 0..255 and returns logits ``{"tp"?, "np", "hv"}`` like the reference. The record's ``config`` holds
    the constructor arguments (``mode``, ``num_types``, widths), ``mpp`` the input scale the model expects.
    """
    import torch

    from histostain.segmentation.hovernet import HoVerNet

    file = Path(path)
    state, fmt, payload = _read(file)
    config = infer_config(state, file)
    _check_request(config, mode, num_types, file)
    try:
        model = HoVerNet(**config)
    except ValueError as exc:
        raise WeightsError(f"{file}: tensor shapes do not describe a HoVer-Net ({exc})") from exc

    expected = model.state_dict()
    filled = dict(state)
    for key, value in expected.items():
        # converted TF releases carry no BN counters; the buffer is not part of the function
        if key not in filled and (key.endswith("num_batches_tracked") or key == "upsample2x.unpool_mat"):
            filled[key] = value
    missing = [key for key in expected if key not in filled]
    unexpected = [key for key in filled if key not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing ({_key_sample(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected ({_key_sample(unexpected)})")
        raise WeightsError(
            f"{file}: keys do not match HoVer-Net {_describe(config['mode'], config['num_types'])}: " + "; ".join(parts)
        )
    wrong = [key for key, value in expected.items() if tuple(filled[key].shape) != tuple(value.shape)]
    if wrong:
        key = wrong[0]
        raise WeightsError(
            f"{file}: {len(wrong)} tensors have unexpected shapes, e.g. {key} is {tuple(filled[key].shape)}, "
            f"expected {tuple(expected[key].shape)}"
        )
    with torch.no_grad():
        model.load_state_dict(filled, strict=True)
    model.eval()
    mpp, names = _model_facts(fmt, config, payload)
    info = LoadedWeights(
        path=file, format=fmt, arch=ARCH, config=dict(config), sha256=sha256_file(file), mpp=mpp, class_names=names
    )
    log.info("loaded HoVer-Net %s from %s (%s format)", describe_hovernet(config), file, fmt)
    return model, info


def save_hovernet(model: HoVerNet, path: str | os.PathLike[str], **extra: Any) -> Path:
    """Write ``model`` as a histostain checkpoint (atomic) that :func:`load_hovernet` reads back."""
    from histostain.runtime.checkpoint import make_checkpoint, save_checkpoint

    state = {key: value.detach().cpu() for key, value in model.state_dict().items()}
    return save_checkpoint(path, make_checkpoint(ARCH, state, model.config(), **extra))


__all__ = [
    "FORMATS",
    "describe_hovernet",
    "infer_config",
    "load_hovernet",
    "save_hovernet",
]
