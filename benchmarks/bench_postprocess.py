"""Speed of HoVer-Net post-processing: histostain's one-pass per-nucleus step vs the reference's per-nucleus loop.

Maps a network could output: touching round nuclei (radius 6-11 px, cut where they meet) drawn at random,
their exact NP/HV targets (``segmentation.targets.make_targets``) blurred and with noise added, and 6-channel
type probabilities (one-hot per nucleus plus noise, so nuclei hold mixed votes). Three workloads:

- ``--tiles`` (20) maps of 164 x 164 (hover_net fast mode's output patch) with ``--tile-nuclei`` (35) drawn;
- one ``--mid`` (1000) x 1000 map (a CoNSeP image, post-processed whole as hover_net's tile mode does);
- one ``--big`` (2048) x 2048 map with ``--nuclei`` (4000) drawn (hover_net's WSI post-processing tile); the
  mid map has the same density.

Variants, all on the same maps:

- **loop**: the algorithm as hover_net's ``post_proc.py`` runs it: the instance map, then one full-image mask per
  nucleus for its box, moments and contour, and a crop per nucleus for its type vote;
- **histostain**: ``instances_from_hovernet_maps``; its instance maps and rows (bbox, centroid, contour, type,
  type_prob) are checked to be identical to the loop's;
- **scipy** (``--scipy``): the same steps without OpenCV (scipy Sobel/Gaussian/opening, skimage contours), to
  measure what dropping the OpenCV dependency would cost; it reports how many instance maps still match;
- **pool** (``--workers N``): histostain in N worker processes (``PostprocessPool``), maps submitted from
  this process as a segment service would (a single map is submitted 2N times).

Per variant: ms per map (best of ``--repeat`` passes; the variants alternate, so load from other work on the
machine hits them alike), the instance-map stage alone, peak traced memory (tracemalloc: numpy, OpenCV and
scikit-image outputs) on the single-map workloads, and the process's peak RSS at the end.

    python benchmarks/bench_postprocess.py
    python benchmarks/bench_postprocess.py --scipy --workers 2
    python benchmarks/bench_postprocess.py --no-big-loop     # skip the loop on the big map (~25 s per run)
"""

from __future__ import annotations

import argparse
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import cv2
import numpy as np
from scipy import ndimage
from skimage.measure import find_contours
from skimage.segmentation import watershed

from _peak_memory import peak_mb  # benchmarks/_peak_memory.py (run as a script)
from histostain.segmentation.postprocess import hovernet_instance_map, instances_from_hovernet_maps
from histostain.segmentation.targets import make_targets

Maps = tuple[np.ndarray, np.ndarray, np.ndarray]
Result = tuple[np.ndarray, list[dict]]  # (instance map with the variant's ids, one row per kept nucleus)
N_TYPES = 6


# ------------------------------------------------------------------------------------------------- the maps


def network_like_maps(rng: np.random.Generator, size: int, count: int) -> Maps:
    seeds = np.zeros((size, size), np.int32)
    seeds[rng.integers(0, size, count), rng.integers(0, size, count)] = np.arange(1, count + 1)
    distance, (rows, cols) = ndimage.distance_transform_edt(seeds == 0, return_indices=True)
    nearest = seeds[rows, cols]
    radius = rng.uniform(6, 11, count + 1)
    inst = np.where(distance <= radius[nearest], nearest, 0).astype(np.int32)
    targets = make_targets(inst, inst.shape)
    np_prob = ndimage.gaussian_filter(targets.np.astype(np.float32), 1.0) + rng.normal(0, 0.1, inst.shape)
    np_prob = np.clip(np_prob, 0, 1).astype(np.float32)
    hv = (targets.hv.transpose(1, 2, 0) + rng.normal(0, 0.05, (size, size, 2))).astype(np.float32)
    kinds = rng.integers(1, N_TYPES, count + 1)
    kinds[0] = 0
    tp_prob = np.eye(N_TYPES, dtype=np.float32)[kinds[inst]] + rng.uniform(0, 0.8, (size, size, N_TYPES))
    tp_prob = (tp_prob / tp_prob.sum(axis=-1, keepdims=True)).astype(np.float32)
    return np_prob, hv, tp_prob


# ----------------------------------------------------------------------------- the reference's per-nucleus loop


def _remove_small(labels: np.ndarray, min_size: int = 10) -> np.ndarray:
    too_small = np.bincount(labels.ravel()) < min_size
    labels[too_small[labels]] = 0
    return labels


def loop_instance_map(np_prob: np.ndarray, hv: np.ndarray) -> np.ndarray:
    """The instance map exactly as hover_net computes it (OpenCV, scipy's binary_fill_holes)."""
    blb = ndimage.label(np.asarray(np_prob, np.float32) >= 0.5)[0]
    blb = (_remove_small(blb) > 0).astype(np.int32)
    norm = {"alpha": 0, "beta": 1, "norm_type": cv2.NORM_MINMAX, "dtype": cv2.CV_32F}
    h = cv2.normalize(np.ascontiguousarray(hv[..., 0], np.float32), None, **norm)
    v = cv2.normalize(np.ascontiguousarray(hv[..., 1], np.float32), None, **norm)
    sobelh = 1 - cv2.normalize(cv2.Sobel(h, cv2.CV_64F, 1, 0, ksize=21), None, **norm)
    sobelv = 1 - cv2.normalize(cv2.Sobel(v, cv2.CV_64F, 0, 1, ksize=21), None, **norm)
    overall = np.maximum(sobelh, sobelv) - (1 - blb)
    overall[overall < 0] = 0
    dist = -cv2.GaussianBlur((1.0 - overall) * blb, (3, 3), 0)
    marker = blb - (overall >= 0.4).astype(np.int32)
    marker[marker < 0] = 0
    marker = ndimage.binary_fill_holes(marker).astype(np.uint8)
    marker = cv2.morphologyEx(marker, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5)))
    marker = _remove_small(ndimage.label(marker)[0])
    return watershed(dist, markers=marker, mask=blb)


def loop_postprocess(np_prob: np.ndarray, hv: np.ndarray, tp_prob: np.ndarray) -> Result:
    pred_inst = loop_instance_map(np_prob, hv)
    pred_type = np.argmax(tp_prob, axis=-1)
    rows: list[dict] = []
    for inst_id in np.unique(pred_inst)[1:]:
        mask = pred_inst == inst_id  # a full-image mask per nucleus
        r = np.flatnonzero(mask.any(axis=1))
        c = np.flatnonzero(mask.any(axis=0))
        rmin, rmax, cmin, cmax = r[0], r[-1] + 1, c[0], c[-1] + 1
        crop = mask[rmin:rmax, cmin:cmax].astype(np.uint8)
        moments = cv2.moments(crop)
        contour = np.squeeze(cv2.findContours(crop, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[0][0].astype(np.int32))
        if contour.ndim != 2 or contour.shape[0] < 3:
            continue
        contour[:, 0] += cmin
        contour[:, 1] += rmin
        centroid = np.array([moments["m10"] / moments["m00"], moments["m01"] / moments["m00"]])
        centroid += (cmin, rmin)
        votes = pred_type[rmin:rmax, cmin:cmax][pred_inst[rmin:rmax, cmin:cmax] == inst_id]
        codes, counts = np.unique(votes, return_counts=True)
        ranked = sorted(zip(codes.tolist(), counts.tolist(), strict=True), key=lambda x: x[1], reverse=True)
        kind = ranked[1][0] if ranked[0][0] == 0 and len(ranked) > 1 else ranked[0][0]
        prob = dict(ranked)[kind] / (int(mask.sum()) + 1.0e-6)
        bbox = [int(cmin), int(rmin), int(cmax), int(rmax)]
        rows.append(
            {"id": int(inst_id), "bbox": bbox, "centroid": centroid, "contour": contour, "type": kind, "p": prob}
        )
    return pred_inst, rows


# ------------------------------------------------------------------------------------------ without OpenCV


def _minmax32(image: np.ndarray) -> np.ndarray:
    low, high = float(image.min()), float(image.max())
    scale = 1.0 / (high - low) if high - low > np.finfo(np.float64).eps else 0.0
    return ((image.astype(np.float64) - low) * scale).astype(np.float32)


def _binomial(order: int) -> np.ndarray:
    row = np.array([1.0])
    for _ in range(order):
        row = np.convolve(row, [1.0, 1.0])
    return row


def scipy_instance_map(np_prob: np.ndarray, hv: np.ndarray) -> np.ndarray:
    """The same steps with scipy only: separable binomial Sobel and [1 2 1]/4 Gaussian (border: mirror, which
    is OpenCV's REFLECT_101), opening with the 5 x 5 ellipse (border never erodes, as OpenCV's)."""
    blb = ndimage.label(np.asarray(np_prob, np.float32) >= 0.5)[0]
    blb = _remove_small(blb) > 0
    derivative = np.convolve(_binomial(19), [-1.0, 1.0])
    smooth = _binomial(20)
    h = _minmax32(hv[..., 0]).astype(np.float64)
    v = _minmax32(hv[..., 1]).astype(np.float64)
    sobelh = ndimage.correlate1d(ndimage.correlate1d(h, derivative, axis=1, mode="mirror"), smooth, 0, mode="mirror")
    sobelv = ndimage.correlate1d(ndimage.correlate1d(v, derivative, axis=0, mode="mirror"), smooth, 1, mode="mirror")
    overall = np.maximum(1 - _minmax32(sobelh), 1 - _minmax32(sobelv)).astype(np.float64) - (~blb)
    overall[overall < 0] = 0
    gauss = np.array([0.25, 0.5, 0.25])
    dist = np.where(blb, 1.0 - overall, 0.0)
    dist = -ndimage.correlate1d(ndimage.correlate1d(dist, gauss, 0, mode="mirror"), gauss, 1, mode="mirror")
    marker = ndimage.binary_fill_holes(blb & ~(overall >= 0.4))
    ellipse = np.array([[0, 0, 1, 0, 0], [1, 1, 1, 1, 1], [1, 1, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 1, 0, 0]], bool)
    marker = ndimage.binary_erosion(marker, ellipse, border_value=1)
    marker = ndimage.binary_dilation(marker, ellipse, border_value=0)
    marker = _remove_small(ndimage.label(marker)[0])
    return watershed(dist, markers=marker, mask=blb)


def scipy_postprocess(np_prob: np.ndarray, hv: np.ndarray, tp_prob: np.ndarray) -> Result:
    """scipy map + one find_objects pass, bincount centroids and votes, skimage (marching squares) contours."""
    labels = scipy_instance_map(np_prob, hv)
    pred_type = np.argmax(tp_prob, axis=-1)
    ids = np.unique(labels)[1:]
    lut = np.zeros(int(labels.max(initial=0)) + 1, np.int64)
    lut[ids] = np.arange(1, len(ids) + 1)
    compact = lut[labels]
    n = len(ids)
    y, x = np.nonzero(compact)
    owner = compact[y, x]
    area = np.bincount(owner, minlength=n + 1)[1:]
    cx = np.bincount(owner, x, minlength=n + 1)[1:] / np.maximum(area, 1)
    cy = np.bincount(owner, y, minlength=n + 1)[1:] / np.maximum(area, 1)
    votes = np.bincount(owner * N_TYPES + pred_type[y, x], minlength=(n + 1) * N_TYPES).reshape(n + 1, N_TYPES)[1:]
    rows = []
    for index, box in enumerate(ndimage.find_objects(compact)):
        crop = np.pad(compact[box] == index + 1, 1).astype(np.float32)
        contour = max(find_contours(crop, 0.5), key=len)[:, ::-1] - 1 + (box[1].start, box[0].start)
        kind = int(np.argmax(votes[index]))
        if kind == 0 and votes[index, 1:].max() > 0:
            kind = int(np.argmax(votes[index, 1:]) + 1)
        rows.append({"id": int(ids[index]), "centroid": np.array([cx[index], cy[index]]), "contour": contour})
        rows[-1]["type"] = kind
    return labels, rows


# ------------------------------------------------------------------------------------------------- running


def histostain_postprocess(np_prob: np.ndarray, hv: np.ndarray, tp_prob: np.ndarray) -> object:
    return instances_from_hovernet_maps(np_prob, hv, tp_prob)


def timed(
    functions: dict[str, tuple[Callable[..., object], int]], maps: list[Maps]
) -> dict[str, tuple[float, list[object]]]:
    """Per variant ``name: (function, passes)``: the best wall time of its passes over ``maps`` and the results.
    The variants take turns pass by pass, so load from other work on a shared machine hits them alike."""
    for function, _ in functions.values():
        function(*(m[:96, :96] for m in maps[0]))  # warm-up (imports, caches) on a small crop
    best = dict.fromkeys(functions, float("inf"))
    results: dict[str, list[object]] = {}
    for index in range(max(passes for _, passes in functions.values())):
        for name, (function, passes) in functions.items():
            if index >= passes:
                continue
            start = time.perf_counter()
            results[name] = [function(*m) for m in maps]
            best[name] = min(best[name], time.perf_counter() - start)
    return {name: (best[name], results[name]) for name in functions}


def traced_peak_mb(function: Callable[..., object], maps: Maps) -> tuple[float, object]:
    tracemalloc.start()
    result = function(*maps)
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return peak, result


def same_as_loop(loop: Result, mine: Any) -> bool:
    """histostain's map and rows against the loop's (kept ids in increasing order = 1..n)."""
    ref_map, rows = loop
    lut = np.zeros(int(ref_map.max(initial=0)) + 1, np.int32)
    lut[[r["id"] for r in rows]] = np.arange(1, len(rows) + 1)
    if not np.array_equal(mine.inst_map, lut[ref_map]) or len(mine) != len(rows):
        return False
    for i, row in enumerate(rows):
        if mine.bboxes[i].tolist() != row["bbox"] or mine.centroids[i].tolist() != row["centroid"].tolist():
            return False
        if not np.array_equal(mine.contours[i], row["contour"]) or int(mine.types[i]) != row["type"]:
            return False
        if float(mine.type_probs[i]) != row["p"]:
            return False
    return True


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Same pixel sets (ids may differ)."""
    if not np.array_equal(a > 0, b > 0):
        return False
    pairs = np.unique(np.stack([a[a > 0], b[b > 0]]), axis=1)
    return len(np.unique(pairs[0])) == len(np.unique(pairs[1])) == pairs.shape[1]


def _ms(seconds: float, count: int) -> str:
    return f"{seconds / count * 1000:9.2f} ms/map ({count / seconds:7.1f} maps/s)"


def run_workload(title: str, maps: list[Maps], args: argparse.Namespace, *, loop_repeat: int) -> None:
    """Time every variant on ``maps`` (variants alternate within each pass) and check they agree."""
    count = len(maps)
    print(f"\n{title}")
    variants: dict[str, tuple[Callable[..., object], int]] = {
        "histostain": (histostain_postprocess, args.repeat),
        "histostain map": (lambda p, h, t: hovernet_instance_map(p, h), args.repeat),
    }
    if loop_repeat:
        variants["loop"] = (loop_postprocess, loop_repeat)
        variants["loop map"] = (lambda p, h, t: loop_instance_map(p, h), loop_repeat)
    if args.scipy:
        variants["scipy"] = (scipy_postprocess, max(loop_repeat, 1))
    times = timed(variants, maps)
    fast_s, fast_results = times["histostain"]
    fast_map_ms = times["histostain map"][0] / count * 1000
    nuclei = sum(len(r) for r in fast_results) / count  # type: ignore[arg-type]
    print(f"  {nuclei:.0f} nuclei per map, OpenCV threads {args.threads}")
    if loop_repeat:
        loop_s, loop_results = times["loop"]
        same = sum(same_as_loop(lr, fr) for lr, fr in zip(loop_results, fast_results, strict=True))  # type: ignore[arg-type]
        print(f"  loop         {_ms(loop_s, count)}   instance map alone {times['loop map'][0] / count * 1000:.2f} ms")
        print(
            f"  histostain   {_ms(fast_s, count)}   instance map alone {fast_map_ms:.2f} ms"
            f"   x{loop_s / fast_s:.1f} faster, identical maps and rows: {same}/{count}"
        )
    else:
        print(f"  histostain   {_ms(fast_s, count)}   instance map alone {fast_map_ms:.2f} ms")
    if args.scipy:
        scipy_s, scipy_results = times["scipy"]
        same = sum(
            same_partition(sr[0], fr.inst_map)  # type: ignore[index, attr-defined]
            for sr, fr in zip(scipy_results, fast_results, strict=True)
        )
        print(f"  scipy        {_ms(scipy_s, count)}   same instance pixels as histostain: {same}/{count}")
    if count == 1:
        peak, _ = traced_peak_mb(histostain_postprocess, maps[0])
        line = f"  peak traced memory: histostain {peak:.0f} MB"
        if loop_repeat:
            loop_peak, _ = traced_peak_mb(loop_postprocess, maps[0])
            line += f", loop {loop_peak:.0f} MB"
        print(line)
    if args.workers:
        from histostain.segmentation.postprocess_pool import PostprocessPool

        batch = maps if count > 1 else maps * 2 * args.workers  # a single map: the same map several times
        best_pool = best_inline = float("inf")
        with PostprocessPool(workers=args.workers) as pool:
            for future in [pool.submit(*m) for m in batch[: 2 * args.workers]]:
                future.result()  # start every worker (spawned on demand) before timing
            for _ in range(min(args.repeat, 3)):  # alternate with in-process passes over the same batch
                start = time.perf_counter()
                pooled = [f.result() for f in [pool.submit(*m) for m in batch]]
                best_pool = min(best_pool, time.perf_counter() - start)
                start = time.perf_counter()
                inline = [histostain_postprocess(*m) for m in batch]
                best_inline = min(best_inline, time.perf_counter() - start)
        same = sum(np.array_equal(a.inst_map, b.inst_map) for a, b in zip(pooled, inline, strict=True))  # type: ignore[attr-defined]
        print(
            f"  pool x{args.workers}      {_ms(best_pool, len(batch))}   in-process in the same passes "
            f"{best_inline / len(batch) * 1000:.2f} ms/map; same results: {same}/{len(batch)}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiles", type=int, default=20)
    parser.add_argument("--tile-nuclei", type=int, default=35, help="nuclei drawn per 164 x 164 tile")
    parser.add_argument("--mid", type=int, default=1000, help="side of the CoNSeP-size image (0: skip)")
    parser.add_argument("--big", type=int, default=2048)
    parser.add_argument("--nuclei", type=int, default=4000, help="nuclei drawn on the big map (same density mid)")
    parser.add_argument("--scipy", action="store_true", help="also time the OpenCV-free variant")
    parser.add_argument("--workers", type=int, default=0, help="also time PostprocessPool with N workers")
    parser.add_argument("--no-big-loop", action="store_true", help="skip the per-nucleus loop on the big map")
    parser.add_argument("--threads", type=int, default=1, help="OpenCV threads (1: one core, like a worker)")
    parser.add_argument("--repeat", type=int, default=5, help="best of N passes")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    cv2.setNumThreads(args.threads)
    rng = np.random.default_rng(args.seed)

    tiles = [network_like_maps(rng, 164, args.tile_nuclei) for _ in range(args.tiles)]
    run_workload(f"{args.tiles} tiles of 164 x 164", tiles, args, loop_repeat=args.repeat)
    density = args.nuclei / args.big**2
    if args.mid:
        mid = [network_like_maps(rng, args.mid, round(density * args.mid**2))]
        run_workload(f"one {args.mid} x {args.mid} map", mid, args, loop_repeat=min(args.repeat, 2))
    big = [network_like_maps(rng, args.big, args.nuclei)]
    run_workload(f"one {args.big} x {args.big} map", big, args, loop_repeat=0 if args.no_big_loop else 1)
    print(f"\npeak RSS of this process: {peak_mb():.0f} MB")


if __name__ == "__main__":
    main()
