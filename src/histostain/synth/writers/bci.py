"""BCI layout: ``BCI_dataset/{HE,IHC}/{train,test}/NNNNN_<split>_<HER2>.png``, the same name in HE and IHC."""

from __future__ import annotations

from histostain.io.images import write_image
from histostain.synth.constants import DEFAULT_SIZES
from histostain.synth.generate import SynthTile
from histostain.synth.writers.base import LayoutWriter, TileSpec
from histostain.vocabulary import BCI_HER2_LEVELS

BCI_SIZE = int(DEFAULT_SIZES["bci"] or 1024)  # the published 1024 x 1024 images

ROOT = "BCI_dataset"


def split_of(index: int, n: int) -> str:
    """Every fifth tile (index % 5 == 4) is a test tile; a run of 2..4 tiles puts its last tile in test."""
    if index % 5 == 4 or (2 <= n < 5 and index == n - 1):
        return "test"
    return "train"


class BCIWriter(LayoutWriter):
    name = "bci"

    def plan(self) -> list[TileSpec]:
        specs = []
        numbers = {"train": 0, "test": 0}
        for i in range(self.n):
            split = split_of(i, self.n)
            her2 = i % 4  # all four levels appear once the run has four tiles
            name = f"{numbers[split]:05d}_{split}_{BCI_HER2_LEVELS[her2]}.png"
            numbers[split] += 1
            kind = "tumour" if i % 4 != 3 else None  # HER2 slides are mostly tumour
            specs.append(TileSpec(i, self.size or BCI_SIZE, her2=her2, kind=kind, extra={"split": split, "name": name}))
        return specs

    def add(self, spec: TileSpec, tile: SynthTile) -> None:
        split, name = spec.extra["split"], spec.extra["name"]
        write_image(self.root / ROOT / "HE" / split / name, tile.he)
        write_image(self.root / ROOT / "IHC" / split / name, tile.ihc)
        self.files_written += 2

    def close(self) -> None:
        self.write_text(
            f"{ROOT}/README.md",
            "Synthetic BCI-layout dataset written by `histostain synth --layout bci`.\n\n"
            "HE/{train,test} and IHC/{train,test} hold paired tiles with the same file name "
            "`<number>_<split>_<HER2 level>.png`; the level is one of 0, 1+, 2+, 3+.\n",
        )
