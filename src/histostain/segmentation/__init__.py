"""Nuclei segmentation: HoVer-Net (published weights, targets, losses, post-processing).

Attributes are resolved lazily so that importing the package does not import torch until a name is used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from histostain.segmentation.compat import describe_hovernet, load_hovernet
    from histostain.segmentation.hovernet import HoVerNet
    from histostain.segmentation.postprocess import instances_from_hovernet_maps, nuclei_from_labels
    from histostain.segmentation.postprocess_pool import PostprocessPool

_LAZY = {
    "HoVerNet": "histostain.segmentation.hovernet",
    "describe_hovernet": "histostain.segmentation.compat",
    "load_hovernet": "histostain.segmentation.compat",
    "instances_from_hovernet_maps": "histostain.segmentation.postprocess",
    "nuclei_from_labels": "histostain.segmentation.postprocess",
    "PostprocessPool": "histostain.segmentation.postprocess_pool",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "HoVerNet",
    "PostprocessPool",
    "describe_hovernet",
    "instances_from_hovernet_maps",
    "load_hovernet",
    "nuclei_from_labels",
]
