"""How well the weight-free classical segmenter finds real IHC nuclei: EndoNuke tiles against expert keypoints.

For every tile of an EndoNuke folder (``<root>/images/<id>.png`` with ``<root>/labels/bulk/ptg1/<id>.txt``, the
published layout) it segments with :class:`~histostain.segmentation.classical.ClassicalSegmenter` and matches
the nucleus centroids with the keypoints (Hungarian matching, histostain's ``match_points``, counts pooled over
tiles as ``evaluate celldet`` pools them). Prints:

* P / R / F1 at 3 um (6 px at 0.5 um/px) and 4.5 um with the shipped defaults, and the worst tiles;
* **k-fold cross-validation**: on each fold's training tiles the best of a small grid of the three settings
  that matter most (marker smoothing, marker depth, minimum area) is chosen, then scored on the held-out tiles;
  the pooled held-out F1 estimates what tuning on these tiles is worth on tiles not seen (if it is well below
  the defaults' F1 on all tiles, the defaults are overfitted);
* robustness: F1 when the stain intensity of every tile is scaled in optical density (x0.6, x1.5) and when the
  tiles are upsampled to 0.25 um/px (a 40x scan of the same tissue), none of which a per-tile method should feel.

    python benchmarks/eval_classical_endonuke.py ../shared/data/endonuke-dev/data/dataset
    python benchmarks/eval_classical_endonuke.py DIR --folds 5 --no-grid     # defaults and robustness only
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

MPP = 0.5
GRID = {"marker_sigma_um": (0.75, 1.0, 1.25), "marker_h": (0.03, 0.05, 0.08), "min_area_um2": (3.0, 5.0, 8.0)}


def load_tile(root: Path, tile: str) -> tuple[np.ndarray, np.ndarray]:
    """RGB uint8 tile and its ``(N, 2)`` keypoints (x, y)."""
    from skimage.io import imread

    rgb = imread(root / "images" / f"{tile}.png")[..., :3]
    points = np.loadtxt(root / "labels" / "bulk" / "ptg1" / f"{tile}.txt", ndmin=2)
    return rgb, points[:, :2] if points.size else np.zeros((0, 2))


def transform(rgb: np.ndarray, points: np.ndarray, mode: str) -> tuple[np.ndarray, np.ndarray, float]:
    """The tile as ``mode`` changes it: ``od<k>`` scales the optical density, ``up2`` resamples to 0.25 um/px."""
    if mode.startswith("od"):
        od = -np.log10(np.maximum(rgb, 1) / 255.0)
        return np.clip(255 * 10 ** (-float(mode[2:]) * od), 0, 255).round().astype(np.uint8), points, MPP
    if mode == "up2":
        from skimage.transform import rescale

        big = rescale(rgb, 2, channel_axis=-1, order=1, preserve_range=True)
        return np.clip(big.round(), 0, 255).astype(np.uint8), points * 2 + 0.5, MPP / 2
    return rgb, points, MPP


def score_tile(job: tuple[str, str, str, dict]) -> tuple[str, list[tuple[int, int, int]]]:
    """TP / FP / FN of one tile at 3 um and 4.5 um."""
    from histostain.metrics.detection import match_points
    from histostain.segmentation.classical import ClassicalSegmenter

    root, tile, mode, settings = job
    rgb, points, mpp = transform(*load_tile(Path(root), tile), mode)
    nuclei = ClassicalSegmenter(stain="ihc", mpp=mpp, **settings).segment(rgb)
    found = np.asarray(nuclei.centroids, dtype=np.float64).reshape(-1, 2)
    counts = []
    for radius_um in (3.0, 4.5):
        pairs, missed, extra = match_points(points, found, radius_um / mpp)
        counts.append((len(pairs), len(extra), len(missed)))
    return tile, counts


def prf(counts: np.ndarray) -> tuple[float, float, float]:
    tp, fp, fn = (int(v) for v in counts)
    return tp / max(tp + fp, 1), tp / max(tp + fn, 1), 2 * tp / max(2 * tp + fp + fn, 1)


def run_all(pool: ProcessPoolExecutor, root: Path, tiles: list[str], mode: str, settings: dict) -> np.ndarray:
    """``(tiles, 2 radii, 3)`` counts."""
    jobs = [(str(root), tile, mode, settings) for tile in tiles]
    return np.array([counts for _, counts in pool.map(score_tile, jobs)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="EndoNuke folder with images/ and labels/bulk/ptg1/")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--no-grid", action="store_true", help="skip the cross-validation grid")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    tiles = sorted(path.stem for path in (args.root / "images").glob("*.png"))
    if not tiles:
        raise SystemExit(f"no images in {args.root / 'images'}")
    figures: dict = {"tiles": len(tiles)}
    start = time.perf_counter()
    with ProcessPoolExecutor(args.workers) as pool:
        base = run_all(pool, args.root, tiles, "plain", {})
        for k, radius in enumerate(("3um", "4.5um")):
            p, r, f = prf(base[:, k].sum(axis=0))
            figures[f"defaults_{radius}"] = {"precision": p, "recall": r, "f1": f}
            print(f"defaults, radius {radius:>5}: P {p:.3f}  R {r:.3f}  F1 {f:.3f}   ({len(tiles)} tiles)")
        per_tile = [(prf(base[i, 0])[2], tiles[i], tuple(int(v) for v in base[i, 0])) for i in range(len(tiles))]
        worst = sorted(per_tile)[:8]
        print("worst tiles at 3 um (F1, tile, tp/fp/fn):", ", ".join(f"{t} {f:.2f} {c}" for f, t, c in worst))
        figures["worst"] = [{"tile": t, "f1": f, "tp_fp_fn": c} for f, t, c in worst]
        for mode in ("od0.6", "od1.5", "up2"):
            p, r, f = prf(run_all(pool, args.root, tiles, mode, {})[:, 0].sum(axis=0))
            figures[f"robust_{mode}"] = {"precision": p, "recall": r, "f1": f}
            print(f"robustness {mode:>5}, 3 um: P {p:.3f}  R {r:.3f}  F1 {f:.3f}")
        if not args.no_grid:
            names = list(GRID)
            combos = [dict(zip(names, values, strict=True)) for values in itertools.product(*GRID.values())]
            results = [run_all(pool, args.root, tiles, "plain", combo)[:, 0] for combo in combos]
            order = np.random.default_rng(0).permutation(len(tiles))
            folds = np.array_split(order, args.folds)
            held = np.zeros(3, np.int64)
            chosen = []
            for fold in folds:
                train = np.setdiff1d(order, fold)
                best = max(range(len(combos)), key=lambda c: prf(results[c][train].sum(axis=0))[2])
                chosen.append(combos[best])
                held += results[best][fold].sum(axis=0)
            p, r, f = prf(held)
            figures["cross_validated_3um"] = {"precision": p, "recall": r, "f1": f, "chosen": chosen}
            print(f"{args.folds}-fold cross-validated (grid of {len(combos)}), 3 um: P {p:.3f}  R {r:.3f}  F1 {f:.3f}")
            print("  chosen per fold:", json.dumps(chosen))
    figures["seconds"] = time.perf_counter() - start
    print(f"{figures['seconds']:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
