"""Speed and memory of the full-size HoVer-Net (fast mode, 6 types, 256 -> 164) on the CPU in fp32.

Prints, each measured in its own subprocess so that peak memories (ru_maxrss) do not mix:

* FLOPs per 256x256 tile (``torch.utils.flop_counter.FlopCounterMode``, counted on the meta device, so free);
* eager forward at batch 1 and 8: seconds per batch, images/s, GFLOP/s, peak resident memory;
* ``torch.compile`` forward at the same batches, with the compile time and the maximum absolute difference from
  the eager output on the same input (if compiling fails on this machine, the error is printed instead);
* one training step at batch 1 (forward + all losses + backward + Adam step) and its peak memory.

The reference figures quoted in issue 7 for the official network on the development machine: ~298 GFLOP per tile,
eager ~4.3 s per tile (69 GFLOP/s), compiled ~2.9 s (103 GFLOP/s).

    python benchmarks/bench_hovernet.py                     # everything (several minutes on 2 cores)
    python benchmarks/bench_hovernet.py --batches 1 --no-compile --repeats 2
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

SIZE = 256


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # kilobytes on Linux


def _model(device: str = "cpu"):
    import torch

    from histostain.segmentation.hovernet import HoVerNet

    with torch.device(device):
        return HoVerNet("fast", num_types=6)


def count_flops() -> dict:
    """Forward and training-step FLOPs of one tile, counted symbolically on the meta device."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    model = _model("meta").eval()
    x = torch.empty(1, 3, SIZE, SIZE, device="meta")
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    forward = counter.get_total_flops()
    model.train()
    with FlopCounterMode(display=False) as counter:
        out = model(x)
        sum(v.sum() for v in out.values()).backward()
    return {"forward_gflop": forward / 1e9, "train_gflop": counter.get_total_flops() / 1e9}


def _time(fn, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def child_forward(batch: int, repeats: int, compiled: bool) -> dict:
    import torch

    torch.manual_seed(0)
    model = _model().eval()
    x = torch.rand(batch, 3, SIZE, SIZE) * 255
    result: dict = {"kind": "compile" if compiled else "eager", "batch": batch}
    with torch.inference_mode():
        if compiled:
            eager_out = model(x)
            try:
                fast = torch.compile(model)
                start = time.perf_counter()
                out = fast(x)  # first call compiles
                result["compile_s"] = time.perf_counter() - start
            except Exception as exc:  # report, do not hide: compiling can fail on machines without a C compiler
                result["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
                result["peak_mb"] = _peak_mb()
                return result
            result["max_abs_diff"] = max(float((out[k] - eager_out[k]).abs().max()) for k in out)
            # a randomly initialised network has logits in the thousands: relate the difference to their scale
            result["max_abs_output"] = max(float(eager_out[k].abs().max()) for k in out)
            run = lambda: fast(x)  # noqa: E731
        else:
            model(x)  # warm-up (allocator, oneDNN primitives)
            run = lambda: model(x)  # noqa: E731
        times = _time(run, repeats)
    result["seconds"] = min(times)
    result["seconds_all"] = times
    result["peak_mb"] = _peak_mb()
    return result


def child_train(repeats: int) -> dict:
    import torch

    from histostain.segmentation.losses import HoVerNetLoss

    torch.manual_seed(0)
    model = _model().train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    loss_fn = HoVerNetLoss()
    x = torch.rand(1, 3, SIZE, SIZE) * 255
    out_size = model.output_size(SIZE)
    np_map = (torch.rand(1, out_size, out_size) > 0.5).long()
    target = {"np": np_map, "hv": torch.rand(1, 2, out_size, out_size) * 2 - 1, "tp": np_map * 3}

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        total, _ = loss_fn(model(x), target)
        total.backward()
        optimizer.step()

    step()  # warm-up; also allocates the Adam state
    times = _time(step, repeats)
    return {"kind": "train", "batch": 1, "seconds": min(times), "seconds_all": times, "peak_mb": _peak_mb()}


def run_child(args: list[str]) -> dict:
    command = [sys.executable, __file__, "--child", *args]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        return {"kind": " ".join(args), "error": (result.stderr.strip().splitlines() or ["?"])[-1][:200]}
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=3, help="timed repetitions (the minimum is reported)")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile measurements")
    parser.add_argument("--no-train", action="store_true", help="skip the training-step measurement")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        kind = args.child[0]
        if kind == "flops":
            print(json.dumps(count_flops()))
        elif kind == "train":
            print(json.dumps(child_train(int(args.child[1]))))
        else:
            print(json.dumps(child_forward(int(args.child[1]), int(args.child[2]), kind == "compile")))
        return

    import torch

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, load {load:.2f}")
    flops = run_child(["flops"])
    gflop = flops.get("forward_gflop", float("nan"))
    print(f"FLOPs per {SIZE}x{SIZE} tile: forward {gflop:.1f} GFLOP, training step {flops.get('train_gflop', 0):.1f}")
    jobs = []
    for batch in args.batches:
        jobs.append(["eager", str(batch), str(args.repeats)])
        if not args.no_compile:
            jobs.append(["compile", str(batch), str(args.repeats)])
    if not args.no_train:
        jobs.append(["train", str(args.repeats)])

    print(f"{'run':<8} {'batch':>5} {'s/batch':>9} {'img/s':>7} {'GFLOP/s':>8} {'peak MB':>8}  notes", flush=True)
    for job in jobs:
        row = run_child(job)
        if "seconds" not in row:
            print(f"{row['kind']:<8} {row.get('batch', ''):>5}  failed: {row.get('error')}")
            continue
        per_image = row["seconds"] / row["batch"]
        work = flops.get("train_gflop" if row["kind"] == "train" else "forward_gflop", float("nan"))
        notes = []
        if "compile_s" in row:
            relative = row["max_abs_diff"] / row["max_abs_output"]
            notes.append(
                f"compile {row['compile_s']:.0f} s, max |compiled - eager| {row['max_abs_diff']:.2e} "
                f"(max |output| {row['max_abs_output']:.3g}, relative {relative:.1e})"
            )
        print(
            f"{row['kind']:<8} {row['batch']:>5} {row['seconds']:>9.2f} {1 / per_image:>7.2f} "
            f"{work / per_image:>8.1f} {row['peak_mb']:>8.0f}  {'; '.join(notes)}",
            flush=True,
        )
    load_end = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"load average at the end: {load_end:.2f} (figures on a shared machine are noisy)")


if __name__ == "__main__":
    main()
