"""Speed and memory of ``histostain segment`` with the full-size HoVer-Net (fast mode, 6 types) on the CPU.

One run prints, side by side:

* **network**: the reference way to run the network (eager, fp32, NCHW, one 256 x 256 patch per forward pass,
  as hover_net runs on a CPU) against histostain's ``HoVerNetPredictor`` as ``segment`` runs it by default
  (``--compile auto``: compiled with Inductor and frozen weights once the run holds 48+ patches). Both
  produce the stitched NP/HV/TP maps of the same images and the maps are compared (max |NP| difference). On
  the tiles the two alternate image by image, so load from other work on the machine hits them alike; on the
  large image histostain's network time is its share of the end-to-end run (timed inside it), and the
  reference runs ``--ref-patches`` of its patches, half before that run and half after;
* **post-processing alone**: ``instances_from_hovernet_maps`` on those maps;
* **end to end**: ``segment_paths`` reading the PNGs, inferring, post-processing and writing every format
  (json, geojson, tif, overlay png, txt, summary), with the same (already compiled) segmenter; with
  ``--workers`` also with one post-processing worker process (``--postprocess-workers 1``) on the tiles;

for ``--tiles`` (20) synthetic H&E tiles of 256 x 256 (4 patches each in the 256 -> 164 geometry) and one
``--big`` (2048) x 2048 image (169 patches). Rates are tiles (images) per second; "s/patch" is per 256 x 256
forward pass. ``--threads N`` sets torch's threads for both networks (on a machine shared with other work,
two OpenMP threads on two busy cores stall each other: one thread is then both faster and steadier).

Peak resident memory (VmHWM) of ``segment`` end to end, each in a fresh process, for a 2048 x 2048 and an
8192 x 8192 image (``--rss-sizes``) with a scaled-down network (1/16 encoder width, one unit per group) so that
the 8192 x 8192 run takes minutes instead of about an hour: memory is set by the chunk size (2048 + margins)
and the image-sized label maps, not by the network's width, which is what these rows show.

Weights: a randomly initialised network saved as a histostain checkpoint (a random network's maps make odd
nuclei, so the post-processing figures are those of these maps; ``benchmarks/bench_postprocess.py`` measures
it on realistic maps). Images: ``histostain.synth.generate_tile`` (the 8192 image is a 2048 tile repeated).

    python benchmarks/bench_segment.py                 # everything (about an hour on 2 cores)
    python benchmarks/bench_segment.py --quick         # 4 tiles, a 656 x 656 image, RSS at 1024 and 2048
    python benchmarks/bench_segment.py --compile off   # histostain without compiling (eager fp32)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _peak_memory import peak_mb  # benchmarks/_peak_memory.py (run as a script)

TINY = {"encoder_width": 1 / 16, "units": [1, 1, 1, 1], "decoder_width": 0.125, "decoder_units": [1, 1]}


def _load() -> float:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


# ------------------------------------------------------------------------------------------------ inputs


def make_inputs(folder: Path, tiles: int, big: int, rss_sizes: list[int]) -> dict:
    """Weights (full and tiny, random) and images, written once by the parent process."""
    import torch

    from histostain.io.images import write_image
    from histostain.segmentation.compat import save_hovernet
    from histostain.segmentation.hovernet import HoVerNet
    from histostain.synth import generate_tile

    torch.manual_seed(0)
    save_hovernet(HoVerNet("fast", 6), folder / "full.pt")
    torch.manual_seed(0)
    save_hovernet(HoVerNet("fast", 6, **TINY), folder / "tiny.pt")
    (folder / "tiles").mkdir()
    for seed in range(tiles):
        write_image(folder / "tiles" / f"tile{seed:02d}.png", generate_tile(seed, 256).he)
    (folder / "big").mkdir()
    big_tile = generate_tile(100, big).he
    write_image(folder / "big" / f"image{big}.png", big_tile)
    base = generate_tile(101, min([2048, *rss_sizes])).he
    for size in rss_sizes:
        (folder / f"rss{size}").mkdir()
        reps = -(-size // base.shape[0])
        image = np.tile(base, (reps, reps, 1))[:size, :size]
        write_image(folder / f"rss{size}" / f"image{size}.tif", np.ascontiguousarray(image))
    return {"full": str(folder / "full.pt"), "tiny": str(folder / "tiny.pt")}


# ------------------------------------------------------------------------------------------------ children


def _reference_maps(model, image: np.ndarray, patch_in: int, margin: int, only: range | None = None):
    """The reference way: every patch alone (batch 1), eager fp32 NCHW; returns {patch index: NP prob}."""
    import torch

    from histostain.io.tiling import iter_tiles, plan_tiles

    grid = plan_tiles(image.shape[0], image.shape[1], patch_in, overlap=0, margin=margin)
    out = {}
    with torch.inference_mode():
        for index, _y, _x, tile in iter_tiles(image, grid):
            if only is not None and index not in only:
                continue
            raw = model(torch.from_numpy(tile).permute(2, 0, 1)[None].float())
            out[index] = torch.softmax(raw["np"], 1)[0, 1].numpy()
            torch.softmax(raw["tp"], 1).permute(0, 2, 3, 1).numpy()  # what a caller converts too
            raw["hv"].permute(0, 2, 3, 1).numpy()
    return out, grid


def _np_difference(maps, reference: dict, grid) -> float:
    worst = 0.0
    side = grid.output_tile
    for index, expected in reference.items():
        y0, x0 = grid.origins[index]
        h, w = min(side, maps.np_prob.shape[0] - y0), min(side, maps.np_prob.shape[1] - x0)
        worst = max(worst, float(np.abs(maps.np_prob[y0 : y0 + h, x0 : x0 + w] - expected[:h, :w]).max()))
    return worst


def child_speed(
    folder: Path, weights: str, compile_mode: str, ref_patches: int, workers_too: bool, threads: int | None
) -> dict:
    import torch

    from histostain.io.images import read_image
    from histostain.runtime.device import DeviceManager
    from histostain.segmentation.compat import load_hovernet
    from histostain.segmentation.postprocess import instances_from_hovernet_maps
    from histostain.segmentation.segment import HoVerNetSegmenter
    from histostain.segmentation.segment_files import segment_paths

    if threads:
        torch.set_num_threads(threads)
    reference, _ = load_hovernet(weights)  # its own copy: eager, fp32, NCHW
    model, info = load_hovernet(weights)
    device = DeviceManager.create("cpu", "auto")
    segmenter = HoVerNetSegmenter(model, info, device, compile=compile_mode, postprocess_workers=0)
    predictor = segmenter.predictor
    patch_in, margin = predictor.patch_in, predictor.margin
    workloads = {
        "tiles": sorted((folder / "tiles").glob("*.png")),
        "big": sorted((folder / "big").glob("*.png")),
    }
    images = {name: [read_image(path) for path in paths] for name, paths in workloads.items()}
    for batch in images.values():
        for image in batch:
            segmenter.expect(*image.shape[:2])
    result: dict = {
        "threads": torch.get_num_threads(),
        "precision": device.plan.precision,
        "load_start": _load(),
    }
    start = time.perf_counter()
    predictor.maps(images["tiles"][0])  # warm-up: compiles when the policy says so
    result["warmup_s"] = time.perf_counter() - start
    result.update({f"predictor_{k}": v for k, v in predictor.describe().items()})
    _reference_maps(reference, images["tiles"][0], patch_in, margin, range(1))  # warm-up (oneDNN primitives)

    timed: list[tuple[float, object]] = []
    plain_maps = predictor.maps

    def maps_timed(rgb: np.ndarray):  # the network's share of an end-to-end run, and its maps
        t = time.perf_counter()
        maps = plain_maps(rgb)
        timed.append((time.perf_counter() - t, maps))
        return maps

    def end_to_end(name: str, key: str, row: dict) -> None:
        timed.clear()
        predictor.maps = maps_timed
        try:
            with tempfile.TemporaryDirectory() as out:
                report = segment_paths([str(folder / name)], out, segmenter=segmenter, overwrite=True)
        finally:
            predictor.maps = plain_maps
        row[f"{key}_s"] = report.seconds
        row[f"{key}_net_s"] = sum(seconds for seconds, _ in timed)
        row[f"{key}_done"] = report.segmented

    for name in ("tiles", "big"):
        row: dict = {"images": len(images[name]), "size": list(images[name][0].shape[:2])}
        ref_s = ours_s = 0.0
        ref_count = ours_count = 0
        diff = 0.0
        maps_list = []
        if name == "tiles":  # network alone: the reference and histostain alternately, image by image
            for image in images[name]:
                t = time.perf_counter()
                ref, grid = _reference_maps(reference, image, patch_in, margin)
                ref_s += time.perf_counter() - t
                t = time.perf_counter()
                maps = predictor.maps(image)
                ours_s += time.perf_counter() - t
                ref_count += len(ref)
                ours_count += len(grid)
                diff = max(diff, _np_difference(maps, ref, grid))
                maps_list.append(maps)
            end_to_end(name, "e2e", row)
            if workers_too:
                segmenter.postprocess_workers = 1
                end_to_end(name, "e2e_workers1", row)
                segmenter.postprocess_workers = 0
        else:  # one pass: the network's time inside the end-to-end run, the reference sampled before and after
            image = images[name][0]
            patches = predictor.patches_for(*image.shape[:2])
            before = range(ref_patches // 2)
            after = range(patches - (ref_patches - ref_patches // 2), patches)
            t = time.perf_counter()
            ref, grid = _reference_maps(reference, image, patch_in, margin, before)
            ref_s += time.perf_counter() - t
            end_to_end(name, "e2e", row)
            t = time.perf_counter()
            more, grid = _reference_maps(reference, image, patch_in, margin, after)
            ref_s += time.perf_counter() - t
            ref.update(more)
            ours_s = row["e2e_net_s"]
            maps_list = [maps for _, maps in timed]
            timed.clear()
            ref_count, ours_count = len(ref), patches
            diff = _np_difference(maps_list[0], ref, grid)
        row["patches"] = ours_count
        row["ref_s_per_patch"] = ref_s / ref_count
        row["ref_patches_timed"] = ref_count
        row["net_s_per_patch"] = ours_s / ours_count
        row["net_s"] = ours_s
        row["max_np_diff"] = diff
        t = time.perf_counter()
        nuclei = 0
        for maps in maps_list:
            found = instances_from_hovernet_maps(maps.np_prob, maps.hv, maps.tp_prob, mpp=segmenter.mpp)
            nuclei += len(found)
        row["post_s"] = time.perf_counter() - t
        row["nuclei"] = nuclei
        del maps_list
        result[name] = row
        print(json.dumps({name: row}), file=sys.stderr, flush=True)
    result["peak_mb"] = peak_mb()
    result["load_end"] = _load()
    return result


def child_rss(folder: Path, weights: str, size: int) -> dict:
    from histostain.runtime.device import DeviceManager
    from histostain.segmentation.compat import load_hovernet
    from histostain.segmentation.postprocess import instances_from_hovernet_maps  # noqa: F401
    from histostain.segmentation.segment_files import segment_paths

    load_hovernet(weights)  # what every run holds before its first image: torch, OpenCV, the network
    baseline = peak_mb()
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        report = segment_paths(
            [str(folder / f"rss{size}")], out, model="hovernet", weights=weights,
            device=DeviceManager.create("cpu", "auto"), overwrite=True,
        )  # fmt: skip
        seconds = time.perf_counter() - start
    return {"size": size, "seconds": seconds, "nuclei": report.nuclei, "peak_mb": peak_mb(), "baseline_mb": baseline}


def run_child(args: list[str]) -> dict:
    command = [sys.executable, __file__, "--child", *args]
    result = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=False)  # stderr: the progress
    if result.returncode != 0:
        return {"error": f"exit code {result.returncode} (its stderr is above)"}
    return json.loads(result.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------------ report


def _print_speed(row: dict) -> None:
    height, width = row["size"]
    name = f"{row['images']} tiles {height} x {width}" if row["images"] > 1 else f"one {height} x {width} image"
    per_image = row["patches"] / row["images"]
    ref_rate = 1 / (row["ref_s_per_patch"] * per_image)
    net_rate = row["images"] / row["net_s"]
    post_rate = row["images"] / row["post_s"]
    e2e_rate = row["images"] / row["e2e_s"]
    print(f"\n{name}: {row['patches']} patches, {row['nuclei']} nuclei (random weights)")
    print(f"  {'what':<44} {'s/patch':>8} {'tiles/s':>9} {'vs reference':>13}")
    rows = [
        ("reference network: eager fp32 NCHW batch 1", row["ref_s_per_patch"], ref_rate),
        (
            f"histostain network ({'inside the e2e run' if row['images'] == 1 else 'alone'})",
            row["net_s_per_patch"],
            net_rate,
        ),
        ("post-processing alone (in process)", row["post_s"] / row["patches"], post_rate),
        ("end to end: segment_paths, all formats", row["e2e_s"] / row["patches"], e2e_rate),
    ]
    if "e2e_workers1_s" in row:
        rate = row["images"] / row["e2e_workers1_s"]
        rows.append(("end to end, 1 post-processing worker", row["e2e_workers1_s"] / row["patches"], rate))
    for label, per_patch, rate in rows:
        versus = "" if label.startswith("post-processing") else f"{rate / ref_rate:.2f}x"
        print(f"  {label:<44} {per_patch:>8.3f} {rate:>9.4f} {versus:>13}")
    print(
        f"  end to end / network: {e2e_rate / net_rate:.3f} (network inside the e2e run {row['e2e_net_s']:.1f} s of "
        f"{row['e2e_s']:.1f} s); "
        f"max |NP prob histostain - reference| over {row['ref_patches_timed']} patches: {row['max_np_diff']:.1e}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiles", type=int, default=20, help="256 x 256 tiles in the tile workload")
    parser.add_argument("--big", type=int, default=2048, help="side of the one large image")
    parser.add_argument("--ref-patches", type=int, default=24, help="reference patches timed on the large image")
    parser.add_argument("--rss-sizes", type=int, nargs="*", default=[2048, 8192], help="none: no memory rows")
    parser.add_argument("--no-speed", action="store_true", help="only the memory rows")
    parser.add_argument("--compile", default="auto", choices=["auto", "on", "off"], help="histostain's --compile")
    parser.add_argument("--workers", action="store_true", help="also end to end with a post-processing worker")
    parser.add_argument("--threads", type=int, help="torch threads for both networks (default: torch's)")
    parser.add_argument("--quick", action="store_true", help="4 tiles, a 656 x 656 image, RSS at 1024 and 2048")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        kind, folder, weights = args.child[0], Path(args.child[1]), args.child[2]
        if kind == "speed":
            out = child_speed(folder, weights, args.compile, args.ref_patches, args.workers, args.threads)
        else:
            out = child_rss(folder, weights, int(args.child[3]))
        print(json.dumps(out))
        return
    if args.quick:
        args.tiles, args.big, args.ref_patches, args.rss_sizes = 4, 656, 4, [1024, 2048]

    import torch

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
        f"load {_load():.2f}; histostain --compile {args.compile}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        weights = make_inputs(folder, args.tiles, args.big, args.rss_sizes)
        child = ["speed", str(folder), weights["full"], "--compile", args.compile]
        child += ["--ref-patches", str(args.ref_patches)] + (["--workers"] if args.workers else [])
        child += ["--threads", str(args.threads)] if args.threads else []
        speed = {"error": "not run (--no-speed)"} if args.no_speed else run_child(child)
        if "error" in speed:
            print(f"speed run failed: {speed['error']}")
        else:
            print(
                f"full-size network (37.6 M parameters), {speed['threads']} threads, {speed['precision']}; "
                f"histostain: compile={speed['predictor_compile']} -> {speed['predictor_compiled']}, "
                f"compile {speed['predictor_compile_seconds']:.0f} s (warm-up pass {speed['warmup_s']:.0f} s, "
                f"not in the rates), {speed['predictor_forward_batch']} patch(es) per forward call in "
                f"{speed['predictor_streams']} stream(s)"
            )
            for name in ("tiles", "big"):
                _print_speed(speed[name])
            print(f"\npeak RSS of that process (both networks, both workloads): {speed['peak_mb']:.0f} MB")
        if not args.rss_sizes:
            return
        print("\npeak RSS of `segment` end to end, fresh process, scaled-down network (1/16 width), chunk 2048:")
        print(f"  {'image':<14} {'peak MB':>8} {'before MB':>10} {'image MB':>9} {'seconds':>8} {'nuclei':>7}")
        for size in args.rss_sizes:
            row = run_child(["rss", str(folder), weights["tiny"], str(size)])
            if "error" in row:
                print(f"  {size} x {size}: failed: {row['error']}")
                continue
            image_mb = size * size * 3 / 2**20
            print(
                f"  {f'{size} x {size}':<14} {row['peak_mb']:>8.0f} {row['baseline_mb']:>10.0f} {image_mb:>9.0f} "
                f"{row['seconds']:>8.1f} "
                f"{row['nuclei']:>7}"
            )
        maps_mb = 8192 * 8192 * 9 * 4 / 2**20
        print("  (before: the process after importing torch and loading the network, before the first image;")
        print(f"   the float NP/HV/TP maps of a whole 8192 x 8192 image alone would take {maps_mb:.0f} MB)")
    print(f"load average at the end: {_load():.2f} (figures on a shared machine are noisy)")


if __name__ == "__main__":
    main()
