"""Throughput and peak memory of `histostain synth`.

Prints paired (H&E + IHC) 256 x 256 tiles per second for generation alone and for writing each layout, and the
peak resident memory (ru_maxrss) of a fresh process writing ``--n`` tiles (default 1000), next to one writing a
tenth of that, so a flat memory profile shows as two similar numbers. Every measurement runs in its own
subprocess, so peaks do not mix.

    python benchmarks/bench_synth.py                   # 1000 tiles, layouts tiles and pannuke
    python benchmarks/bench_synth.py --n 200 --layouts bci tiles pannuke endonuke
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # kilobytes on Linux


def child(mode: str, n: int, size: int, out: str) -> None:
    from histostain.synth import generate_tile, tile_seeds

    baseline = _peak_mb()
    if mode == "generate":
        generate_tile(0, size)  # warm-up: noise banks, caches
        seeds = tile_seeds(1, n)
        start = time.perf_counter()
        for seed in seeds:
            generate_tile(seed, size)
        seconds = time.perf_counter() - start
    else:
        from histostain.synth import write_dataset

        generate_tile(0, size)
        start = time.perf_counter()
        write_dataset(mode, Path(out) / mode, n, None if mode == "endonuke" else size, seed=1, folds=1)
        seconds = time.perf_counter() - start
    print(json.dumps({"mode": mode, "n": n, "seconds": seconds, "peak_mb": _peak_mb(), "import_mb": baseline}))


def run(mode: str, n: int, size: int, out: Path) -> dict:
    command = [sys.executable, __file__, "--child", mode, "--n", str(n), "--size", str(size), "--out", str(out)]
    result = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1000, help="tiles per layout run (peak memory is measured here)")
    parser.add_argument("--gen-n", type=int, default=300, help="tiles for the generation-only measurement")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--layouts", nargs="+", default=["tiles", "pannuke"])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.n, args.size, args.out)
        return
    out = Path(tempfile.mkdtemp(prefix="bench_synth_"))
    try:
        rows = [run("generate", args.gen_n, args.size, out)]
        for layout in args.layouts:
            small = max(1, args.n // 10)
            rows.append(run(layout, small, args.size, out))
            shutil.rmtree(out / layout, ignore_errors=True)
            rows.append(run(layout, args.n, args.size, out))
            shutil.rmtree(out / layout, ignore_errors=True)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    print(f"histostain synth benchmark: {args.size} x {args.size} paired tiles, one process")
    print(f"{'what':<22}{'tiles':>7}{'seconds':>10}{'tiles/s':>10}{'peak RSS MB':>13}{'after import MB':>17}")
    for row in rows:
        what = "generate only" if row["mode"] == "generate" else f"write {row['mode']}"
        rate = row["n"] / row["seconds"]
        print(
            f"{what:<22}{row['n']:>7}{row['seconds']:>10.2f}{rate:>10.1f}{row['peak_mb']:>13.0f}{row['import_mb']:>17.0f}"
        )


if __name__ == "__main__":
    main()
