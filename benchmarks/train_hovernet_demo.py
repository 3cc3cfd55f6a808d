"""A short real HoVer-Net training run on synthetic PanNuke-layout data: does validation NP Dice rise?

Writes ``--n`` synthetic patches in the published PanNuke layout, prepares them with ``prepare_pannuke``
(random 0.6/0.2/0.2 split), then trains the scaled-down fast network (encoder/decoder width 0.25, one unit per
stage) through the real service (``train_hovernet``: two phases, augmentation, targets, validation every epoch)
and prints the per-epoch validation curve (NP Dice, per-image Dice, HV MSE, type accuracy) and the run time.

    python benchmarks/train_hovernet_demo.py                     # 96 patches of 96 px, 3 + 9 epochs, CPU
    python benchmarks/train_hovernet_demo.py --n 120 --size 128 --phase1 4 --phase2 12 --threads 2
"""

from __future__ import annotations

import argparse
import csv
import logging
import resource
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=96, help="synthetic patches (before the split)")
    parser.add_argument("--size", type=int, default=96, help="patch side")
    parser.add_argument("--phase1", type=int, default=3, help="epochs with the encoder frozen")
    parser.add_argument("--phase2", type=int, default=9, help="epochs training every layer")
    parser.add_argument("--batch", type=int, default=8, help="batch size of both phases")
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam rate (the reference's 1e-4 is for 50+50 epochs)")
    parser.add_argument("--width", type=float, default=0.25, help="encoder and decoder width")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--keep", type=Path, default=None, help="keep data and run here instead of a temp dir")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from histostain.datasets.pannuke import prepare_pannuke
    from histostain.runtime.device import DeviceManager
    from histostain.runtime.training import RunDirectory
    from histostain.segmentation.train import HoVerNetConfig, HoVerNetTrainer, build_datasets, train_hovernet
    from histostain.synth import write_dataset

    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        started = time.perf_counter()
        write_dataset("pannuke", root / "raw", n=args.n, size=args.size, seed=0, overwrite=True)
        prepare_pannuke(root / "raw", root / "prepared", split="random", fractions="0.6,0.2,0.2", overwrite=True)
        prepared_s = time.perf_counter() - started
        config = HoVerNetConfig(
            encoder_width=args.width,
            units=[1, 1, 1, 1],
            decoder_width=args.width,
            decoder_units=[1, 1],
            phase1_epochs=args.phase1,
            phase2_epochs=args.phase2,
            batch_size_phase1=args.batch,
            batch_size_phase2=args.batch,
            lr=args.lr,
            decay_epoch=max(args.phase2, args.phase1) + 1,  # no decay inside this short run
            num_workers=args.workers,
            log_every=0,
            sample_every=0,
            save_every=0,
            tensorboard=False,
        )
        manager = DeviceManager.create("cpu", "fp32", num_threads=args.threads)
        name = f"demo_{int(time.time())}"
        # epoch 0: the same initial network (the trainer seeds before building it), validated before any step
        _, val = build_datasets(root / "prepared", config)
        probe = HoVerNetTrainer(config, RunDirectory(root / "runs", f"{name}_init"), manager, val_dataset=val)
        initial = probe.validate()
        del probe
        config, result = train_hovernet(root / "prepared", config, name=name, runs_dir=root / "runs", manager=manager)
        with (result.run_dir / "metrics.csv").open(newline="") as handle:
            rows = [row for row in csv.DictReader(handle) if row.get("np_dice")]
        print(f"data: {args.n} patches of {args.size} px, prepared in {prepared_s:.1f} s")
        print(
            f"network: fast, widths {args.width}, units 1/1/1/1, decoder 1/1; "
            f"{args.phase1} + {args.phase2} epochs, batch {args.batch}, lr {args.lr}"
        )
        print(f"{'epoch':>5} {'phase':>5} {'np_dice':>8} {'dice':>7} {'np_acc':>7} {'hv_mse':>7} {'tp_acc':>7}")
        rows.insert(0, {"epoch": "0", **{key: str(value) for key, value in initial.items()}})
        for row in rows:
            epoch = int(float(row["epoch"]))
            phase = 0 if epoch == 0 else 1 if epoch <= args.phase1 else 2
            print(
                f"{epoch:>5} {phase:>5} {float(row['np_dice']):>8.4f} {float(row['dice']):>7.4f} "
                f"{float(row['np_acc']):>7.4f} {float(row['hv_mse']):>7.4f} {float(row['tp_acc']):>7.4f}"
            )
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(
            f"training: {result.step} steps in {result.seconds:.1f} s ({result.images_per_second:.1f} images/s, "
            f"validation included), peak RSS {peak:.0f} MB, {args.threads} threads"
        )


if __name__ == "__main__":
    main()
