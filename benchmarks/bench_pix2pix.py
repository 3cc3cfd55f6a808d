"""Full-size pix2pix (``unet_256``, ngf 64, batch norm, 54.4 M parameters) on this machine: inference and training.

Each measurement runs in its own subprocess so its peak resident memory (VmHWM) is its own:

* ``forward``: images/s of the generator alone in inference (eval mode, ``torch.inference_mode``), batch 1, at
  256 x 256 and at 1024 x 1024 (the BCI images' native size; the U-Net is fully convolutional);
* ``step``: one ``Pix2PixTrainer.train_step`` at batch 1, 256 x 256 (G forward, D on real and fake pairs, D
  backward, G's GAN + L1 terms, G backward, both Adam steps), with ``--loss l1`` or ``pyramid``, and its FLOPs
  counted by ``torch.utils.flop_counter``.

    python benchmarks/bench_pix2pix.py                      # fp32 CPU, 2 threads, 2 warm-ups + 5 timed repeats
    python benchmarks/bench_pix2pix.py --device cuda --precision auto --repeats 10
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time

from _peak_memory import peak_mb


def _manager(args: argparse.Namespace):
    from histostain.runtime.device import DeviceManager

    return DeviceManager.create(args.device, args.precision, num_threads=args.threads)


def child_forward(args: argparse.Namespace) -> dict:
    import torch

    from histostain.translation.pix2pix import define_pix2pix_generator, set_norm_mode

    manager = _manager(args)
    model = manager.prepare_model(define_pix2pix_generator("unet_256")).eval()
    set_norm_mode(model, args.norm_mode)
    x = manager.to_device(torch.rand(1, 3, args.size, args.size) * 2 - 1)
    with torch.inference_mode(), manager.autocast():
        for _ in range(args.warmup):  # the first calls pay for allocations and kernel selection
            model(x)
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            model(x)
            if manager.device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    params = sum(p.numel() for p in model.parameters())
    return {
        "what": "forward",
        "size": args.size,
        "norm_mode": args.norm_mode,
        "params": params,
        "seconds_per_image": seconds,
        "images_per_s": 1.0 / seconds,
        "peak_rss_mb": peak_mb(),
    }


def child_step(args: argparse.Namespace) -> dict:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from histostain.runtime.training import RunDirectory
    from histostain.translation.pix2pix_config import Pix2PixConfig
    from histostain.translation.pix2pix_trainer import Pix2PixTrainer

    manager = _manager(args)
    with tempfile.TemporaryDirectory() as tmp:
        run = RunDirectory(tmp, "bench")
        run.create()
        config = Pix2PixConfig(num_workers=0, tensorboard=False, loss=args.loss)
        trainer = Pix2PixTrainer(config, run, manager)
        generator = torch.Generator().manual_seed(0)
        batch = {
            "A": torch.rand(1, 3, args.size, args.size, generator=generator) * 2 - 1,
            "B": torch.rand(1, 3, args.size, args.size, generator=generator) * 2 - 1,
        }
        with FlopCounterMode(display=False) as counter:
            trainer.train_step(batch)  # warm-up and FLOP count
        for _ in range(args.warmup - 1):
            trainer.train_step(batch)
        flops = counter.get_total_flops()
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            trainer.train_step(batch)
            if manager.device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    return {
        "what": "step",
        "size": args.size,
        "loss": args.loss,
        "seconds_per_step": seconds,
        "gflop_per_step": flops / 1e9,
        "gflop_per_s": flops / 1e9 / seconds,
        "peak_rss_mb": peak_mb(),
    }


def _child(args: argparse.Namespace, what: str, **changes: object) -> dict:
    values = {**vars(args), **changes}
    command = [sys.executable, __file__, "--child", what]
    for key in ("device", "precision", "threads", "repeats", "warmup", "size", "loss", "norm_mode"):
        command += [f"--{key.replace('_', '-')}", str(values[key])]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--loss", default="l1", choices=("l1", "pyramid"))
    parser.add_argument("--norm-mode", default="eval", choices=("eval", "per-input"))
    parser.add_argument("--child", choices=("forward", "step"))
    args = parser.parse_args()
    if args.child:
        result = child_forward(args) if args.child == "forward" else child_step(args)
        print(json.dumps(result))
        return
    results = [
        _child(args, "forward", size=256),
        _child(args, "forward", size=1024),
        _child(args, "step", size=256, loss="l1"),
        _child(args, "step", size=256, loss="pyramid"),
    ]
    for result in results:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
