"""Writers for the published on-disk layouts (one module per layout)."""

from __future__ import annotations

from histostain.synth.writers.base import LayoutWriter, TileSpec
from histostain.synth.writers.bci import BCIWriter
from histostain.synth.writers.endonuke import EndoNukeWriter
from histostain.synth.writers.pannuke import PanNukeWriter
from histostain.synth.writers.tiles import TilesWriter

WRITERS: dict[str, type[LayoutWriter]] = {
    "bci": BCIWriter,
    "pannuke": PanNukeWriter,
    "endonuke": EndoNukeWriter,
    "tiles": TilesWriter,
}

__all__ = ["WRITERS", "LayoutWriter", "TileSpec"]
