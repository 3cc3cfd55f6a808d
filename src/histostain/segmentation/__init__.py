"""Nuclei segmentation: HoVer-Net (published weights, targets, losses).

Attributes are resolved lazily so that importing the package does not import torch until a name is used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from histostain.segmentation.compat import describe_hovernet, load_hovernet
    from histostain.segmentation.hovernet import HoVerNet

_LAZY = {
    "HoVerNet": "histostain.segmentation.hovernet",
    "describe_hovernet": "histostain.segmentation.compat",
    "load_hovernet": "histostain.segmentation.compat",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["HoVerNet", "describe_hovernet", "load_hovernet"]
