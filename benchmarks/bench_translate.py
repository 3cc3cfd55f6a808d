"""Benchmark `translate`: network-only vs end-to-end throughput, GFLOP/s, overlap overhead, peak memory.

Full-size ResNet generator (ngf 64, 9 blocks, random weights), CPU, fp32. Not run by the test suite.

    python benchmarks/bench_translate.py               # 8 tiles of 256x256 and one 2048x2048 image
    python benchmarks/bench_translate.py --quick       # 4 tiles and a 1024x1024 image

"before" rows are a naive baseline kept for comparison: read, translate and write one image at a time with
no prefetching and no cross-image batching, on a fixed grid of ``tile``-sized tiles (the obvious
implementation); "after" rows are ``Translator.translate_files`` (the batch engine: record, resume checks,
decode/write threads, cross-image batching).
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from histostain.io.images import read_image, write_image
from histostain.io.tiling import Stitcher, iter_tiles, plan_tiles
from histostain.runtime.device import DeviceManager
from histostain.translation.cyclegan import ResnetGenerator, count_parameters, init_weights
from histostain.translation.translate import Translator, to_uint8


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes


def flops_per_image(model: torch.nn.Module, side: int) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(torch.zeros(1, 3, side, side))
    return float(counter.get_total_flops())


class Clock:
    """Wall and process CPU seconds of a block (CPU time is the fairer figure on a shared, loaded machine)."""

    def __enter__(self) -> Clock:
        self.wall0, self.cpu0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.wall0
        self.cpu = time.process_time() - self.cpu0


def network_only(translator: Translator, tiles: np.ndarray, batch: int) -> Clock:
    """Push ``tiles`` (uint8 N x H x W x 3) through the network in batches (conversions included)."""
    with Clock() as clock:
        for i in range(0, len(tiles), batch):
            translator.forward_batch(tiles[i : i + batch])
    return clock


def naive(translator: Translator, items: list[tuple[Path, Path]], tile: int, overlap: int) -> Clock:
    """Baseline: sequential read -> fixed-grid tiles one by one -> stitch -> write (``items``: source, target)."""
    clock = Clock().__enter__()
    for source, target in items:
        image = read_image(source)
        h, w = image.shape[:2]
        if h <= tile and w <= tile:
            out = translator.forward_batch(image[None])[0]
        else:
            grid = plan_tiles(h, w, tile, overlap)
            stitcher = Stitcher(grid, channels=3)
            for index, _y, _x, piece in iter_tiles(image, grid):
                stitcher.add(index, translator.forward_batch(piece[None])[0])
            out = stitcher.result()
        write_image(target, to_uint8(out))
    clock.__exit__()
    return clock


def end_to_end(translator: Translator, inputs: list[Path], out: Path) -> tuple[Clock, float]:
    with Clock() as clock:
        report = translator.translate_files(inputs, out, overwrite=True)
    return clock, report.megapixels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer tiles and a 1024x1024 image")
    parser.add_argument("--tiles", type=int, default=None, help="number of 256x256 tiles (default 8, quick 4)")
    parser.add_argument("--big", type=int, default=None, help="side of the large image (default 2048, quick 1024)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=2, help="interleaved repetitions; the best is kept")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    n_tiles = args.tiles or (4 if args.quick else 8)
    big = args.big or (1024 if args.quick else 2048)
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    model = init_weights(ResnetGenerator()).eval()
    device = DeviceManager.create("cpu", "fp32")
    translator = Translator(model, device, batch_size=args.batch_size)
    print(
        f"generator: {count_parameters(model):,} parameters; "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")

    flops = flops_per_image(model, 256)
    print(f"FLOPs per 256x256 forward: {flops / 1e9:.1f} GFLOP (FlopCounterMode, 2 per multiply-add)")

    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (n_tiles, 256, 256, 3), dtype=np.uint8)
    translator.forward_batch(small[:1])  # warm-up
    rows: list[tuple[str, str]] = []

    def show(name: str, value: str) -> None:
        rows.append((name, value))
        print(f"{name}: {value}", flush=True)

    for batch in sorted({1, args.batch_size}):
        clock = network_only(translator, small, batch)
        rate = n_tiles / clock.wall
        show(f"network only, 256x256, batch {batch}", f"{rate:.3f} img/s, {rate * flops / 1e9:.1f} GFLOP/s (wall)")

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        items = []
        for i in range(n_tiles):
            write_image(root / "in" / f"{i}.png", small[i])
            items.append((root / "in" / f"{i}.png", root / "naive" / f"{i}.png"))
        image = rng.integers(0, 256, (big, big, 3), dtype=np.uint8)
        write_image(root / "big.png", image)
        big_item = [(root / "big.png", root / "naive" / "big.png")]
        plan = translator.plan(big, big)
        assert plan.grid is not None
        big_tiles = np.stack([piece for _, _, _, piece in iter_tiles(image, plan.grid)])
        naive_grid = plan_tiles(big, big, 512, 64)
        naive_overhead = len(naive_grid) * 512 * 512 / big**2 - 1
        show(
            f"overlap overhead {big}x{big}",
            f"before {100 * naive_overhead:.1f}% ({len(naive_grid)} tiles of 512), "
            f"after {100 * plan.overhead:.1f}% ({plan.tiles} tiles of {plan.padded[0]})",
        )

        # interleave the measurements so that load changes hit all of them alike; keep the best of each
        best: dict[str, Clock] = {}
        for _ in range(args.repeat):
            for name, run in (
                ("net_small", lambda: network_only(translator, small, args.batch_size)),
                ("naive_small", lambda: naive(translator, items, 512, 64)),
                ("e2e_small", lambda: end_to_end(translator, [root / "in"], root / "out_small")[0]),
                ("net_big", lambda: network_only(translator, big_tiles, args.batch_size)),
                ("naive_big", lambda: naive(translator, big_item, 512, 64)),
                ("e2e_big", lambda: end_to_end(translator, [root / "big.png"], root / "out_big")[0]),
            ):
                clock = run()
                if name not in best or clock.wall < best[name].wall:
                    best[name] = clock
                print(f"  {name}: wall {clock.wall:.1f} s, cpu {clock.cpu:.1f} s", flush=True)

        def ratio(a: str, b: str) -> str:
            wall, cpu = 100 * best[a].wall / best[b].wall, 100 * best[a].cpu / best[b].cpu
            return f"{wall:.0f}% (wall), {cpu:.0f}% (CPU time) of network-only"

        small_mp = n_tiles * 256 * 256 / 1e6
        big_mp = big * big / 1e6
        show("network only, 256x256 folder", f"{n_tiles / best['net_small'].wall:.3f} img/s")
        show("before: naive loop, 256x256 folder", f"{n_tiles / best['naive_small'].wall:.3f} img/s")
        show(
            "after: translate_files, 256x256 folder",
            f"{n_tiles / best['e2e_small'].wall:.3f} img/s, {small_mp / best['e2e_small'].wall:.3f} MP/s; "
            f"end-to-end throughput = {ratio('net_small', 'e2e_small')}",
        )
        show(
            f"network only, {big}x{big} tiles",
            f"{best['net_big'].wall:.1f} s, {big_mp / best['net_big'].wall:.3f} output MP/s, "
            f"{plan.computed_pixels / 1e6 / best['net_big'].wall:.3f} computed MP/s",
        )
        show(
            f"before: naive loop, {big}x{big}",
            f"{best['naive_big'].wall:.1f} s, {big_mp / best['naive_big'].wall:.3f} MP/s",
        )
        show(
            f"after: translate_files, {big}x{big}",
            f"{best['e2e_big'].wall:.1f} s, {big_mp / best['e2e_big'].wall:.3f} MP/s; "
            f"end-to-end throughput = {ratio('net_big', 'e2e_big')}",
        )
    rows.append(("peak RSS", f"{peak_mb():.0f} MB"))
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print()
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


if __name__ == "__main__":
    main()
