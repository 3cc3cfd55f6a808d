"""Training step time and peak memory of the full-size HoVer-Net fast network (37.6 M parameters, 6 types).

``HoVerNetTrainer.train_step`` (forward, the reference losses, backward, Adam) on one fixed batch of synthetic
256 x 256 tiles with their real targets (164 x 164), in both phases: phase 1 (encoder frozen: no encoder
backward) and phase 2 (every layer). Each phase runs in its own subprocess so the peak resident memory
(ru_maxrss) is its own.

    python benchmarks/bench_train_hovernet.py                        # batch 1, 2 timed steps after 1 warm-up
    python benchmarks/bench_train_hovernet.py --batch 4 --steps 3 --threads 2
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


def child(args: argparse.Namespace) -> dict:
    import numpy as np
    import torch

    from histostain.runtime.device import DeviceManager
    from histostain.runtime.training import RunDirectory
    from histostain.segmentation.targets import make_targets
    from histostain.segmentation.train import HoVerNetConfig, HoVerNetTrainer
    from histostain.synth import generate_tile

    manager = DeviceManager.create(args.device, args.precision, num_threads=args.threads)
    items = []
    for seed in range(args.batch):
        tile = generate_tile(seed, 256)
        targets = make_targets(tile.inst_map, (164, 164), tile.type_map)
        items.append((tile.he.transpose(2, 0, 1).astype(np.float32), targets))
    batch = {
        "image": torch.from_numpy(np.stack([image for image, _ in items])),
        "np": torch.from_numpy(np.stack([t.np for _, t in items]).astype(np.int64)),
        "hv": torch.from_numpy(np.stack([t.hv for _, t in items])),
        "tp": torch.from_numpy(np.stack([t.tp for _, t in items])),
    }
    with tempfile.TemporaryDirectory() as tmp:
        run = RunDirectory(tmp, "bench")
        run.create()
        config = HoVerNetConfig(phase1_epochs=1 if args.phase == 1 else 0, num_workers=0, tensorboard=False)
        trainer = HoVerNetTrainer(config, run, manager)
        assert trainer.phase == args.phase
        before = _peak_mb()
        trainer.train_step(batch)  # warm-up
        times = []
        for _ in range(args.steps):
            started = time.perf_counter()
            trainer.train_step(batch)
            if manager.plan.kind == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - started)
    return {
        "phase": args.phase,
        "batch": args.batch,
        "threads": torch.get_num_threads(),
        "device": str(manager.device),
        "precision": manager.precision,
        "step_s_median": statistics.median(times),
        "step_s_all": [round(t, 3) for t in times],
        "images_per_s": args.batch / statistics.median(times),
        "peak_rss_mb": _peak_mb(),
        "rss_before_first_step_mb": before,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--phase", type=int, choices=(1, 2), default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase is not None:
        print(json.dumps(child(args)))
        return
    try:
        load = Path("/proc/loadavg").read_text().split()[:3]
    except OSError:
        load = ["?"]
    print(f"load average before: {' '.join(load)}")
    for phase in (1, 2):
        command = [sys.executable, __file__, "--phase", str(phase), "--batch", str(args.batch)]
        command += ["--steps", str(args.steps), "--device", args.device, "--precision", args.precision]
        if args.threads is not None:
            command += ["--threads", str(args.threads)]
        out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        result = json.loads(out.strip().splitlines()[-1])
        label = "encoder frozen" if phase == 1 else "all layers"
        print(
            f"phase {phase} ({label}): batch {result['batch']}, {result['threads']} threads, {result['device']} "
            f"{result['precision']}: {result['step_s_median']:.2f} s/step (all {result['step_s_all']}), "
            f"{result['images_per_s']:.2f} images/s, peak RSS {result['peak_rss_mb']:.0f} MB "
            f"(model + Adam before the first step {result['rss_before_first_step_mb']:.0f} MB)"
        )


if __name__ == "__main__":
    main()
