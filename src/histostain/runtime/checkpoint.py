"""Checkpoints: written atomically, read only through torch's safe (weights-only) unpickler.

A histostain checkpoint is a plain dict of tensors and plain values::

    {"format": "histostain", "version": 1, "arch": str, "config": dict, "state_dict": dict,
     "optimizer": ..., "scaler": ..., "epoch": int, "step": int, ...}

Anything else that reaches :func:`load_checkpoint` (a truncated file, a file that is not a checkpoint, a pickle
that would run code) becomes a :class:`~histostain.errors.WeightsError`; nothing in it is executed.

The weights plumbing every model loader shares lives here too: one state-dict cleaner
(:func:`clean_state_dict`), one header check for our own checkpoints (:func:`check_histostain_header`), one
file digest (:func:`sha256_file`) and the one record every loader returns beside its model
(:class:`LoadedWeights`), which the weights registry fills from its model cards.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from histostain.errors import WeightsError
from histostain.io.atomic import atomic_write

FORMAT_NAME = "histostain"
FORMAT_VERSION = 1
WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DataParallel / DDP, torch.compile


@dataclass
class LoadedWeights:
    """What a loader read, beside the model it built: the one record shape of every model loader.

    ``format``: the container the file was in (``histostain``, ``reference``, ``seed``, ``official``,
    ``tiatoolbox``, ``pytorch-fid``); ``arch`` and ``config``: the architecture and the constructor arguments
    that rebuild the network; ``sha256``: the file's digest (recorded with every output made with it);
    ``mpp``: the input scale in micrometres per pixel the model expects, when known; ``class_names``: output
    class code -> name, when known; ``direction``/``entry``: for stain translators, which translation and which
    network of a multi-network checkpoint; ``notes``: what the loader adapted (stripped prefixes, ...).
    """

    path: Path
    format: str
    arch: str
    config: dict[str, Any] = field(default_factory=dict)
    sha256: str = ""
    mpp: float | None = None
    class_names: dict[int, str] | None = None
    direction: str | None = None
    entry: str | None = None
    notes: list[str] = field(default_factory=list)

    def describe(self) -> str:
        """E.g. ``reference G_A cyclegan_generator from latest_net_G_A.pth``."""
        which = f" {self.entry}" if self.entry else ""
        return f"{self.format}{which} {self.arch} from {self.path.name}"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready record (paths as strings, class codes as string keys)."""
        return {
            "path": str(self.path),
            "format": self.format,
            "arch": self.arch,
            "config": dict(self.config),
            "sha256": self.sha256,
            "mpp": self.mpp,
            "class_names": None if self.class_names is None else {str(k): v for k, v in self.class_names.items()},
            "direction": self.direction,
            "entry": self.entry,
            "notes": list(self.notes),
        }

    def record(self, model: Mapping[str, Any] | None = None, *, absolute: bool = True) -> dict[str, Any]:
        """What a run record keeps: :meth:`to_dict` with the path made absolute (a command line does not
        record the working directory) and, under ``model``, the registry model or run the file came from."""
        data = self.to_dict()
        if absolute:
            data["path"] = str(Path(data["path"]).resolve())
        if model is not None:
            data["model"] = dict(model)
        return data


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks (recorded with every output, so the weights are traceable)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def clean_state_dict(state_dict: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Strip wrapper prefixes (``module.``, ``_orig_mod.``, in any nesting) that every key carries.

    Returns the cleaned dict and the prefixes removed, in order. A prefix only some keys carry is part of
    those keys' names and stays.
    """
    cleaned = {str(key): value for key, value in state_dict.items()}
    removed: list[str] = []
    changed = True
    while changed and cleaned:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if all(key.startswith(prefix) for key in cleaned):
                cleaned = {key[len(prefix) :]: value for key, value in cleaned.items()}
                removed.append(prefix)
                changed = True
    return cleaned, removed


def is_histostain_checkpoint(payload: Any) -> bool:
    """Whether a loaded object is one of our checkpoints (a dict with ``format="histostain"``)."""
    return isinstance(payload, Mapping) and payload.get("format") == FORMAT_NAME


def check_histostain_header(
    payload: Any, path: str | os.PathLike[str], arch: str | tuple[str, ...] | None = None
) -> dict[str, Any]:
    """Check that ``payload`` is a histostain checkpoint this version can read (and of ``arch``, when given)."""
    if not is_histostain_checkpoint(payload):
        found = sorted(map(str, payload))[:6] if isinstance(payload, Mapping) else type(payload).__name__
        raise WeightsError(
            f"{path} is not a histostain checkpoint (expected a dict with format='histostain', found {found})"
        )
    if int(payload.get("version", 0)) > FORMAT_VERSION:
        raise WeightsError(
            f"{path} was written by a newer histostain (checkpoint version {payload.get('version')})",
            hint="upgrade histostain",
        )
    allowed = (arch,) if isinstance(arch, str) else arch
    if allowed is not None and payload.get("arch") not in allowed:
        expected = " or ".join(repr(name) for name in allowed)
        raise WeightsError(f"{path} holds a {payload.get('arch')!r} model, expected {expected}")
    return dict(payload)


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
        raise WeightsError(f"weights file not found: {file}", hint="check the path (weights are read from disk only)")
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
    return check_histostain_header(load_checkpoint(path), path, arch)
