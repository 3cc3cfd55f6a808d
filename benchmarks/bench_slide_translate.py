"""Benchmark whole-slide `translate`: megapixels/s, generator tiles/s and peak memory against slide size.

Writes a synthetic Aperio SVS of SIDE x SIDE pixels (0.25 um/px, JPEG tiles, levels 1, 1/4, 1/16), made tile by
tile from a few `histostain synth` IHC tiles so the benchmark itself never holds the slide; about half of it
is glass (a border and a checkerboard of 2048 px blocks) so tissue detection has something to skip. Then it is
translated in a child process (``translate_slide``: chunks, scratch raster, pyramid, OME-TIFF) so the peak RSS
reported is the translation's own. Not run by the test suite.

    python benchmarks/bench_slide_translate.py 8192                     # packaged cyclegan-demo generator
    python benchmarks/bench_slide_translate.py 8192 32768 --ngf 2       # a tiny random generator: I/O-bound
    python benchmarks/bench_slide_translate.py 8192 --compression zlib --chunk 1024
"""

from __future__ import annotations

import argparse
import functools
import json
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

CELL = 256
PATTERN = 8  # distinct synthetic tiles, repeated
MPP = 0.25


@functools.cache
def _cells() -> list[np.ndarray]:
    from histostain.synth import generate_tile

    return [generate_tile(500 + i, CELL).ihc for i in range(PATTERN)]


def _glass(r: int, c: int, cells: int) -> bool:
    """Glass: a border of a tenth of the side and every other 2048 px block (checkerboard), so about half the
    slide's 2048 px chunks hold no tissue."""
    border = max(1, cells // 10)
    inside = border <= r < cells - border and border <= c < cells - border
    return not inside or (r // 8 + c // 8) % 2 == 1


GLASS = np.full((CELL, CELL, 3), (238, 236, 241), dtype=np.uint8)


def _cell(r: int, c: int, cells: int) -> np.ndarray:
    return GLASS if _glass(r, c, cells) else _cells()[(r * 5 + c) % PATTERN]


def _region(r0: int, c0: int, n: int, cells: int) -> np.ndarray:
    """``n x n`` cells of level 0 starting at cell (r0, c0), glass past the slide."""
    out = np.empty((n * CELL, n * CELL, 3), dtype=np.uint8)
    for i in range(n):
        for j in range(n):
            r, c = r0 + i, c0 + j
            cell = _cell(r, c, cells) if r < cells and c < cells else GLASS
            out[i * CELL : (i + 1) * CELL, j * CELL : (j + 1) * CELL] = cell
    return out


def _level_tiles(side: int, factor: int) -> Iterator[np.ndarray]:
    """Tiles (256 px) of the level ``factor`` times smaller, each the area average of a level-0 region."""
    import cv2

    cells = side // CELL
    per_tile = factor  # level-0 cells behind one level tile, per side
    level_side = side // factor
    for ty in range(0, level_side, CELL):
        for tx in range(0, level_side, CELL):
            region = _region(ty // CELL * per_tile, tx // CELL * per_tile, per_tile, cells)
            yield cv2.resize(region, (CELL, CELL), interpolation=cv2.INTER_AREA) if factor > 1 else region


def write_synthetic_svs(path: Path, side: int) -> Path:
    import tifffile

    head = f"Aperio Image Library v12.0.0 \n{side}x{side} [0,0 {side}x{side}] (256x256) JPEG/RGB Q=90|AppMag = 40"
    fields = f"|MPP = {MPP}"
    jpeg = {"photometric": "rgb", "compression": "jpeg", "compressionargs": {"level": 90}, "metadata": None}
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        for index, factor in enumerate((1, 4, 16)):
            level_side = side // factor
            desc = head + fields if index == 0 else f"{head} -> {level_side}x{level_side}{fields}"
            tw.write(
                _level_tiles(side, factor),
                shape=(level_side, level_side, 3),
                dtype=np.uint8,
                tile=(CELL, CELL),
                description=desc,
                **jpeg,
            )
    return path


CHILD = """
import json, sys, time, resource
sys.path.insert(0, {bench!r})
from _peak_memory import peak_mb
import torch
from histostain.runtime.device import DeviceManager
from histostain.translation.translate import Translator, load_translator
from histostain.translation.slide_translate import translate_slide
args = json.loads(sys.argv[1])
device = DeviceManager.create("cpu", "fp32")
if args["ngf"] == "demo":
    translator = load_translator("cyclegan-demo", "ihc2he", device, batch_size=args["batch_size"])
else:
    from histostain.translation.cyclegan import ResnetGenerator, init_weights
    torch.manual_seed(0)
    model = init_weights(ResnetGenerator(ngf=int(args["ngf"]), n_blocks=args["blocks"])).eval()
    translator = Translator(model, device, batch_size=args["batch_size"])
start = time.perf_counter()
report = translate_slide(args["slide"], args["out"], translator, chunk=args["chunk"], compression=args["compression"])
seconds = time.perf_counter() - start
print(json.dumps({{**report.to_dict(), "wall": seconds, "peak_mb": peak_mb(),
                   "ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                   "threads": torch.get_num_threads()}}))
"""


def run(side: int, options: argparse.Namespace, folder: Path) -> dict[str, object]:
    slide = folder / f"synthetic_{side}.svs"
    start = time.perf_counter()
    write_synthetic_svs(slide, side)
    made = time.perf_counter() - start
    args = {
        "slide": str(slide),
        "out": str(folder / f"out_{side}"),
        "chunk": options.chunk,
        "compression": options.compression,
        "ngf": options.ngf,
        "blocks": options.blocks,
        "batch_size": options.batch_size,
    }
    code = CHILD.format(bench=str(Path(__file__).resolve().parent))
    done = subprocess.run([sys.executable, "-c", code, json.dumps(args)], check=True, capture_output=True, text=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    output = Path(str(result["output"]))
    mp = float(result["megapixels"])  # type: ignore[arg-type]
    wall = float(result["wall"])  # type: ignore[arg-type]
    return {
        "side": side,
        "svs_mb": slide.stat().st_size / 2**20,
        "svs_seconds": made,
        "chunks": result["chunks"],
        "glass_chunks": result["glass"],
        "network_tiles": result["network_tiles"],
        "seconds": wall,
        "megapixels": mp,
        "megapixels_per_s": mp / wall,
        "tiles_per_s": float(result["network_tiles"]) / wall,  # type: ignore[arg-type]
        "output_mb": output.stat().st_size / 2**20,
        "levels": result["levels"],
        "peak_rss_mb": result["peak_mb"],
        "ru_maxrss_mb": result["ru_maxrss_mb"],
        "children_ru_maxrss_mb": children,
        "torch_threads": result["threads"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sides", nargs="*", type=int, default=[8192], help="slide sides in pixels (multiples of 4096)")
    parser.add_argument("--ngf", default="demo", help="'demo' (packaged cyclegan-demo) or a width for a random net")
    parser.add_argument("--blocks", type=int, default=1, help="residual blocks of a random net")
    parser.add_argument("--chunk", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--compression", default="jpeg")
    parser.add_argument("--keep", type=Path, default=None, help="work in this folder and keep the files")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_slide_") as tmp:
        folder = options.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        for side in options.sides:
            row = run(side, options, folder)
            print(json.dumps(row))
            print(
                f"{side} x {side}: {row['megapixels']:.0f} MP in {row['seconds']:.1f} s = "
                f"{row['megapixels_per_s']:.2f} MP/s, {row['tiles_per_s']:.2f} generator tiles/s, "
                f"{row['chunks']} chunks ({row['glass_chunks']} glass), peak RSS {row['peak_rss_mb']:.0f} MB, "
                f"output {row['output_mb']:.1f} MB in {row['levels']} levels",
                flush=True,
            )


if __name__ == "__main__":
    main()
