"""The facts `histostain doctor` reports: versions, devices, precision decision, threads, cache, settings."""

from __future__ import annotations

import platform
import sys
from typing import Any

from histostain import __version__
from histostain.runtime.device import Capabilities, plan_device, probe_capabilities
from histostain.settings import ResolvedSettings


def environment_report(resolved: ResolvedSettings, caps: Capabilities | None = None) -> dict[str, Any]:
    """Collect a JSON-serialisable report of the runtime environment (imports torch)."""
    import torch
    import torchvision

    caps = caps if caps is not None else probe_capabilities()
    settings = resolved.settings
    plan = plan_device(settings.device, settings.precision, caps)
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
        "resolved": {
            "device": plan.device,
            "device_reason": plan.device_reason,
            "precision": plan.precision,
            "precision_reason": plan.precision_reason,
            "autocast": plan.autocast_enabled,
            "grad_scaler": plan.needs_grad_scaler,
            "channels_last": plan.channels_last,
            "warnings": list(plan.warnings),
        },
        "cache_dir": str(settings.home),
        "config_file": str(resolved.config_file) if resolved.config_file else None,
        "settings": {
            name: {"value": _plain(getattr(settings, name)), "source": resolved.sources.get(name, "default")}
            for name in type(settings).model_fields
        },
    }


def _plain(value: Any) -> Any:
    return value if isinstance(value, (str, int, float, bool)) or value is None else str(value)
