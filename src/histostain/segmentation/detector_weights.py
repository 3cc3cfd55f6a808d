"""Detector weights: read a ``train detector`` checkpoint or a compact exported file, and export one.

Both are histostain checkpoints (``format="histostain"``, ``arch="detector"``) read with
``torch.load(weights_only=True)``. A training checkpoint also holds optimiser state; the exported file
(:func:`export_detector`, what ``detector-endonuke`` ships) keeps only what inference needs: the weights in
float16 (half the size; they are cast back to float32 on load, and the packaged model's F1 is measured after
that round trip), the network's arguments, the class names, the scale (um/px), the score threshold chosen on
the validation split, the NMS window, the decoding's smoothing and the validation figures.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from histostain.errors import WeightsError
from histostain.runtime.checkpoint import LoadedWeights, check_histostain_header, load_checkpoint, sha256_file

if TYPE_CHECKING:
    from histostain.segmentation.detector import DetectorNet

ARCH = "detector"
MODEL_ARGS = ("in_channels", "num_classes", "width", "levels")
# what inference needs beside the weights; export keeps exactly these (when present)
INFERENCE_ENTRIES = (
    "model_config",
    "class_names",
    "mpp",
    "sigma_px",
    "target_radius_um",
    "threshold",
    "nms_kernel",
    "smooth_px",
)


@dataclass
class DetectorWeights:
    """What :func:`load_detector` read beside the network."""

    loaded: LoadedWeights
    threshold: float
    nms_kernel: int
    validation: dict[str, Any] = field(default_factory=dict)
    smooth_px: float = 0.0  # the decoding's Gaussian smoothing (checkpoints before it existed: none)

    @property
    def mpp(self) -> float | None:
        return self.loaded.mpp

    @property
    def class_names(self) -> dict[int, str]:
        return dict(self.loaded.class_names or {})


def _number(payload: dict[str, Any], key: str, path: Path) -> float:
    value = payload.get(key)
    if not isinstance(value, int | float) or isinstance(value, bool) or not value > 0:
        raise WeightsError(f"{path}: the detector checkpoint has no positive {key!r}", hint="re-export the weights")
    return float(value)


def load_detector(path: str | os.PathLike[str]) -> tuple[DetectorNet, DetectorWeights]:
    """The :class:`~histostain.segmentation.detector.DetectorNet` in ``path`` (eval mode, float32) and its facts;
    anything else is a one-line :class:`~histostain.errors.WeightsError`."""
    import torch

    from histostain.runtime.checkpoint import clean_state_dict
    from histostain.segmentation.detector import DetectorNet

    file = Path(path)
    payload = check_histostain_header(load_checkpoint(file), file, ARCH)
    args = payload.get("model_config")
    if not isinstance(args, dict) or any(not isinstance(args.get(key), int) for key in MODEL_ARGS):
        raise WeightsError(f"{file}: the detector checkpoint does not record its network ({', '.join(MODEL_ARGS)})")
    state = payload.get("state_dict")
    if not isinstance(state, dict) or not state:
        raise WeightsError(f"{file}: the detector checkpoint holds no weights (state_dict)")
    state, removed = clean_state_dict(state)
    net = DetectorNet(**{key: int(args[key]) for key in MODEL_ARGS})
    floats = {key: value.float() if torch.is_floating_point(value) else value for key, value in state.items()}
    try:
        net.load_state_dict(floats)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise WeightsError(f"{file}: the weights do not fit the recorded detector network ({first})") from exc
    net.eval()
    names = payload.get("class_names")
    class_names = {int(code): str(name) for code, name in names.items()} if isinstance(names, dict) else None
    mpp = _number(payload, "mpp", file)
    threshold = _number(payload, "threshold", file)
    loaded = LoadedWeights(
        path=file,
        format="histostain",
        arch=ARCH,
        config={key: int(args[key]) for key in MODEL_ARGS},
        sha256=sha256_file(file),
        mpp=mpp,
        class_names=class_names,
        notes=[f"stripped {prefix}" for prefix in removed],
    )
    validation = payload.get("validation") if isinstance(payload.get("validation"), dict) else {}
    nms = int(payload.get("nms_kernel", 3))
    smooth = payload.get("smooth_px", 0.0)
    smooth = float(smooth) if isinstance(smooth, int | float) and smooth >= 0 else 0.0
    return net, DetectorWeights(loaded, threshold, nms, dict(validation or {}), smooth)


def export_detector(
    checkpoint: str | os.PathLike[str], out: str | os.PathLike[str], *, validation: dict[str, Any] | None = None
) -> Path:
    """Write the compact inference file of a ``train detector`` checkpoint: float16 weights and the entries
    inference needs (``validation``: figures to record with them, e.g. the held-out F1). Atomic."""
    import torch

    from histostain.runtime.checkpoint import clean_state_dict, make_checkpoint, save_checkpoint

    source = Path(checkpoint)
    payload = check_histostain_header(load_checkpoint(source), source, ARCH)
    state, _ = clean_state_dict(payload["state_dict"])
    half = {key: value.half() if torch.is_floating_point(value) else value for key, value in state.items()}
    extra = {key: payload[key] for key in INFERENCE_ENTRIES if key in payload}
    extra["validation"] = dict(validation or {})
    extra["source_step"] = payload.get("step")
    config = payload.get("config") if isinstance(payload.get("config"), dict) else {}
    return save_checkpoint(out, make_checkpoint(ARCH, half, config, **extra))


__all__ = ["ARCH", "DetectorWeights", "export_detector", "load_detector"]
