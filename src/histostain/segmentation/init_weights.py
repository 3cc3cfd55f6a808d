"""Where HoVer-Net training starts: from scratch, a full HoVer-Net checkpoint, or an ImageNet encoder file.

Every container :func:`~histostain.segmentation.compat.load_hovernet` reads is accepted (official ``{"desc": ...}``,
TIAToolbox, histostain), plus encoder-only files with HoVer-Net's encoder names (the reference starts phase 1
from ``ImageNet-ResNet50-Preact_pytorch.tar``). What was loaded is an :class:`InitReport`, recorded in the run's
config.toml and in every checkpoint.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from histostain.errors import WeightsError
from histostain.segmentation.hovernet import HoVerNet

log = logging.getLogger(__name__)

ARCH = "hovernet"


@dataclass
class InitReport:
    """What ``init`` loaded into the network (``kind``: scratch | hovernet | encoder)."""

    kind: str
    path: str = ""
    matched: int = 0
    missing: int = 0
    unexpected: int = 0
    skipped: list[str] = field(default_factory=list)

    def describe(self) -> str:
        if self.kind == "scratch":
            return "from scratch"
        text = f"{self.kind} weights from {self.path}: {self.matched} tensors loaded, {self.missing} kept initial"
        if self.unexpected:
            text += f", {self.unexpected} unused"
        if self.skipped:
            text += f" (re-initialised: {', '.join(self.skipped)})"
        return text

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "path": self.path,
            "matched": self.matched,
            "missing": self.missing,
            "unexpected": self.unexpected,
            "skipped": list(self.skipped),
        }


def _init_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of an init file: official ``{"desc": ...}``, histostain ``state_dict`` or a flat state dict."""
    from histostain.runtime.checkpoint import (
        check_histostain_header,
        clean_state_dict,
        is_histostain_checkpoint,
        load_checkpoint,
    )

    payload = load_checkpoint(path)
    if not isinstance(payload, Mapping):
        raise WeightsError(f"{path} holds a {type(payload).__name__}, not HoVer-Net or ResNet-50 weights")
    if is_histostain_checkpoint(payload):
        state = check_histostain_header(payload, path, ARCH).get("state_dict")
    else:
        state = payload.get("desc", payload)
    if not isinstance(state, Mapping):
        raise WeightsError(f"{path}: no state dict found (expected 'desc', 'state_dict' or a flat dict of tensors)")
    return clean_state_dict({str(k): v for k, v in state.items() if torch.is_tensor(v)})[0]


def load_init_weights(model: HoVerNet, init: str) -> InitReport:
    """Initialise ``model`` from ``init`` ("scratch" or a file); shape conflicts are one-line WeightsErrors.

    * a full HoVer-Net (official ``.tar``, TIAToolbox ``.pth``, histostain checkpoint): every tensor must match,
      except the type head's last convolution when the number of types differs (it stays re-initialised);
    * an encoder-only file (the ImageNet pre-activation ResNet-50 the reference starts from, with HoVer-Net's
      encoder names ``conv0./.weight``, ``d0.units.0.conv1.weight``, ...): loaded non-strictly, counts reported.
    """
    if init.strip().lower() == "scratch":
        return InitReport("scratch")
    from histostain.segmentation.compat import infer_config

    path = Path(init).expanduser()
    state = _init_state_dict(path)
    if "conv0./.weight" not in state:
        sample = ", ".join(list(state)[:3]) or "none"
        raise WeightsError(
            f"{path} holds neither HoVer-Net nor pre-activation ResNet-50 encoder weights (keys {sample})",
            hint="init takes 'scratch', a HoVer-Net checkpoint, or an encoder file with HoVer-Net key names",
        )
    full = "decoder.np.u3.conva.weight" in state
    expected = model.state_dict()
    skipped: list[str] = []
    loadable: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key not in expected:
            continue
        if tuple(value.shape) == tuple(expected[key].shape):
            loadable[key] = value
        elif key.startswith("decoder.tp.u0.conv."):
            skipped.append(key)
        else:
            found = ""
            if full:
                file_config = infer_config(state, path)
                found = f"this checkpoint is {file_config['mode']} mode with {file_config['num_types']} types, widths "
                found += f"{file_config['encoder_width']:g}/{file_config['decoder_width']:g}; "
            raise WeightsError(
                f"{path}: {found}{key} is {tuple(value.shape)}, the network being trained needs "
                f"{tuple(expected[key].shape)}",
                hint="train with the checkpoint's mode and widths (--mode, --encoder-width, --decoder-width)",
            )
    if not loadable:
        raise WeightsError(f"{path}: no tensor matches the network's names")
    missing = [key for key in expected if key not in loadable]
    unexpected = [key for key in state if key not in expected]
    with torch.no_grad():
        model.load_state_dict(loadable, strict=False)
    report = InitReport(
        "hovernet" if full else "encoder", str(path), len(loadable), len(missing), len(unexpected), skipped
    )
    if skipped:
        log.warning("%s: the type head's last layer does not fit %s types; it is re-initialised", path, model.num_types)
    log.info("init: %s", report.describe())
    return report


__all__ = ["InitReport", "load_init_weights"]
