"""Throughput and peak memory of the IHC nuclei detector (``segment --model detector``) on CPU.

Times :class:`~histostain.segmentation.detector_segment.DetectorSegmenter` with the packaged
``detector-endonuke`` (or ``--weights``) in float32, as ``segment`` runs it:

* tiles: N real-sized tiles (200 x 200 px at 0.5 um/px, EndoNuke's tiles; synthetic IHC), one after another;
  the network alone (heatmaps) and the whole segmenter (decoding, disks, DAB positivity);
* one large image (default 2048 x 2048 px, synthetic tiles side by side): chunked at the detector's 1024 px.

Prints tiles/s, megapixels/s and the peak resident memory (VmHWM) of this process.

    python benchmarks/bench_detector.py --tiles 40 --size 2048 --threads 2
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from _peak_memory import peak_mb
from histostain.runtime.device import DeviceManager
from histostain.segmentation.segment import build_segmenter
from histostain.synth import generate_tile


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiles", type=int, default=40)
    parser.add_argument("--size", type=int, default=2048, help="side of the large image")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--weights", default=None, help="default: the packaged detector-endonuke")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = DeviceManager.create(device="cpu", precision="fp32")
    segmenter = build_segmenter("detector", weights=args.weights, device=device, stain="ihc")
    tiles = [generate_tile(seed, 200).ihc for seed in range(args.tiles)]
    segmenter.segment(tiles[0])  # warm-up
    start = time.perf_counter()
    for tile in tiles:
        segmenter.heatmaps(tile)
    network = time.perf_counter() - start
    start = time.perf_counter()
    found = sum(len(segmenter.segment(tile)) for tile in tiles)
    whole = time.perf_counter() - start
    print(f"threads {torch.get_num_threads()}, {args.tiles} tiles of 200 x 200 px (0.5 um/px)")
    print(f"  network only : {args.tiles / network:7.2f} tiles/s ({network / args.tiles * 1000:.1f} ms/tile)")
    rate = f"{args.tiles / whole:7.2f} tiles/s ({whole / args.tiles * 1000:.1f} ms/tile)"
    print(f"  segmenter    : {rate}, {found} nuclei")

    side = args.size
    rng = np.random.default_rng(0)
    big = np.concatenate(
        [np.concatenate([generate_tile(int(rng.integers(1 << 30)), 256).ihc for _ in range(side // 256)], axis=1)
         for _ in range(side // 256)],
        axis=0,
    )  # fmt: skip
    start = time.perf_counter()
    nuclei = segmenter.segment(big)
    seconds = time.perf_counter() - start
    print(f"  {side} x {side} image: {seconds:.1f} s, {side * side / 1e6 / seconds:.2f} MP/s, {len(nuclei)} nuclei")
    print(f"peak memory (VmHWM): {peak_mb():.0f} MB")


if __name__ == "__main__":
    main()
