"""Wall time, throughput and peak memory of `histostain prepare pannuke` on a full-size synthetic fold.

Writes a synthetic PanNuke fold in the published layout (default 2656 patches of 256 x 256, the size of the
real Fold 1: about 8.4 GB of float64 masks and 4.2 GB of float64 images) into a temporary folder, then prepares it in
a fresh subprocess and prints the wall time, patches per second and the peak resident memory (ru_maxrss) of
that process, next to its resident memory right after the imports. Everything is deleted at the end.

One fold is enough to show the memory profile: the folds are processed one after the other through the same
chunk buffers, so the peak does not grow with the number of folds or patches. A single fold cannot use the
official three-fold split, so the run uses ``--split random``.

    python benchmarks/bench_prepare_pannuke.py                       # about 19 GB of free disk under /tmp
    python benchmarks/bench_prepare_pannuke.py --n 300 --chunk 32    # a quick look
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


def _du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def child_synth(n: int, size: int, folds: int, out: str) -> None:
    from histostain.synth import write_dataset

    start = time.perf_counter()
    write_dataset("pannuke", Path(out), n, size=size, seed=1, folds=folds)
    print(json.dumps({"seconds": time.perf_counter() - start, "peak_mb": _peak_mb()}))


def child_prepare(source: str, out: str, chunk: int, split: str) -> None:
    import numpy  # noqa: F401  (the import baseline includes what prepare loads)
    import skimage.measure  # noqa: F401

    from histostain.datasets.pannuke import prepare_pannuke

    baseline = _peak_mb()
    start = time.perf_counter()
    summary = prepare_pannuke(Path(source), Path(out), split=split, chunk=chunk)
    seconds = time.perf_counter() - start
    print(
        json.dumps(
            {
                "seconds": seconds,
                "peak_mb": _peak_mb(),
                "import_mb": baseline,
                "patches": sum(summary.splits.values()),
                "counters": summary.counters,
            }
        )
    )


def _run(*args: str) -> dict:
    result = subprocess.run([sys.executable, __file__, *args], check=True, capture_output=True, text=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2656, help="patches (2656 = the real Fold 1)")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--folds", type=int, default=1, help="folds to write (3 gives the official split)")
    parser.add_argument("--chunk", type=int, default=64)
    parser.add_argument("--tmp", default="/tmp", help="where the temporary folder goes")
    parser.add_argument("--child", choices=["synth", "prepare"], help=argparse.SUPPRESS)
    parser.add_argument("--source", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--split", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "synth":
        child_synth(args.n, args.size, args.folds, args.out)
        return
    if args.child == "prepare":
        child_prepare(args.source, args.out, args.chunk, args.split)
        return
    free = shutil.disk_usage(args.tmp).free
    need = args.n * args.size * args.size * (9 * 8 + 3 + 4 + 1 + 6 * 4) * 1.05
    if free < need:
        sys.exit(f"needs about {need / 1024**3:.1f} GiB free under {args.tmp}, {free / 1024**3:.1f} GiB available")
    work = Path(tempfile.mkdtemp(prefix="bench_prepare_pannuke_", dir=args.tmp))
    split = "official" if args.folds == 3 else "random"
    try:
        source, out = work / "pannuke", work / "prepared"
        synth = _run("--child", "synth", "--n", str(args.n), "--size", str(args.size), "--folds", str(args.folds),
                     "--out", str(source))  # fmt: skip
        source_gb = _du(source) / 1024**3
        prep = _run("--child", "prepare", "--source", str(source), "--out", str(out), "--chunk", str(args.chunk),
                    "--split", split)  # fmt: skip
        out_gb = _du(out) / 1024**3
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"histostain prepare pannuke: {args.n} synthetic patches of {args.size} x {args.size} in {args.folds} "
          f"fold(s), --split {split}, --chunk {args.chunk}")  # fmt: skip
    print(f"  synth (setup)     {synth['seconds']:8.1f} s   source on disk {source_gb:.2f} GiB")
    print(f"  prepare wall time {prep['seconds']:8.1f} s   {prep['patches'] / prep['seconds']:.1f} patches/s")
    print(f"  prepare peak RSS  {prep['peak_mb']:8.0f} MB  (after imports {prep['import_mb']:.0f} MB)")
    print(f"  prepared on disk  {out_gb:8.2f} GiB")
    print(f"  counters          {json.dumps(prep['counters'])}")


if __name__ == "__main__":
    main()
