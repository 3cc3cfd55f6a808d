"""The FID-Inception network: the TF "2015-12-05" Inception-v3 graph as pytorch-fid ports it.

FID is only comparable between papers when it is computed with exactly this network and these weights: the
published ``pt_inception-2015-12-05-6726825d.pth`` (ported from TensorFlow's ``inception-2015-12-05.tgz``) on
torchvision's Inception-v3 skeleton, with four kinds of blocks changed to match the TF graph:

* ``Mixed_5b/5c/5d`` (block A), ``Mixed_6b..6e`` (block C) and ``Mixed_7b`` (block E_1): the pool branch
  averages with ``count_include_pad=False`` (TF's ``SAME`` average pooling ignores the padding);
* ``Mixed_7c`` (block E_2): the pool branch is a **max**-pool (a quirk of the TF graph).

Everything else is torchvision's ``BasicConv2d`` (bias-free conv, BatchNorm eps 1e-3, ReLU). The parameter and
buffer names are torchvision's, so the published file (566 entries, ``fc`` 1008 x 2048 included) loads
strictly. The forward pass returns the 2048-d "pool3" features; ``fc`` is loaded but never used.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.models.inception import (
    BasicConv2d,
    Inception3,
    InceptionA,
    InceptionAux,
    InceptionB,
    InceptionC,
    InceptionD,
    InceptionE,
)

from histostain.errors import WeightsError
from histostain.metrics.defaults import FID_MODEL_NAME, FID_WEIGHTS_FILENAME, FID_WEIGHTS_SHA256_PREFIX
from histostain.runtime.checkpoint import LoadedWeights, load_checkpoint, sha256_file

log = logging.getLogger(__name__)

FID_WEIGHTS_URL = f"https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/{FID_WEIGHTS_FILENAME}"
FID_INPUT_SIZE = 299
FID_FEATURE_DIM = 2048
FID_NUM_CLASSES = 1008  # the TF graph's 1008-way softmax (1000 classes + 8 unused)


def _pool_avg(x: Tensor) -> Tensor:
    """3x3 stride-1 average pool that, like TF's SAME pooling, divides by the number of real pixels."""
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class FIDInceptionA(InceptionA):
    """Block A (``Mixed_5b/5c/5d``) with the TF average pool in the pool branch."""

    def forward(self, x: Tensor) -> Tensor:
        branch1x1 = self.branch1x1(x)
        branch5x5 = self.branch5x5_2(self.branch5x5_1(x))
        branch3x3dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        branch_pool = self.branch_pool(_pool_avg(x))
        return torch.cat([branch1x1, branch5x5, branch3x3dbl, branch_pool], 1)


class FIDInceptionC(InceptionC):
    """Block C (``Mixed_6b..6e``) with the TF average pool in the pool branch."""

    def forward(self, x: Tensor) -> Tensor:
        branch1x1 = self.branch1x1(x)
        branch7x7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        branch7x7dbl = self.branch7x7dbl_1(x)
        branch7x7dbl = self.branch7x7dbl_3(self.branch7x7dbl_2(branch7x7dbl))
        branch7x7dbl = self.branch7x7dbl_5(self.branch7x7dbl_4(branch7x7dbl))
        branch_pool = self.branch_pool(_pool_avg(x))
        return torch.cat([branch1x1, branch7x7, branch7x7dbl, branch_pool], 1)


class _FIDInceptionE(InceptionE):
    """Block E whose pool branch pools with the subclass's ``_pool`` (E_1: TF average, E_2: max)."""

    _pool: Callable[[Tensor], Tensor]

    def forward(self, x: Tensor) -> Tensor:
        branch1x1 = self.branch1x1(x)
        branch3x3 = self.branch3x3_1(x)
        branch3x3 = torch.cat([self.branch3x3_2a(branch3x3), self.branch3x3_2b(branch3x3)], 1)
        branch3x3dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        branch3x3dbl = torch.cat([self.branch3x3dbl_3a(branch3x3dbl), self.branch3x3dbl_3b(branch3x3dbl)], 1)
        branch_pool = self.branch_pool(self._pool(x))
        return torch.cat([branch1x1, branch3x3, branch3x3dbl, branch_pool], 1)


class FIDInceptionE1(_FIDInceptionE):
    """Block E_1 (``Mixed_7b``): TF average pool in the pool branch."""

    def _pool(self, x: Tensor) -> Tensor:
        return _pool_avg(x)


class FIDInceptionE2(_FIDInceptionE):
    """Block E_2 (``Mixed_7c``): the TF graph max-pools here, so the port must too."""

    def _pool(self, x: Tensor) -> Tensor:
        return F.max_pool2d(x, kernel_size=3, stride=1, padding=1)


class FIDInceptionV3(Inception3):
    """Inception-v3 with the FID blocks, under torchvision's parameter names; ``forward`` -> pool3 features.

    Built like ``torchvision.models.inception_v3(num_classes=1008, aux_logits=False, init_weights=False,
    weights=None)`` (no ImageNet input transform, no auxiliary head, default PyTorch initialisation, which is
    overwritten by :func:`load_fid_inception`).
    """

    def __init__(self) -> None:
        blocks = [BasicConv2d, FIDInceptionA, InceptionB, FIDInceptionC, InceptionD, InceptionE, InceptionAux]
        super().__init__(
            num_classes=FID_NUM_CLASSES,
            aux_logits=False,
            transform_input=False,
            inception_blocks=blocks,
            init_weights=False,
        )
        self.Mixed_7b = FIDInceptionE1(1280)
        self.Mixed_7c = FIDInceptionE2(2048)

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        """``x``: float N x 3 x H x W in [0, 1], any H, W. Returns N x 2048 pool3 features.

        As pytorch-fid (``resize_input=True, normalize_input=True``): bilinear resize to 299 x 299 with
        ``align_corners=False`` and no antialiasing (also when shrinking), then ``2x - 1``.
        """
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected an N x 3 x H x W batch, got shape {tuple(x.shape)}")
        if x.shape[-2:] != (FID_INPUT_SIZE, FID_INPUT_SIZE):
            size = (FID_INPUT_SIZE, FID_INPUT_SIZE)
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=False)
        x = 2 * x - 1
        x = self.Conv2d_1a_3x3(x)
        x = self.Conv2d_2a_3x3(x)
        x = self.Conv2d_2b_3x3(x)
        x = self.maxpool1(x)
        x = self.Conv2d_3b_1x1(x)
        x = self.Conv2d_4a_3x3(x)
        x = self.maxpool2(x)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c):
            x = block(x)
        for block in (self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
            x = block(x)
        return torch.flatten(self.avgpool(x), 1)


# ------------------------------------------------------------------------------------------------- weights


def weights_missing_error(path: Path, *others: Path) -> WeightsError:
    """The one-line message for absent weights: where to get the file and where it is looked for."""
    where = " or ".join(str(p) for p in (path, *others))
    if others:  # the weights cache's lookup: tell the user how to fill the cache
        return WeightsError(
            f"FID-Inception weights not found at {where}",
            hint=f"run `histostain weights download {FID_MODEL_NAME}` (or download {FID_WEIGHTS_URL} and run "
            f"`histostain weights import {FID_MODEL_NAME} FILE`), or pass --weights FILE",
        )
    return WeightsError(
        f"FID-Inception weights not found at {where}",
        hint=f"download {FID_WEIGHTS_URL} and save it as {path}, or pass --weights FILE",
    )


def fid_weights_candidates(weights_dir: Path) -> list[Path]:
    """Where the FID-Inception file is looked for in a weights folder, in order: the weights cache's
    ``<weights_dir>/fid-inception/<file>`` (``histostain weights download|import fid-inception``), then the flat
    ``<weights_dir>/<file>`` of earlier versions."""
    folder = Path(weights_dir).expanduser()
    return [folder / FID_MODEL_NAME / FID_WEIGHTS_FILENAME, folder / FID_WEIGHTS_FILENAME]


def find_fid_weights(weights_dir: Path) -> Path | None:
    """The first of :func:`fid_weights_candidates` that exists, or None."""
    return next((path for path in fid_weights_candidates(weights_dir) if path.is_file()), None)


def is_published_fid_weights(sha256: str) -> bool:
    """Whether a weights file is the published FID-Inception file, by its SHA-256.

    The file name carries the first 8 hex digits of the file's SHA-256 (torch hub's convention), so a file of
    the right layout with other values (a randomly initialised network, a fine-tuned one) is recognised and its
    FID flagged as not comparable with published numbers, instead of being silently reported.
    """
    return sha256.lower().startswith(FID_WEIGHTS_SHA256_PREFIX)


def resolve_weights(weights: Path | None = None, weights_dir: Path | None = None) -> Path:
    """``weights`` if given, else the published file in ``weights_dir`` (default: the settings' weights folder,
    ``HISTOSTAIN_HOME/weights``): the cache's ``fid-inception/<file>``, else the flat ``<file>`` of earlier
    versions (:func:`fid_weights_candidates`); never any other network's weights. Missing weights are a one-line
    error."""
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise weights_missing_error(path)
        return path
    if weights_dir is None:
        from histostain.settings import load_settings

        weights_dir = load_settings().settings.weights_dir
    found = find_fid_weights(Path(weights_dir))
    if found is None:
        raise weights_missing_error(*fid_weights_candidates(Path(weights_dir)))
    return found


def _describe_mismatch(path: Path, state: Mapping[str, Any], expected: Mapping[str, Tensor]) -> str:
    """A short account of why ``state`` is not the FID-Inception state dict (first few names only)."""
    found = set(state)
    missing = sorted(set(expected) - found)
    unexpected = sorted(found - set(expected))
    if any(key.startswith("blocks.") for key in unexpected):
        return (
            f"{path} holds pytorch-fid's InceptionV3 wrapper state dict ({len(found)} keys, 'blocks.*' names), "
            f"not the published weight file with torchvision names"
        )
    if "state_dict" in found or "format" in found:
        return f"{path} is a training checkpoint (keys {sorted(found)[:6]}), not the FID-Inception weight file"
    if missing or unexpected:
        parts = [f"{path} is not the FID-Inception weight file: {len(found)} keys (expected {len(expected)})"]
        if missing:
            parts.append(f"missing {len(missing)} e.g. {missing[:3]}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} e.g. {unexpected[:3]}")
        return "; ".join(parts)
    for key, tensor in expected.items():
        value = state[key]
        if not isinstance(value, Tensor) or tuple(value.shape) != tuple(tensor.shape):
            shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
            return (
                f"{path} is not the FID-Inception weight file: {key} has shape {shape}, expected {tuple(tensor.shape)}"
            )
    return f"{path} does not match the FID-Inception network"


def load_fid_inception(
    weights: Path | None = None, weights_dir: Path | None = None
) -> tuple[FIDInceptionV3, LoadedWeights]:
    """Find the weights (:func:`resolve_weights`), build the network and load them strictly (eval, no gradients).

    Anything that is not exactly the 566 torchvision-named tensors of the published file raises a one-line
    :class:`WeightsError` saying what was found instead. Returns the network and what was loaded.
    """
    path = resolve_weights(weights, weights_dir)
    state = load_checkpoint(path)
    with torch.device("meta"):  # no point initialising 24M parameters that are overwritten at once
        model = FIDInceptionV3()
    expected = model.state_dict()
    if not isinstance(state, Mapping):
        raise WeightsError(f"{path} is not the FID-Inception weight file (it holds a {type(state).__name__})")
    problem = None
    if set(state) != set(expected) or any(
        not isinstance(state[key], Tensor) or state[key].shape != tensor.shape for key, tensor in expected.items()
    ):
        problem = _describe_mismatch(path, state, expected)
    if problem is not None:
        raise WeightsError(problem, hint=f"use {FID_WEIGHTS_FILENAME} from {FID_WEIGHTS_URL}")
    state = {key: value.float() if value.is_floating_point() else value for key, value in state.items()}
    model.load_state_dict(state, strict=True, assign=True)
    model.eval()
    model.requires_grad_(False)
    log.debug("loaded FID-Inception weights from %s", path)
    record = LoadedWeights(
        path=path,
        format="pytorch-fid",
        arch="fid_inception_v3",
        config={"input_size": FID_INPUT_SIZE, "feature_dim": FID_FEATURE_DIM},
        sha256=sha256_file(path),
    )
    return model, record


__all__ = [
    "FID_FEATURE_DIM",
    "FID_INPUT_SIZE",
    "FID_NUM_CLASSES",
    "FID_WEIGHTS_FILENAME",
    "FID_WEIGHTS_SHA256_PREFIX",
    "FID_WEIGHTS_URL",
    "FIDInceptionA",
    "FIDInceptionC",
    "FIDInceptionE1",
    "FIDInceptionE2",
    "FIDInceptionV3",
    "fid_weights_candidates",
    "find_fid_weights",
    "is_published_fid_weights",
    "load_fid_inception",
    "resolve_weights",
    "weights_missing_error",
]
