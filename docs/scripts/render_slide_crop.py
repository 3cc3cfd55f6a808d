"""Render docs/images/slide_segment_crop.jpg: a crop of a segmented slide with the nuclei from its GeoJSON.

Run from the repository root after segmenting the real test slide::

    histostain segment tests/data/slides/CMU-1-Small-Region.svs -o /tmp/cmu
    python docs/scripts/render_slide_crop.py /tmp/cmu/CMU-1-Small-Region.geojson.gz \
        --slide tests/data/slides/CMU-1-Small-Region.svs --box 1250,1150,700,500

The polygons are drawn from the GeoJSON exactly as QuPath would place them (level-0 pixels), so the picture
checks the coordinates of the slide outputs as well as the nuclei.
"""

from __future__ import annotations

import argparse
import gzip
import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from histostain.io.slides import open_slide

DEFAULT_COLOUR = (0, 230, 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("geojson", type=Path, help="the slide's .geojson or .geojson.gz")
    parser.add_argument("--slide", type=Path, required=True)
    parser.add_argument("--box", default="1250,1150,700,500", help="x,y,w,h in level-0 pixels")
    parser.add_argument("--scale", type=int, default=2, help="enlargement of the crop")
    parser.add_argument("--out", type=Path, default=Path("docs/images/slide_segment_crop.jpg"))
    args = parser.parse_args()
    x, y, w, h = (int(v) for v in args.box.split(","))
    opener = gzip.open if args.geojson.suffix == ".gz" else open
    with opener(args.geojson, "rt", encoding="utf-8") as handle:
        features = json.load(handle)["features"]
    with open_slide(args.slide) as slide:
        crop = slide.read_region(x, y, w, h)
    image = Image.fromarray(crop).resize((w * args.scale, h * args.scale), Image.Resampling.LANCZOS)
    draw = ImageDraw.Draw(image)
    shown = 0
    for feature in features:
        ring = np.asarray(feature["geometry"]["coordinates"][0], dtype=np.float64)
        if not ((ring[:, 0] >= x) & (ring[:, 0] < x + w) & (ring[:, 1] >= y) & (ring[:, 1] < y + h)).any():
            continue
        colour = tuple(feature["properties"].get("classification", {}).get("color", DEFAULT_COLOUR))
        points = [((px - x) * args.scale, (py - y) * args.scale) for px, py in ring.tolist()]
        draw.line([*points, points[0]], fill=colour, width=2)
        shown += 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    image.save(args.out, quality=88)
    print(f"{args.out}: {shown} nuclei in the {w} x {h} px box at ({x}, {y})")  # noqa: T201 (run by hand)


if __name__ == "__main__":
    main()
