"""Plain tiles layout: IHC tiles, the paired H&E tiles in a sibling folder, and the ground truth per tile.

```
DIR/ihc/tile_00000.png            IHC tiles (input of translate / segment / pipeline)
DIR/he/tile_00000.png             the paired H&E of the same layout
DIR/ground_truth/tile_00000.txt   centroids: one `x y type` line per nucleus (type 1..5, PanNuke codes)
DIR/ground_truth/tile_00000_inst.tif   int32 instance map (0 background, ids 1..n)
DIR/ground_truth/tile_00000_type.tif   uint8 type map (0 background, 1..5)
DIR/tiles.csv                     name, her2, tissue, kind, nuclei
```
"""

from __future__ import annotations

from histostain.io.annotations import Nucleus, write_centroids_txt
from histostain.io.images import write_image, write_label_tiff
from histostain.synth.generate import SynthTile
from histostain.synth.writers.base import LayoutWriter, TileSpec


class TilesWriter(LayoutWriter):
    name = "tiles"

    def plan(self) -> list[TileSpec]:
        return [TileSpec(i, self.size or 256, extra={"name": f"tile_{i:05d}"}) for i in range(self.n)]

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self._rows = ["name,her2,tissue,kind,nuclei\n"]

    def add(self, spec: TileSpec, tile: SynthTile) -> None:
        name = spec.extra["name"]
        write_image(self.root / "ihc" / f"{name}.png", tile.ihc)
        write_image(self.root / "he" / f"{name}.png", tile.he)
        truth = self.root / "ground_truth"
        nuclei = [Nucleus(id=n.id, centroid=(n.x, n.y), type=n.type, area=n.area) for n in tile.nuclei]
        write_centroids_txt(truth / f"{name}.txt", nuclei)
        write_label_tiff(truth / f"{name}_inst.tif", tile.inst_map, mpp=tile.mpp)
        write_label_tiff(truth / f"{name}_type.tif", tile.type_map, mpp=tile.mpp)
        self.files_written += 5
        self._rows.append(f"{name},{tile.her2_level},{tile.tissue},{tile.kind},{len(tile.nuclei)}\n")

    def close(self) -> None:
        self.write_text("tiles.csv", "".join(self._rows))
