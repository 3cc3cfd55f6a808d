"""EndoNuke layout (datasets.md section 2), rendered as nuclear (ER/PR-like) IHC.

```
DIR/data/dataset/images/<id>.png                     RGBA, alpha 255; 200 x 200 (0.5 um/px) or 400 x 400 (0.25 um/px)
DIR/data/dataset/labels/bulk/<annotator>/<id>.txt    one `x y class` line per nucleus (0 stroma, 1 epithelium, 2 other)
DIR/data/dataset/files_lists/bulk_<annotator>_{images,labels}.txt   paths relative to the list file
DIR/data/master_ymls/bulk.yaml                       images_lists / labels_lists, relative to the yml
```
Every tenth tile (index % 10 == 1) is 400 x 400, the rest 200 x 200 (unless ``--size`` fixes one size; a tile is
always 100 um wide). Points are the ground-truth centroids rounded to integers.

With ``--quirks`` (all recorded in the summary): tile 0 has no nuclei and an empty label file; the label files
of tiles with index % 3 == 1 are written the way EndoNuke's own resize script writes them, `x y c \\n` with a
trailing space; in tile min(2, n - 1) the right-most point is moved onto the right edge, x == W.
"""

from __future__ import annotations

import numpy as np

from histostain.io.images import write_image
from histostain.synth.generate import SynthTile
from histostain.synth.writers.base import LayoutWriter, TileSpec
from histostain.vocabulary import ENDONUKE_ANNOTATORS

TILE_WIDTH_UM = 100.0
FIRST_ID = 1000


class EndoNukeWriter(LayoutWriter):
    name = "endonuke"

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self._lists: dict[str, list[str]] = {}

    def plan(self) -> list[TileSpec]:
        specs = []
        edge_tile = min(2, self.n - 1)
        for i in range(self.n):
            size = self.size or (400 if i % 10 == 1 else 200)
            annotator = ENDONUKE_ANNOTATORS[i % len(ENDONUKE_ANNOTATORS)]
            extra = {
                "id": FIRST_ID + i,
                "annotator": annotator,
                "trailing_spaces": self.quirks and i % 3 == 1,
                "edge_point": self.quirks and i == edge_tile and i != 0,
            }
            specs.append(
                TileSpec(
                    i,
                    size,
                    mpp=TILE_WIDTH_UM / size,
                    kind="glandular" if i % 2 == 0 else "stromal",  # endometrium: glands and stroma
                    empty=self.quirks and i == 0,
                    inflammation=0.15,  # endometrium: 'other' nuclei are about 1%
                    marker="nuclear",  # ER/PR stains nuclei
                    extra=extra,
                )
            )
        return specs

    def add(self, spec: TileSpec, tile: SynthTile) -> None:
        stem, annotator = spec.extra["id"], spec.extra["annotator"]
        height, width = tile.ihc.shape[:2]
        rgba = np.empty((height, width, 4), dtype=np.uint8)
        rgba[..., :3] = tile.ihc
        rgba[..., 3] = 255
        write_image(self.root / "data/dataset/images" / f"{stem}.png", rgba)
        points = np.rint(tile.centroids).astype(np.int64).reshape(-1, 2)
        points[:, 0] = np.clip(points[:, 0], 0, width - 1)
        points[:, 1] = np.clip(points[:, 1], 0, height - 1)
        classes = tile.endonuke_classes
        if spec.extra["edge_point"] and len(points):
            k = int(np.argmax(points[:, 0]))
            self.quirk_records.append(
                {
                    "quirk": "point_on_right_edge",
                    "file": f"data/dataset/labels/bulk/{annotator}/{stem}.txt",
                    "line": k + 1,
                    "x": width,
                    "y": int(points[k, 1]),
                    "original_x": float(tile.nuclei[k].x),
                }
            )
            points[k, 0] = width
        end = " \n" if spec.extra["trailing_spaces"] else "\n"
        text = "".join(f"{x} {y} {c}{end}" for (x, y), c in zip(points.tolist(), classes.tolist(), strict=True))
        label = f"data/dataset/labels/bulk/{annotator}/{stem}.txt"
        self.write_text(label, text)
        self.files_written += 1
        if spec.extra["trailing_spaces"]:
            self.quirk_records.append({"quirk": "trailing_spaces", "file": label})
        if spec.empty:
            self.quirk_records.append({"quirk": "empty_label_file", "file": label})
        self._lists.setdefault(annotator, []).append(str(stem))

    def close(self) -> None:
        images_lists, labels_lists = [], []
        for annotator in ENDONUKE_ANNOTATORS:
            stems = self._lists.get(annotator)
            if not stems:
                continue
            images = f"files_lists/bulk_{annotator}_images.txt"
            labels = f"files_lists/bulk_{annotator}_labels.txt"
            self.write_text(f"data/dataset/{images}", "".join(f"../images/{s}.png\n" for s in stems))
            self.write_text(f"data/dataset/{labels}", "".join(f"../labels/bulk/{annotator}/{s}.txt\n" for s in stems))
            images_lists.append(f"../dataset/{images}")
            labels_lists.append(f"../dataset/{labels}")
        yaml = "images_lists:\n" + "".join(f"- {p}\n" for p in images_lists)
        yaml += "labels_lists:\n" + "".join(f"- {p}\n" for p in labels_lists)
        self.write_text("data/master_ymls/bulk.yaml", yaml)
