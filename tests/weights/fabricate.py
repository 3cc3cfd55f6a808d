"""Weights files as users download them, shared by the weights tests and the CLI tests."""

from __future__ import annotations

from pathlib import Path

import torch

from histostain.segmentation.hovernet import HoVerNet
from histostain.translation.compat import seed_config, seed_key_map
from histostain.translation.cyclegan import build_generator


def tiny_hovernet(num_types: int = 6, seed: int = 0) -> HoVerNet:
    """A HoVer-Net fast of the PanNuke layout (6 type outputs by default) at a test width."""
    torch.manual_seed(seed)
    return HoVerNet(
        "fast", num_types, encoder_width=1 / 16, units=[1, 1, 1, 1], decoder_width=0.125, decoder_units=[1, 1]
    )


def save_seed_generator(path: Path) -> Path:
    """The seed project's ``generator_HE.tar``: ``{"epoch", "state_dict", "optimizer"}`` under the seed's key
    names (the reference layout renamed by the inverse of ``seed_key_map``)."""
    model = build_generator(seed_config(n_blocks=1, ngf=2))
    inverse = {target: source for source, target in seed_key_map(1).items()}
    state = {}
    for key, value in model.state_dict().items():
        prefix, _, leaf = key.rpartition(".")
        state[f"{inverse.get(prefix, prefix)}.{leaf}"] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"epoch": 200, "state_dict": state, "optimizer": {}}, path)
    return path
