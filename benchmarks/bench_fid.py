"""Throughput of FID feature extraction (the FID-Inception network) on this machine.

Writes ``--n`` synthetic 256 x 256 H&E tiles as PNG, saves a randomly initialised FID-Inception (same graph and
cost as the published weights; the published file cannot be downloaded here) and extracts pool3 features at
``--batch`` (default 32) in four ways:

* ``eager``: pytorch-fid's loop: decode in the main process, NCHW, ``torch.no_grad``;
* ``channels_last``: the same, model and batches in channels_last memory, ``torch.inference_mode``;
* ``workers``: histostain's :func:`~histostain.metrics.fid_features.extract_features` with NCHW and ``--workers``
  decoding/resizing processes overlapped with compute;
* ``workers+channels_last``: the same in channels_last (what histostain does on CPU).

For each it prints images/s, achieved GFLOP/s (FLOPs of one 299 x 299 image counted with
``torch.utils.flop_counter.FlopCounterMode``, multiply-add = 2 FLOPs), the peak resident memory so far
(ru_maxrss, monotonic across the runs) and the norm-relative deviation ``||a - b|| / ||b||`` of the features
from the ``eager`` path (target <= 1e-4) and, for the first two images, from a float64 run of the same network
(the fp32 round-off floor: a path is as accurate as eager when both sit at the same level). Each path runs
``--repeats`` times in rotation and the best time is kept, which matters on a shared machine.

    python benchmarks/bench_fid.py                  # 96 images, batch 32, 2 workers
    python benchmarks/bench_fid.py --n 160 --workers 2 --threads 2
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


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # kilobytes on Linux


def _random_weights(path: Path) -> None:
    """Random FID-Inception weights whose BatchNorm statistics keep activations at a sane scale."""
    from histostain.metrics.inception import FIDInceptionV3

    torch.manual_seed(0)
    model = FIDInceptionV3()
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None  # cumulative: one batch sets the running statistics exactly
            module.reset_running_stats()
    model.train()
    with torch.no_grad():
        model(torch.rand(2, 3, 299, 299))
    torch.save(model.state_dict(), path)


def _gflop_per_image(model: torch.nn.Module) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(torch.rand(1, 3, 299, 299))
    return counter.get_total_flops() / 1e9


def _eager(paths: list[Path], model: torch.nn.Module, batch: int, channels_last: bool, dtype: int = 32) -> np.ndarray:
    """The reference loop: decode in the main process, then forward (pytorch-fid's structure)."""
    import torch.nn.functional as F

    from histostain.io.images import read_image

    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    context = torch.inference_mode if channels_last else torch.no_grad
    out = []
    with context():
        for start in range(0, len(paths), batch):
            images = [read_image(p) for p in paths[start : start + batch]]
            x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous().float().div(255.0)  # as ToTensor
            if dtype == 64:
                x = x.double()
            x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            out.append(model(x).float().numpy())
    return np.concatenate(out)


def _deviation(feats: np.ndarray, ref: np.ndarray) -> float:
    """Norm-relative deviation ||a - b|| / ||b||."""
    return float(np.linalg.norm(feats - ref) / np.linalg.norm(ref))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=96, help="number of images (default 96 = 3 batches)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=1, help="run every path this many times, keep the best")
    args = parser.parse_args()

    from histostain.io.images import list_images
    from histostain.metrics.fid_features import extract_features
    from histostain.metrics.inception import load_fid_inception
    from histostain.runtime import progress
    from histostain.runtime.device import DeviceManager
    from histostain.synth import write_dataset

    if args.threads:
        torch.set_num_threads(args.threads)
    progress.configure(enabled=False, log_interval=1e9)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.n} images {args.size}^2 -> 299^2")
    with open("/proc/loadavg") as handle:
        print(f"load average at start: {handle.read().split()[:3]}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_dataset("tiles", root / "tiles", args.n, args.size, seed=0)
        paths = list_images(root / "tiles" / "he")
        _random_weights(root / "w.pth")
        model = load_fid_inception(root / "w.pth")[0]
        gflop = _gflop_per_image(model)
        print(f"FLOPs per 299x299 image: {gflop:.2f} GFLOP (FlopCounterMode)")
        reference64 = _eager(
            paths[:2], load_fid_inception(root / "w.pth")[0].double(), 2, channels_last=False, dtype=64
        )
        manager = DeviceManager.create("cpu", "fp32")

        paths_by_name = {
            "eager": lambda m: _eager(paths, m, args.batch, channels_last=False),
            "channels_last": lambda m: _eager(paths, m, args.batch, channels_last=True),
            "workers": lambda m: extract_features(paths, m, manager, args.batch, args.workers, channels_last=False),
            "workers+channels_last": lambda m: extract_features(paths, m, manager, args.batch, args.workers),
        }
        best: dict[str, float] = {}
        results: dict[str, np.ndarray] = {}
        for _ in range(args.repeats):
            for name, run in paths_by_name.items():
                model = load_fid_inception(root / "w.pth")[0]
                start = time.perf_counter()
                results[name] = run(model)
                seconds = time.perf_counter() - start
                best[name] = min(best.get(name, float("inf")), seconds)
        print(f"{'path':<24}{'images/s':>10}{'GFLOP/s':>10}{'peak MB':>10}{'dev vs eager':>14}{'dev vs fp64':>13}")
        for name, seconds in best.items():
            rate = len(paths) / seconds
            dev = _deviation(results[name], results["eager"])
            dev64 = _deviation(results[name][:2], reference64)
            print(f"{name:<24}{rate:>10.2f}{rate * gflop:>10.1f}{_peak_mb():>10.0f}{dev:>14.1e}{dev64:>13.1e}")
        with open("/proc/loadavg") as handle:
            print(f"load average at end: {handle.read().split()[:3]} (the machine has {os.cpu_count()} CPUs)")


if __name__ == "__main__":
    main()
