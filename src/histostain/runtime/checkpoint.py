"""Checkpoints: written atomically, read only through torch's safe (weights-only) unpickler.

A histostain checkpoint is a plain dict of tensors and plain values::

    {"format": "histostain", "version": 1, "arch": str, "config": dict, "state_dict": dict,
     "optimizer": ..., "scaler": ..., "epoch": int, "step": int, ...}

Anything else that reaches :func:`load_checkpoint` (a truncated file, a file that is not a checkpoint, a pickle
that would run code) becomes a :class:`~histostain.errors.WeightsError`; nothing in it is executed.
"""

from __future__ import annotations

import os
import pickle
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from histostain.errors import WeightsError
from histostain.io.atomic import atomic_write

FORMAT_NAME = "histostain"
FORMAT_VERSION = 1


def save_checkpoint(path: str | os.PathLike[str], payload: Mapping[str, Any]) -> Path:
    """Save a checkpoint dict atomically (temp file + ``os.replace``)."""
    import torch

    return atomic_write(path, lambda handle: torch.save(dict(payload), handle))


def make_checkpoint(arch: str, state_dict: Mapping[str, Any], config: Mapping[str, Any], **extra: Any) -> dict:
    """Build the standard histostain checkpoint dict (format, version, arch, config, state_dict, ...)."""
    from histostain import __version__

    payload: dict[str, Any] = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "histostain_version": __version__,
        "arch": arch,
        "config": dict(config),
        "state_dict": dict(state_dict),
    }
    payload.update(extra)
    return payload


def load_checkpoint(path: str | os.PathLike[str], map_location: str = "cpu") -> Any:
    """Load any torch-saved file with ``weights_only=True``; every failure is a one-line WeightsError."""
    import torch

    file = Path(path)
    if not file.is_file():
        raise WeightsError(f"weights file not found: {file}", hint="check the path or run `histostain doctor`")
    if file.stat().st_size == 0:
        raise WeightsError(f"{file} is empty (0 bytes)", hint="the download or copy was interrupted; fetch it again")
    with file.open("rb") as handle:
        head = handle.read(8)
    # torch.save writes a zip (PK..); older torch and plain pickles start with the PROTO opcode 0x80
    if not (head.startswith(b"PK\x03\x04") or head.startswith(b"\x80")):
        raise WeightsError(
            f"{file} is not a PyTorch weights file (it starts with {head[:8]!r})",
            hint="pass the .pth/.pt/.tar checkpoint itself, not a text, JSON or image file",
        )
    try:
        with warnings.catch_warnings():
            # torch warns about non-default pickle protocols before refusing or loading; the outcome is what counts
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(file, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = str(exc).splitlines()[0] if str(exc) else "unpickling failed"
        if "global" in str(exc).lower():  # the weights-only unpickler met a class or function reference
            raise WeightsError(
                f"refused to load {file}: it contains pickled code or objects that are not plain weights",
                hint="only load checkpoints you trust; re-save them as a plain state dict",
            ) from exc
        raise WeightsError(f"{file} is not a readable checkpoint ({reason})") from exc
    except Exception as exc:  # any other failure inside the unpickler means the file is not a usable checkpoint
        reason = " ".join(str(exc).split())[:160] or type(exc).__name__
        raise WeightsError(
            f"{file} is not a readable checkpoint (truncated or not a torch file: {reason})",
            hint="the file may be incomplete; fetch or copy it again",
        ) from exc


def load_histostain_checkpoint(path: str | os.PathLike[str], arch: str | None = None) -> dict[str, Any]:
    """Load a checkpoint written by histostain and check its format (and architecture, when given)."""
    payload = load_checkpoint(path)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_NAME:
        found = sorted(payload)[:6] if isinstance(payload, dict) else type(payload).__name__
        raise WeightsError(
            f"{path} is not a histostain checkpoint (expected a dict with format='histostain', found {found})"
        )
    if int(payload.get("version", 0)) > FORMAT_VERSION:
        raise WeightsError(
            f"{path} was written by a newer histostain (checkpoint version {payload.get('version')})",
            hint="upgrade histostain",
        )
    if arch is not None and payload.get("arch") != arch:
        raise WeightsError(f"{path} holds a {payload.get('arch')!r} model, expected {arch!r}")
    return payload
