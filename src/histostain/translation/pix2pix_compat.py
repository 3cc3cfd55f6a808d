"""Reading reference pix2pix U-Net generators (``latest_net_G.pth`` of ``--netG unet_256`` / ``unet_128``).

A reference pix2pix generator file is a bare state dict of ``UnetGenerator`` (``model.model.0.weight``,
``model.model.1.model.2.running_mean`` ...; :mod:`histostain.translation.pix2pix`). This module recognises one
by its key names and reads the architecture off the tensors: the nesting depth gives ``num_downs``, the first
conv ``ngf`` and the input channels, the last transposed conv the output channels, and the keys the norm
(``running_mean`` entries: batch norm; a bias on the first conv and no statistics: instance norm; neither:
none). Dropout leaves no trace in the keys; the pix2pix default (on) is recorded, and is inactive at inference.

``compat.load_generator`` calls :func:`prepare_unet` and then loads the result strictly; a ``resnet_*blocks``
pix2pix generator (batch norm) has the CycleGAN layout and is read by ``compat``'s reference path.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from histostain.translation.pix2pix import MIN_NUM_DOWNS, UnetGenerator, build_unet, unet_arch

FIRST_CONV = "model.model.0.weight"
LAST_CONV = "model.model.3.weight"


def block_prefix(depth: int) -> str:
    """Key prefix of the ``nn.Sequential`` of the U-Net block ``depth`` levels in (0 = outermost)."""
    return "model.model" + (".1.model" if depth >= 1 else "") + ".3.model" * max(0, depth - 1)


def is_unet_generator(state_dict: Mapping[str, Any]) -> bool:
    """Whether a (wrapper-stripped) state dict has the reference UnetGenerator's key layout."""
    return FIRST_CONV in state_dict and LAST_CONV in state_dict and f"{block_prefix(1)}.1.weight" in state_dict


def infer_unet_config(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Architecture of a reference-layout U-Net read from its tensors (KeyError/ValueError when it is not one)."""
    first, last = state_dict[FIRST_CONV], state_dict[LAST_CONV]
    if not (torch.is_tensor(first) and torch.is_tensor(last) and first.dim() == 4 and last.dim() == 4):
        raise ValueError(f"{FIRST_CONV} / {LAST_CONV} are not 4-D conv weights")
    depth = 1
    while f"{block_prefix(depth + 1)}.1.weight" in state_dict:
        depth += 1
    num_downs = depth + 1  # the outermost block plus ``depth`` nested ones, each downsampling once
    if num_downs < MIN_NUM_DOWNS:
        raise ValueError(f"{num_downs} U-Net levels found, a reference U-Net has at least {MIN_NUM_DOWNS}")
    keys = [str(key) for key in state_dict]
    if any(key.endswith(".running_mean") for key in keys):
        norm = "batch"
    elif "model.model.0.bias" in state_dict:
        norm = "instance"
    else:
        norm = "none"
    return {
        "arch": unet_arch(num_downs),
        "input_nc": int(first.shape[1]),
        "output_nc": int(last.shape[1]),  # ConvTranspose2d weights are in x out x k x k
        "num_downs": num_downs,
        "ngf": int(first.shape[0]),
        "norm": norm,
        "use_dropout": True,
    }


def fill_batch_counters(
    model: UnetGenerator | torch.nn.Module, state_dict: Mapping[str, Any]
) -> tuple[dict[str, Any], int]:
    """Add the ``num_batches_tracked`` counters a file lacks (older files, or stripped ones) as 0.

    They only drive a cumulative-average momentum in training; the function of the network does not use them.
    """
    filled = dict(state_dict)
    count = 0
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.BatchNorm2d) and module.track_running_stats:
            key = f"{name}.num_batches_tracked" if name else "num_batches_tracked"
            if key not in filled:
                filled[key] = torch.tensor(0, dtype=torch.long)
                count += 1
    return filled, count


def prepare_unet(state_dict: Mapping[str, Any]) -> tuple[UnetGenerator, dict[str, Any], dict[str, Any], list[str]]:
    """``(model, config, state_dict to load strictly, notes)`` for a wrapper-stripped reference U-Net state dict."""
    config = infer_unet_config(state_dict)
    model = build_unet(config)
    filled, count = fill_batch_counters(model, state_dict)
    notes = [f"pix2pix {config['arch']} U-Net ({config['norm']} norm); dropout is not recorded in the weights"]
    if count:
        notes.append(f"added {count} missing batch-norm num_batches_tracked counters")
    return model, config, filled, notes


__all__ = ["block_prefix", "fill_batch_counters", "infer_unet_config", "is_unet_generator", "prepare_unet"]
