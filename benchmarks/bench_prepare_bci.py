"""Wall time, patches/s and peak memory of `histostain prepare bci` on a full-size synthetic BCI release.

Synthesises ``--n`` pairs (default 100) of 1024 x 1024 H&E / IHC tiles in the published BCI layout once (kept in
``--work`` so a second run reuses them), then times ``prepare_bci`` in a fresh subprocess, so its peak resident
memory (ru_maxrss) is not mixed with the synthesis.

    python benchmarks/bench_prepare_bci.py                           # 100 pairs, --patch 512 --size 256
    python benchmarks/bench_prepare_bci.py --size 0 --work /tmp/bci  # keep full 512 patches, reuse the data
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
    """Peak resident memory of this process in MB.

    VmHWM (Linux) rather than ru_maxrss: ru_maxrss survives exec, so a child started by the (large) synthesising
    parent would report the parent's peak.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # kilobytes on Linux


def child(source: str, out: str, patch: int, size: int) -> None:
    from histostain.datasets.bci import prepare_bci

    baseline = _peak_mb()
    start = time.perf_counter()
    summary = prepare_bci(Path(source), Path(out), patch=patch, size=size, overwrite=True)
    seconds = time.perf_counter() - start
    patches = sum(summary.splits.values())
    print(
        json.dumps(
            {
                "seconds": seconds,
                "patches": patches,
                "splits": summary.splits,
                "peak_mb": _peak_mb(),
                "import_mb": baseline,
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100, help="pairs to synthesise")
    parser.add_argument("--image-size", type=int, default=1024, help="side of the synthetic BCI images")
    parser.add_argument("--patch", type=int, default=512)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--work", type=Path, help="folder for the synthetic source (kept); default: a temp folder")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1], args.patch, args.size)
        return
    work = args.work or Path(tempfile.mkdtemp(prefix="bench_prepare_bci_"))
    source = work / f"bci_{args.n}x{args.image_size}"
    out = work / "prepared"
    try:
        if not (source / "synth.json").is_file():
            from histostain.synth import write_dataset

            start = time.perf_counter()
            write_dataset("bci", source, args.n, args.image_size, seed=0, overwrite=True)
            print(f"synthesised {args.n} pairs of {args.image_size}^2 in {time.perf_counter() - start:.1f}s")
        command = [sys.executable, __file__, "--child", str(source), str(out)]
        command += ["--patch", str(args.patch), "--size", str(args.size)]
        result = subprocess.run(command, check=True, capture_output=True, text=True)
        row = json.loads(result.stdout.strip().splitlines()[-1])
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
        else:
            shutil.rmtree(out, ignore_errors=True)
    print(
        f"histostain prepare bci: {args.n} pairs of {args.image_size} x {args.image_size}, "
        f"--patch {args.patch} --size {args.size}, one process"
    )
    print(
        f"{'pairs':>6}{'patches':>9}{'seconds':>10}{'patches/s':>11}{'pairs/s':>9}"
        f"{'peak RSS MB':>13}{'after import MB':>17}"
    )
    print(
        f"{args.n:>6}{row['patches']:>9}{row['seconds']:>10.1f}{row['patches'] / row['seconds']:>11.1f}"
        f"{args.n / row['seconds']:>9.2f}{row['peak_mb']:>13.0f}{row['import_mb']:>17.0f}"
    )
    print(f"splits: {row['splits']}  (patches are HE/IHC pairs)")


if __name__ == "__main__":
    main()
