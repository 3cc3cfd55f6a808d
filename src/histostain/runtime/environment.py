"""The facts `histostain doctor` reports: versions, devices, precision decision, threads, cache, settings."""

from __future__ import annotations

import platform
import sys
from pathlib import Path
from typing import Any

from histostain import __version__
from histostain.errors import DeviceError
from histostain.runtime.device import Capabilities, plan_device, probe_capabilities
from histostain.settings import ResolvedSettings

PUBLISHED_FID_SHA256_PREFIX = "6726825d"  # torch hub naming: the file name carries its sha256's first 8 digits


def environment_report(resolved: ResolvedSettings, caps: Capabilities | None = None) -> dict[str, Any]:
    """Collect a JSON-serialisable report of the runtime environment (imports torch)."""
    import torch
    import torchvision

    caps = caps if caps is not None else probe_capabilities()
    settings = resolved.settings
    try:
        plan = plan_device(settings.device, settings.precision, caps)
        decision: dict[str, Any] = {
            "device": plan.device,
            "device_reason": plan.device_reason,
            "precision": plan.precision,
            "precision_reason": plan.precision_reason,
            "autocast": plan.autocast_enabled,
            "grad_scaler": plan.needs_grad_scaler,
            "channels_last": plan.channels_last,
            "warnings": list(plan.warnings),
        }
    except DeviceError as exc:  # the report is how the user finds out why: it says so instead of stopping
        decision = {
            "device": None,
            "precision": None,
            "warnings": [],
            "error": {"message": exc.message, "hint": exc.hint or "", "requested": settings.device},
        }
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {
        "histostain": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "cuda": {
            "available": caps.cuda_available,
            "built_with": torch.version.cuda,
            "cudnn": cudnn,
            "devices": [
                {"index": i, "name": name, "bf16": bf16}
                for i, (name, bf16) in enumerate(zip(caps.cuda_names, caps.cuda_bf16, strict=False))
            ],
        },
        "mps": {"available": caps.mps_available},
        "cpu": {"name": caps.cpu_name, "native_bf16": caps.cpu_bf16, "torch_threads": torch.get_num_threads()},
        "resolved": decision,
        "cache_dir": str(settings.home),
        "fid_weights": fid_weights_status(settings.weights_dir),
        "settings_file": str(resolved.settings_file) if resolved.settings_file else None,
        "settings": {
            name: {"value": _plain(getattr(settings, name)), "source": resolved.sources.get(name, "default")}
            for name in type(settings).model_fields
        },
    }


def _plain(value: Any) -> Any:
    return value if isinstance(value, (str, int, float, bool)) or value is None else str(value)


def fid_weights_status(weights_dir: Path) -> dict[str, Any]:
    """Whether the FID-Inception weights are where ``evaluate fid|kid`` look, and whether they are the published
    file (its SHA-256 starts with the digits in its name)."""
    from histostain.metrics.inception import fid_weights_candidates, find_fid_weights
    from histostain.runtime.checkpoint import sha256_file

    path = find_fid_weights(Path(weights_dir))  # the weights cache's fid-inception/, else the flat file
    if path is None:
        return {"path": str(fid_weights_candidates(Path(weights_dir))[0]), "present": False, "published": None}
    return {"path": str(path), "present": True, "published": sha256_file(path).startswith(PUBLISHED_FID_SHA256_PREFIX)}
