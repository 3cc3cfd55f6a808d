"""Speed of `histostain evaluate celldet` on 10,000 images x 50 nuclei (the issue's benchmark).

Prints the seconds for (1) matching and pooling alone, in memory (``score_detection``, the array-level
scorer the service and the pipeline share), with classes, then with three score thresholds as well, and (2)
the whole service from files: ground truth as EndoNuke-style centroid txt, predictions as hover_net JSON,
read, paired by stem, matched and scored. Peak resident memory (ru_maxrss) is
printed after each step. The files are written to a temporary folder first (not timed).

    python benchmarks/bench_celldet.py                     # 10,000 images x 50 nuclei
    python benchmarks/bench_celldet.py --images 2000 --nuclei 100
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import numpy as np


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # kilobytes on Linux


def _synthetic(n_images: int, n_nuclei: int, seed: int = 0):
    """GT uniformly in a 256 px tile; predictions = GT jittered by ~3 px, 10% missed, 10% spurious."""
    from histostain.metrics.detection import ImagePoints

    rng = np.random.default_rng(seed)
    images = []
    for _ in range(n_images):
        true = rng.uniform(0, 256, (n_nuclei, 2))
        keep = rng.random(n_nuclei) > 0.1
        pred = np.concatenate(
            [true[keep] + rng.normal(0, 3, (keep.sum(), 2)), rng.uniform(0, 256, (n_nuclei // 10, 2))]
        )
        images.append(
            (
                ImagePoints(true, rng.integers(0, 3, n_nuclei)),
                ImagePoints(pred, rng.integers(0, 3, len(pred)), rng.random(len(pred))),
            )
        )
    return images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--nuclei", type=int, default=50)
    parser.add_argument("--skip-files", action="store_true", help="only the in-memory measurement")
    args = parser.parse_args()

    from histostain.metrics.detection import score_detection
    from histostain.metrics.evaluate_celldet import evaluate_celldet

    images = _synthetic(args.images, args.nuclei)
    true_points, pred_points = [t for t, _ in images], [p for _, p in images]
    print(f"{args.images} images x {args.nuclei} nuclei (import + data: peak {_peak_mb():.0f} MB)")

    start = time.perf_counter()
    result = score_detection(true_points, pred_points, radius=12.0)
    seconds = time.perf_counter() - start
    print(
        f"match + pool + 3 classes:        {seconds:7.2f} s  F1 {result.summary['f1']:.4f}  "
        f"F1 class 1 {result.tables['per_class'][1]['f1']:.4f}  peak {_peak_mb():.0f} MB"
    )

    start = time.perf_counter()
    score_detection(true_points, pred_points, radius=12.0, thresholds=(0.3, 0.5, 0.7))
    print(f"the same + 3 score thresholds:   {time.perf_counter() - start:7.2f} s")

    if args.skip_files:
        return
    from histostain.io.annotations import Nucleus, write_centroids_txt, write_hovernet_json
    from histostain.runtime.progress import configure

    configure(enabled=False, log_interval=1e9)
    with tempfile.TemporaryDirectory() as tmp:
        gt, pred = Path(tmp) / "gt", Path(tmp) / "pred" / "json"
        gt.mkdir()
        pred.mkdir(parents=True)
        start = time.perf_counter()
        for i, (t, p) in enumerate(images):
            write_centroids_txt(
                gt / f"{i}.txt",
                [
                    Nucleus(id=k + 1, centroid=tuple(xy), type=int(c))
                    for k, (xy, c) in enumerate(zip(t.xy, t.labels, strict=True))
                ],
            )
            write_hovernet_json(
                pred / f"{i}.json",
                [
                    Nucleus(id=k + 1, centroid=tuple(xy), type=int(c))
                    for k, (xy, c) in enumerate(zip(p.xy, p.labels, strict=True))
                ],
            )
        print(f"(writing {2 * len(images)} files, not part of the metric: {time.perf_counter() - start:.1f} s)")
        start = time.perf_counter()
        result = evaluate_celldet(gt, pred.parent)
        seconds = time.perf_counter() - start
        print(
            f"evaluate_celldet from files:     {seconds:7.2f} s  F1 {result.summary['f1']:.4f}  "
            f"({len(images) / seconds:.0f} images/s)  peak {_peak_mb():.0f} MB"
        )


if __name__ == "__main__":
    main()
