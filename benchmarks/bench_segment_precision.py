"""Does the precision of HoVer-Net inference change the nuclei? bf16 (and fp16) autocast against fp32 on a CPU.

Trains a small HoVer-Net (fast mode, scaled widths, by default one unit per stage; a type branch) on synthetic
PanNuke-layout tiles (``histostain.synth.generate_tile``, 0.25 um/px) with the reference losses
(``HoVerNetLoss``) and targets (``make_targets``), Adam, the lr divided by 10 for the last quarter of the steps.
The 1x1 output convolutions of the heads start at zero (the reference's Kaiming fan-out init gives them
weights of std 1, and the HV head then needs hundreds of steps before the post-processing finds any marker).

At each ``--eval-at`` step the network segments ``--test-n`` held-out tiles of ``--test-size`` px with
``HoVerNetPredictor`` (the reference tile geometry, 256-px patches) under each precision of a CPU
``DeviceManager`` and ``instances_from_hovernet_maps``, and the bench prints, per precision:

- PQ against the synthetic ground truth (mean over tiles, and pooled: TP/FP/FN/IoU summed over tiles);
- PQ of the instance map against the fp32 instance map (mean, min over tiles, pooled);
- nuclei counts, centroids of the fp32 nuclei with no partner within 2 px (``match_points``) and the largest
  shift of a paired centroid, pixels whose NP decision (P >= 0.5) flips, the largest NP/HV map difference,
  and with a type branch the fraction of paired nuclei whose type changes;
- time per tile (the maps; post-processing excluded).

On a CPU without native bf16 (avx512_bf16/amx_bf16) autocast is emulated: it rounds where native bf16 rounds
(weights and activations to 8-bit mantissas, fp32 accumulation), so the differences are representative; the
times are not.

    python benchmarks/bench_segment_precision.py                         # ~10 min (one thread, 2-core EPYC)
    python benchmarks/bench_segment_precision.py --steps 800 --eval-at 400 --seed 1 --test-n 8
    # the published depth, narrow (215k parameters; ~15 min):
    python benchmarks/bench_segment_precision.py --units 3,4,6,3 --decoder-units 8,4 --encoder-width 0.0625
        --decoder-width 0.125 --size 160 --batch 4 --steps 800 --eval-at 400 --test-n 8

Figures and the decision they led to: docs/segment-precision.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from typing import Any

import numpy as np


def build(args: argparse.Namespace) -> Any:
    import torch

    from histostain.segmentation.hovernet import HoVerNet

    torch.manual_seed(args.seed)
    net = HoVerNet(
        "fast",
        args.types or None,
        encoder_width=args.encoder_width,
        units=[int(u) for u in args.units.split(",")],
        decoder_width=args.decoder_width,
        decoder_units=[int(u) for u in args.decoder_units.split(",")],
    )
    for branch in net.decoder.values():  # zero-initialised output layers: every head starts at 0
        torch.nn.init.zeros_(branch.u0.conv.weight)
        torch.nn.init.zeros_(branch.u0.conv.bias)
    return net


def training_data(args: argparse.Namespace, output: int) -> dict[str, Any]:
    import torch

    from histostain.segmentation.targets import make_targets
    from histostain.synth import generate_tile

    tiles = [generate_tile(10_000 + i, args.size) for i in range(args.train_n)]
    targets = [make_targets(t.inst_map, (output, output), t.type_map if args.types else None) for t in tiles]
    data = {
        "image": torch.from_numpy(np.stack([t.he.transpose(2, 0, 1) for t in tiles]).astype(np.float32)),
        "np": torch.from_numpy(np.stack([t.np for t in targets]).astype(np.int64)),
        "hv": torch.from_numpy(np.stack([t.hv for t in targets])),
    }
    if args.types:
        data["tp"] = torch.from_numpy(np.stack([t.tp for t in targets]))
    return data


def segment(net: Any, precision: str, images: list[np.ndarray]) -> tuple[list[Any], list[Any], float]:
    """(maps, nuclei, seconds per tile for the maps) of every image under one precision."""
    from histostain.runtime.device import DeviceManager
    from histostain.segmentation.inference import HoVerNetPredictor
    from histostain.segmentation.postprocess import instances_from_hovernet_maps

    predictor = HoVerNetPredictor(net, DeviceManager.create("cpu", precision), batch_size=4)
    predictor.maps(images[0][:64, :64])  # warm-up (oneDNN primitive creation)
    started = time.perf_counter()
    maps = [predictor.maps(image) for image in images]
    seconds = (time.perf_counter() - started) / len(images)
    nuclei = [instances_from_hovernet_maps(m.np_prob, m.hv, m.tp_prob) for m in maps]
    return maps, nuclei, seconds


def pq_summary(pairs: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
    from histostain.metrics.instance import pq, pq_from_counts

    results = [pq(true, pred) for true, pred in pairs]
    tp = sum(r.pairing.tp for r in results)
    fp = sum(r.pairing.fp for r in results)
    fn = sum(r.pairing.fn for r in results)
    iou = sum(r.pairing.iou_sum for r in results)
    values = np.array([r.pq for r in results])
    values = values[~np.isnan(values)]  # NaN: neither map has a nucleus
    return {
        "mean": float(values.mean()) if values.size else float("nan"),
        "min": float(values.min()) if values.size else float("nan"),
        "pooled": pq_from_counts(tp, fp, fn, iou)[2],
    }


def compare(reference: tuple[list[Any], list[Any]], other: tuple[list[Any], list[Any]]) -> dict[str, Any]:
    """How far ``other`` (maps, nuclei) is from the fp32 ``reference``."""
    from histostain.metrics.detection import match_points

    ref_maps, ref_nuclei = reference
    maps, nuclei = other
    unpaired, shift, type_changes, typed_pairs = 0, 0.0, 0, 0
    for a, b in zip(ref_nuclei, nuclei, strict=True):
        pairs, free_ref, _ = match_points(a.centroids, b.centroids, radius=2.0)
        unpaired += len(free_ref)
        if len(pairs):
            shift = max(shift, float(np.linalg.norm(a.centroids[pairs[:, 0]] - b.centroids[pairs[:, 1]], axis=1).max()))
            if a.types is not None and b.types is not None:
                type_changes += int((a.types[pairs[:, 0]] != b.types[pairs[:, 1]]).sum())
                typed_pairs += len(pairs)
    return {
        "pq_vs_fp32": pq_summary([(a.inst_map, b.inst_map) for a, b in zip(ref_nuclei, nuclei, strict=True)]),
        "unpaired_centroids": unpaired,
        "max_centroid_shift_px": shift,
        "np_flips": int(
            sum(((a.np_prob >= 0.5) != (b.np_prob >= 0.5)).sum() for a, b in zip(ref_maps, maps, strict=True))
        ),
        "max_np_diff": float(max(np.abs(a.np_prob - b.np_prob).max() for a, b in zip(ref_maps, maps, strict=True))),
        "max_hv_diff": float(max(np.abs(a.hv - b.hv).max() for a, b in zip(ref_maps, maps, strict=True))),
        "type_changes": f"{type_changes}/{typed_pairs}" if typed_pairs else "-",
    }


def evaluate(net: Any, precisions: list[str], tiles: list[Any]) -> dict[str, dict[str, Any]]:
    images = [t.he for t in tiles]
    runs = {p: segment(net, p, images) for p in precisions}
    rows: dict[str, dict[str, Any]] = {}
    for precision, (maps, nuclei, seconds) in runs.items():
        row: dict[str, Any] = {
            "pq_vs_truth": pq_summary([(t.inst_map, n.inst_map) for t, n in zip(tiles, nuclei, strict=True)]),
            "nuclei": sum(len(n.ids) for n in nuclei),
            "s_per_tile": seconds,
        }
        if precision != "fp32":
            row.update(compare(runs["fp32"][:2], (maps, nuclei)))
        rows[precision] = row
    return rows


def show(step: int, seconds: float, truth: int, rows: dict[str, dict[str, Any]]) -> None:
    print(f"\nafter {step} steps ({seconds:.0f} s of training); {truth} true nuclei in the test tiles")
    head = (
        f"{'precision':9} {'PQ truth mean/pooled':>20} {'nuclei':>6} {'s/tile':>7}"
        f" {'PQ vs fp32 mean/min/pooled':>27} {'unpaired':>8} {'shift':>6} {'NP flips':>8}"
        f" {'max dNP':>8} {'max dHV':>8} {'types':>8}"
    )
    print(head)
    for precision, row in rows.items():
        truth_pq = f"{row['pq_vs_truth']['mean']:.4f}/{row['pq_vs_truth']['pooled']:.4f}"
        line = f"{precision:9} {truth_pq:>20} {row['nuclei']:>6} {row['s_per_tile']:>7.3f}"
        if "pq_vs_fp32" in row:
            vs = row["pq_vs_fp32"]
            line += (
                f" {vs['mean']:.4f}/{vs['min']:.4f}/{vs['pooled']:.4f}".rjust(28)
                + f" {row['unpaired_centroids']:>8} {row['max_centroid_shift_px']:>6.2f} {row['np_flips']:>8}"
                f" {row['max_np_diff']:>8.4f} {row['max_hv_diff']:>8.4f} {row['type_changes']:>8}"
            )
        print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-n", type=int, default=64, help="synthetic training tiles")
    parser.add_argument("--size", type=int, default=80, help="training tile side")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--encoder-width", type=float, default=0.125)
    parser.add_argument("--decoder-width", type=float, default=0.25)
    parser.add_argument("--units", default="1,1,1,1", help="encoder units per stage (published: 3,4,6,3)")
    parser.add_argument("--decoder-units", default="1,1", help="dense units of u3,u2 (published: 8,4)")
    parser.add_argument("--types", type=int, default=6, help="type channels (PanNuke: 6); 0 for no type branch")
    parser.add_argument("--test-n", type=int, default=6, help="held-out tiles")
    parser.add_argument("--test-size", type=int, default=232, help="held-out tile side (232 = one 256-px patch)")
    parser.add_argument("--eval-at", default="100,200", help="steps after which to compare precisions")
    parser.add_argument("--no-fp16", action="store_true", help="compare bf16 only")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (2 pays only on an idle machine)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=str, default=None, help="also write every figure to this JSON file")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)  # the manager warns that emulated bf16 is slow: known, and timed

    import torch

    from histostain.segmentation.losses import HoVerNetLoss
    from histostain.synth import generate_tile

    torch.set_num_threads(args.threads)
    net = build(args)
    data = training_data(args, net.output_size(args.size))
    tests = [generate_tile(50_000 + i, args.test_size) for i in range(args.test_n)]
    truth = sum(len(t.nuclei) for t in tests)
    milestones = sorted({int(s) for s in args.eval_at.split(",") if s.strip()} | {args.steps})
    precisions = ["fp32", "bf16"] + ([] if args.no_fp16 else ["fp16"])
    optimiser = torch.optim.Adam(net.parameters(), lr=args.lr)
    decay = torch.optim.lr_scheduler.MultiStepLR(optimiser, [int(0.75 * args.steps)], gamma=0.1)
    criterion = HoVerNetLoss()
    order = torch.Generator().manual_seed(args.seed)
    print(
        f"HoVer-Net fast, widths {args.encoder_width}/{args.decoder_width}, units {args.units} / {args.decoder_units},"
        f" types {args.types or 'none'}, {sum(p.numel() for p in net.parameters())} parameters;"
        f" {args.train_n} tiles of {args.size} px, batch {args.batch}, lr {args.lr}; {args.threads} threads;"
        f" test: {args.test_n} tiles of {args.test_size} px; native bf16: {_native_bf16()}"
    )
    report: dict[str, Any] = {"args": vars(args), "evaluations": []}
    trained = 0.0
    for step in range(1, args.steps + 1):
        net.train()
        started = time.perf_counter()
        pick = torch.randperm(args.train_n, generator=order)[: args.batch]
        batch = {key: value[pick] for key, value in data.items()}
        loss, _ = criterion(net(batch.pop("image")), batch)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        decay.step()
        trained += time.perf_counter() - started
        if step in milestones:
            net.eval()
            rows = evaluate(net, precisions if step == args.steps else precisions[:2], tests)
            show(step, trained, truth, rows)
            report["evaluations"].append({"step": step, "train_s": trained, "loss": loss.item(), "rows": rows})
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(report, handle, indent=1)


def _native_bf16() -> bool:
    from histostain.runtime.device import cpu_has_native_bf16

    return cpu_has_native_bf16()


if __name__ == "__main__":
    main()
