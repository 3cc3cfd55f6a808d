"""Training step time of the full-size CycleGAN (ResNet-9 generators, 70x70 PatchGANs), batch 1, 256 x 256.

Two measurements, each in its own subprocess so the peak resident memory (ru_maxrss) is its own:

* ``step``: ``CycleGANTrainer.train_step`` on one fixed in-memory batch (the network cost alone). FLOPs of one
  step are counted with ``torch.utils.flop_counter`` (6 generator and 8 discriminator forwards plus their
  backward passes), so the achieved GFLOP/s can be set against the machine's matmul rate;
* ``fit``: ``Trainer.fit`` on a synthetic prepared BCI set (data loading with ``--num-workers``, metrics,
  progress, a checkpoint at the end) for the same number of steps; the difference is the loop's overhead.

    python benchmarks/bench_train_cyclegan.py                  # 3 timed steps after 1 warm-up, fp32 CPU
    python benchmarks/bench_train_cyclegan.py --steps 5 --threads 2 --device cuda --precision auto
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # kilobytes on Linux


def _manager(args: argparse.Namespace):
    from histostain.runtime.device import DeviceManager

    return DeviceManager.create(args.device, args.precision, num_threads=args.threads)


def child_step(args: argparse.Namespace) -> dict:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from histostain.runtime.training import RunDirectory
    from histostain.translation.train_config import CycleGANConfig
    from histostain.translation.trainer import CycleGANTrainer

    manager = _manager(args)
    with tempfile.TemporaryDirectory() as tmp:
        run = RunDirectory(tmp, "bench")
        run.create()
        trainer = CycleGANTrainer(CycleGANConfig(num_workers=0, tensorboard=False), run, manager)
        generator = torch.Generator().manual_seed(0)
        size = args.size
        batch = {
            "A": torch.rand(1, 3, size, size, generator=generator) * 2 - 1,
            "B": torch.rand(1, 3, size, size, generator=generator) * 2 - 1,
        }
        with FlopCounterMode(display=False) as counter:
            trainer.train_step(batch)  # warm-up and FLOP count
        flops = counter.get_total_flops()
        times = []
        for _ in range(args.steps):
            start = time.perf_counter()
            trainer.train_step(batch)
            if manager.plan.kind == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return {
        "mode": "step",
        "steps": args.steps,
        "seconds_per_step": median,
        "seconds_all": times,
        "images_per_s": 1.0 / median,
        "gflop_per_step": flops / 1e9,
        "gflop_per_s": flops / 1e9 / median,
        "peak_mb": _peak_mb(),
        "threads": torch.get_num_threads(),
    }


def child_fit(args: argparse.Namespace) -> dict:
    import torch

    from histostain.datasets.bci import prepare_bci
    from histostain.datasets.torch_data import TranslationPairs
    from histostain.runtime.training import RunDirectory
    from histostain.synth import write_dataset
    from histostain.translation.train_config import CycleGANConfig
    from histostain.translation.trainer import CycleGANTrainer

    manager = _manager(args)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_dataset("bci", root / "raw", n=max(4, args.steps + 2), size=args.size, seed=0)
        prepare_bci(root / "raw", root / "prepared", patch=args.size, size=0, val_fraction=0.0, seed=0)
        config = CycleGANConfig(
            crop=args.size,
            num_workers=args.num_workers,
            max_steps=args.steps + 1,
            log_every=1,
            sample_every=0,
            val_every=0,
            tensorboard=False,
        )
        run = RunDirectory(root / "runs", "bench")
        run.create()
        trainer = CycleGANTrainer(config, run, manager)
        stamps: list[float] = []
        trainer.on_step_end = lambda _t: stamps.append(time.perf_counter())
        started = time.perf_counter()
        trainer.fit(TranslationPairs(root / "prepared", "train", paired=False, crop=args.size, seed=0))
        total = time.perf_counter() - started
    steps = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]  # the first step is the warm-up
    median = statistics.median(steps)
    return {
        "mode": "fit",
        "steps": len(steps),
        "seconds_per_step": median,
        "seconds_all": steps,
        "images_per_s": 1.0 / median,
        "seconds_total_incl_setup_and_checkpoint": total,
        "peak_mb": _peak_mb(),
        "threads": torch.get_num_threads(),
    }


def _run(mode: str, argv: list[str]) -> dict:
    command = [sys.executable, __file__, "--child", mode, *argv]
    result = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3, help="timed steps (after one warm-up step)")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--num-workers", type=int, default=1, help="DataLoader workers in the fit measurement")
    parser.add_argument("--modes", nargs="+", default=["step", "fit"], choices=["step", "fit"])
    parser.add_argument("--child", choices=["step", "fit"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        result = child_step(args) if args.child == "step" else child_fit(args)
        print(json.dumps(result))
        return
    argv = [
        "--steps",
        str(args.steps),
        "--size",
        str(args.size),
        "--device",
        args.device,
        "--precision",
        args.precision,
        "--num-workers",
        str(args.num_workers),
    ]
    if args.threads is not None:
        argv += ["--threads", str(args.threads)]
    with open("/proc/loadavg") as handle:
        load = handle.read().split()[:3]
    print(f"CycleGAN training step, batch 1, {args.size}x{args.size}, {args.device} {args.precision}; load {load}")
    results = {mode: _run(mode, argv) for mode in args.modes}
    for mode, r in results.items():
        line = f"{mode:>4}: {r['seconds_per_step']:.2f} s/step ({r['images_per_s']:.3f} images/s)"
        line += f", peak {r['peak_mb']:.0f} MB"
        if "gflop_per_step" in r:
            line += f", {r['gflop_per_step']:.0f} GFLOP/step = {r['gflop_per_s']:.0f} GFLOP/s"
        print(line + f", threads {r['threads']}, per step {[round(s, 2) for s in r['seconds_all']]}")
    if "step" in results and "fit" in results:
        overhead = results["fit"]["seconds_per_step"] / results["step"]["seconds_per_step"] - 1
        print(f"loop overhead (fit vs. bare step): {100 * overhead:+.1f}%")


if __name__ == "__main__":
    main()
