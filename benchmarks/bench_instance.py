"""Speed of `histostain evaluate instance`: the hover_net protocol per image and the PanNuke protocol.

Synthetic instance maps: round nuclei (radius 4-9 px) at random centres, cut where they meet (nearest centre),
spread over the five PanNuke classes; the prediction shifts every nucleus by up to 2 px, drops 10 % and adds
10 % false positives, so every pairing branch is exercised.

- hover_net protocol: milliseconds per image of ``instance_metrics`` (Dice, AJI, AJI+, DQ, SQ, PQ) at
  256 x 256 (PanNuke-like, ~40 nuclei) and 1000 x 1000 (CoNSeP-like, ~600 nuclei).
- PanNuke protocol: seconds for ``--n`` images (default 2,722 = PanNuke fold 3) of 256 x 256. By default the
  images cycle through a pool of 64 distinct masks held in memory (compute only). ``--disk`` writes both
  ``masks.npy`` (``--dtype``, default float64 as published: 8.6 GB per side for 2,722 images, so use a
  smaller ``--n``) plus ``types.npy`` to a temporary folder and runs the full service from the files
  (memory-mapped, image by image), printing the peak resident memory too.

    python benchmarks/bench_instance.py
    python benchmarks/bench_instance.py --disk --n 500 --dtype int32
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from _peak_memory import peak_mb  # benchmarks/_peak_memory.py (run as a script)


def synthetic_pair(rng: np.random.Generator, size: int, n_nuclei: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(true instance map, predicted instance map, class of each true id 0..4) of one image."""

    def draw(centres: np.ndarray, radii: np.ndarray) -> np.ndarray:
        seeds = np.zeros((size, size), np.int32)
        if len(centres) == 0:
            return seeds
        seeds[centres[:, 0], centres[:, 1]] = np.arange(1, len(centres) + 1)
        distance, (rows, cols) = ndi.distance_transform_edt(seeds == 0, return_indices=True)
        nearest = seeds[rows, cols]
        return np.where(distance <= radii[np.maximum(nearest - 1, 0)], nearest, 0).astype(np.int32)

    centres = rng.integers(0, size, (n_nuclei, 2))
    radii = rng.uniform(4, 9, n_nuclei)
    true = draw(centres, radii)
    keep = rng.random(n_nuclei) > 0.1
    moved = np.clip(centres[keep] + rng.integers(-2, 3, (int(keep.sum()), 2)), 0, size - 1)
    extra = rng.integers(0, size, (n_nuclei // 10, 2))
    pred_centres = np.concatenate([moved, extra])
    pred_radii = np.concatenate([radii[keep] * rng.uniform(0.8, 1.2, int(keep.sum())), rng.uniform(4, 9, len(extra))])
    pred = draw(pred_centres, pred_radii)
    return true, pred, rng.integers(0, 5, n_nuclei + 1)


def to_masks(inst: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """(H, W, 6) PanNuke masks: channel c holds the ids of class-c nuclei; channel 5 the background flag."""
    masks = np.zeros((*inst.shape, 6), np.int32)
    owner = classes[inst]
    for channel in range(5):
        masks[..., channel] = np.where((owner == channel) & (inst > 0), inst, 0)
    masks[..., 5] = inst == 0
    return masks


class CyclingMasks:
    """``n`` images served from a small pool, so the protocol can run on thousands without the memory."""

    def __init__(self, pool: list[np.ndarray], n: int) -> None:
        self.pool, self.n = pool, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> np.ndarray:
        return self.pool[index % len(self.pool)]


def bench_hovernet(rng: np.random.Generator, repeats: int) -> None:
    from histostain.metrics.instance import instance_metrics

    for size, nuclei in ((256, 40), (1000, 600)):
        pairs = [synthetic_pair(rng, size, nuclei)[:2] for _ in range(repeats)]
        instance_metrics(*pairs[0])  # warm-up (imports)
        start = time.perf_counter()
        for true, pred in pairs:
            scores = instance_metrics(true, pred)
        per_image = (time.perf_counter() - start) / len(pairs) * 1000
        print(
            f"hover_net protocol {size}x{size}, ~{scores['n_true']} nuclei: {per_image:.2f} ms/image "
            f"(PQ {scores['pq']:.3f}, AJI {scores['aji']:.3f})"
        )


def bench_pannuke(rng: np.random.Generator, n: int, disk: bool, dtype: str) -> None:
    from histostain.metrics.pannuke import pannuke_scores
    from histostain.vocabulary import PANNUKE_TISSUES

    pool_true, pool_pred = [], []
    for _ in range(64):
        true, pred, classes = synthetic_pair(rng, 256, int(rng.integers(0, 60)))
        pool_true.append(to_masks(true, classes))
        ids = np.arange(pred.max() + 1)
        under = np.asarray(ndi.maximum(true, pred, ids), np.int64)  # a true id under each prediction (0: none)
        pred_classes = np.where(rng.random(ids.size) < 0.8, classes[under], rng.integers(0, 5, ids.size))
        pool_pred.append(to_masks(pred, pred_classes))
    tissues = np.array([PANNUKE_TISSUES[i % len(PANNUKE_TISSUES)] for i in range(n)])
    if not disk:
        start = time.perf_counter()
        scores = pannuke_scores(CyclingMasks(pool_true, n), CyclingMasks(pool_pred, n), tissues)
        seconds = time.perf_counter() - start
        print(
            f"PanNuke protocol, {n} images 256x256 in memory: {seconds:.1f} s ({n / seconds:.0f} images/s), "
            f"mPQ {scores.mpq:.4f} bPQ {scores.bpq:.4f}, peak RSS {peak_mb():.0f} MB"
        )
        return
    folder = Path(tempfile.mkdtemp(prefix="bench_instance_"))
    try:
        for side, pool in (("true", pool_true), ("pred", pool_pred)):
            (folder / side).mkdir()
            out = np.lib.format.open_memmap(folder / side / "masks.npy", "w+", np.dtype(dtype), (n, 256, 256, 6))
            for i in range(n):
                out[i] = pool[i % len(pool)]
            out.flush()
            del out
        np.save(folder / "true" / "types.npy", tissues)
        size_gb = (folder / "true" / "masks.npy").stat().st_size / 1e9
        # a fresh process, so the peak resident memory is the evaluation's own
        report = subprocess.run(
            [sys.executable, __file__, "--child", str(folder)], check=True, capture_output=True, text=True
        ).stdout
        child = json.loads(report.strip().splitlines()[-1])
        print(
            f"PanNuke protocol, {n} images from disk ({dtype}, {size_gb:.1f} GB per side): {child['seconds']:.1f} s "
            f"({n / child['seconds']:.0f} images/s), mPQ {child['mPQ']:.4f}, peak RSS {child['peak_mb']:.0f} MB "
            f"(after the imports {child['import_mb']:.0f} MB)"
        )
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def child(folder: Path) -> None:
    """Run the full service on the files written by the parent; print seconds and memory as JSON."""
    from histostain.metrics.evaluate_instance import evaluate_instance  # with it, the import baseline

    import_mb = peak_mb()
    start = time.perf_counter()
    result = evaluate_instance(folder / "true", folder / "pred", protocol="pannuke")
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "mPQ": result.summary["mPQ"], "peak_mb": peak_mb(), "import_mb": import_mb}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2722, help="images for the PanNuke protocol")
    parser.add_argument("--repeats", type=int, default=20, help="images per size for the hover_net protocol")
    parser.add_argument("--disk", action="store_true", help="write masks.npy files and run the full service")
    parser.add_argument("--dtype", default="float64", help="masks.npy dtype with --disk (published: float64)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        child(args.child)
        return
    rng = np.random.default_rng(args.seed)
    bench_hovernet(rng, args.repeats)
    bench_pannuke(rng, args.n, args.disk, args.dtype)


if __name__ == "__main__":
    main()
