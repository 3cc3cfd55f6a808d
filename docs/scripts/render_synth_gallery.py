"""Render docs/images/synth_gallery.png: H&E / IHC pairs with ground-truth contours, HER2 0..3+, nuclear IHC.

Run from the repository root: ``python docs/scripts/render_synth_gallery.py [--out PATH] [--seed N]``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from histostain.synth import generate_tile

# hover_net's PanNuke colours: neoplastic red, inflammatory green, connective blue, dead yellow, epithelial orange
TYPE_COLOURS = np.array(
    [[0, 0, 0], [255, 0, 0], [0, 200, 0], [40, 90, 255], [255, 255, 0], [255, 165, 0]], dtype=np.uint8
)
GAP = 6
LABEL = 18


def contours(image: np.ndarray, inst: np.ndarray, types: np.ndarray) -> np.ndarray:
    """Draw the instance boundaries on a copy of ``image``, coloured by the nucleus type."""
    edge = np.zeros(inst.shape, dtype=bool)
    dy = inst[1:, :] != inst[:-1, :]
    dx = inst[:, 1:] != inst[:, :-1]
    edge[1:, :] |= dy
    edge[:-1, :] |= dy
    edge[:, 1:] |= dx
    edge[:, :-1] |= dx
    edge &= inst > 0
    out = image.copy()
    out[edge] = TYPE_COLOURS[types[edge]]
    return out


def grid(rows: list[list[tuple[str, np.ndarray]]], size: int) -> Image.Image:
    cols = max(len(r) for r in rows)
    width = cols * size + (cols + 1) * GAP
    height = len(rows) * (size + LABEL) + (len(rows) + 1) * GAP
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for r, row in enumerate(rows):
        top = GAP + r * (size + LABEL + GAP)
        for c, (title, image) in enumerate(row):
            left = GAP + c * (size + GAP)
            draw.text((left + 2, top + 2), title, fill=(0, 0, 0))
            canvas.paste(Image.fromarray(image), (left, top + LABEL))
    return canvas


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("docs/images/synth_gallery.png"))
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--size", type=int, default=256)
    args = parser.parse_args()
    rows = []
    for offset, kind in enumerate(("tumour", "glandular", "stromal")):
        tile = generate_tile(args.seed + offset, args.size, kind=kind, her2=3 if kind == "tumour" else 2)
        counts = ", ".join(f"{name[:4]} {count}" for name, count in tile.counts().items() if count)
        rows.append(
            [
                (f"H&E ({kind}, {tile.tissue})", tile.he),
                (f"H&E + GT ({counts})", contours(tile.he, tile.inst_map, tile.type_map)),
                (f"IHC HER2 {tile.her2_level}", tile.ihc),
                ("IHC + GT", contours(tile.ihc, tile.inst_map, tile.type_map)),
            ]
        )
    her2_row = []
    for score in range(4):
        tile = generate_tile(args.seed + 10, args.size, kind="tumour", her2=score)
        her2_row.append((f"IHC HER2 {tile.her2_level} (same layout)", tile.ihc))
    rows.append(her2_row)
    nuclear_row = []
    for offset, kind in enumerate(("glandular", "stromal", "glandular", "stromal")):
        tile = generate_tile(
            args.seed + 20 + offset, args.size, mpp=100.0 / args.size, kind=kind, inflammation=0.15, marker="nuclear"
        )
        nuclear_row.append((f"EndoNuke-style nuclear IHC ({kind})", tile.ihc))
    rows.append(nuclear_row)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    grid(rows, args.size).save(args.out, optimize=True)
    print(f"wrote {args.out}")  # noqa: T201 (a script run by hand)


if __name__ == "__main__":
    main()
