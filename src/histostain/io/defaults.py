"""Defaults of the tiled batch commands, in a module that imports nothing, so the CLI can show them.

``histostain --help`` (and ``histostain translate --help``) reads these without importing numpy or torch; the
services (``io.tiling.plan_image``, the Translator) take the same constants, so each default is written once.
"""

from __future__ import annotations

DEFAULT_TILE = 512  # largest tile side of a whole-image generator pass (pixels)
DEFAULT_OVERLAP = 64  # minimum pixels shared by neighbouring tiles, blended with raised-cosine ramps
DEFAULT_BATCH_SIZE = 4  # tiles per forward pass (CPU-friendly; raise it on a GPU)

# Image output formats of batch commands: the name a user types -> the file extension written.
IMAGE_FORMATS: dict[str, str] = {"png": ".png", "tif": ".tif", "tiff": ".tif"}
DEFAULT_IMAGE_FORMAT = "png"

__all__ = ["DEFAULT_BATCH_SIZE", "DEFAULT_IMAGE_FORMAT", "DEFAULT_OVERLAP", "DEFAULT_TILE", "IMAGE_FORMATS"]
