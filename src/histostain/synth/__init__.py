"""Procedural H&E / IHC tissue with exact ground truth, and writers for the published dataset layouts.

``generate_tile(seed, size)`` returns one paired tile (:class:`SynthTile`); ``write_dataset(layout, out, n, ...)``
writes a whole dataset in the BCI, PanNuke, EndoNuke or a plain tiles layout and returns a summary.
"""

from __future__ import annotations

from histostain.synth.constants import NUCLEUS_TYPES
from histostain.synth.generate import SynthNucleus, SynthTile, generate_tile, tile_seeds

__all__ = [
    "LAYOUTS",
    "NUCLEUS_TYPES",
    "SynthNucleus",
    "SynthSummary",
    "SynthTile",
    "generate_tile",
    "tile_seeds",
    "write_dataset",
]


def __getattr__(name: str):  # the writers are imported on first use
    if name in ("write_dataset", "SynthSummary", "LAYOUTS"):
        from histostain.synth import dataset

        return getattr(dataset, name)
    raise AttributeError(name)
