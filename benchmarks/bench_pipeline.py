"""Speed and memory of ``histostain pipeline`` (translate IHC -> H&E, segment nuclei, score against ground truth).

Speed (one process, ``--tiles`` 256 x 256 synthetic IHC tiles with ground-truth centroid files):

* **end to end**: ``run_pipeline`` with ground truth and every output format into a fresh folder; tiles/s over
  the image loop (``PipelineReport.seconds``) and over the whole call (models loaded, metrics, summary, report);
  also the report's ``stage_seconds`` (time spent translating / segmenting / scoring inside the loop);
* **each stage alone** on the same tiles, the way a user would chain the commands: ``translate_paths`` into a
  folder, ``segment_paths`` on the translated tiles (every format), ``evaluate_celldet`` of the segment folder
  against the truth; their sum, and the ratio end to end / sum of stages (above 1: the pipeline is faster than
  the three commands in a row, e.g. because it reads each tile once and overlaps its stages).

Each measurement is repeated ``--repeats`` times, alternating end to end and the stages so load from other work
on the machine hits both alike; the table shows the best (fastest) repeat. A small warm-up run comes first.

Memory: peak resident memory (VmHWM) of ``run_pipeline`` end to end, each in a fresh process, for ``--rss`` tile
counts (100 and 1,000), every format, ground truth; with the RSS (VmRSS) when the first tile starts (imports and
both models loaded), at the end of the image loop and after the call (metrics, summary, report written), and
the growth per tile over the loop. ``--trace`` adds tracemalloc's largest growths (slow).

Models: by default small random networks saved in the real formats (a CycleGAN ResNet generator, ngf 8, 3 blocks,
as a histostain checkpoint; a HoVer-Net fast with 6 types, 1/16 encoder width (``bench_segment.py``'s
memory network), as an official ``{"desc": ...}``
checkpoint). ``--translator`` / ``--segmenter-weights`` take any file, run folder or registry name instead,
``--demo`` the packaged ``cyclegan-demo`` and ``hovernet-demo`` (when the registry lists them), ``--segmenter
classical`` the weight-free segmenter. Random networks make odd nuclei: the scores are meaningless, the timings
are those of these networks (a full-size HoVer-Net is ~190 x the work per patch: ``bench_segment.py``).

Tiles, truth and models are written once into ``--work`` (default: a folder in the system temp dir, kept between
runs so 1,000 tiles are generated once).

    python benchmarks/bench_pipeline.py                       # 20 tiles speed; RSS at 100 and 1,000 tiles
    python benchmarks/bench_pipeline.py --quick               # 4 tiles; RSS at 20 and 50
    python benchmarks/bench_pipeline.py --segmenter classical --rss 100 1000
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _peak_memory import peak_mb  # benchmarks/_peak_memory.py (run as a script)

DEFAULT_WORK = Path(tempfile.gettempdir()) / "histostain-bench-pipeline"
SIZE = 256
MPP = 0.25  # histostain.synth's default scale (40x)
RADIUS_UM = 3.0
DEMO = ("cyclegan-demo", "hovernet-demo")
FORMATS = ["json", "geojson", "tif", "png", "txt"]


def _load() -> float:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


def _status_mb(field: str) -> float:
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def rss_mb() -> float:
    """Resident memory of this process now (VmRSS), MB."""
    return _status_mb("VmRSS")


# ------------------------------------------------------------------------------------------------ inputs


def make_tiles(work: Path, count: int) -> None:
    """``work/tiles/tileNNNN.png`` (IHC) and ``work/truth/tileNNNN.txt`` (x y class) for the first ``count`` seeds;
    only the missing ones are generated."""
    from histostain.io.annotations import Nucleus, write_centroids_txt
    from histostain.io.images import write_image
    from histostain.synth import generate_tile

    (work / "tiles").mkdir(parents=True, exist_ok=True)
    (work / "truth").mkdir(parents=True, exist_ok=True)
    missing = [
        seed
        for seed in range(count)
        if not (work / "tiles" / f"tile{seed:04d}.png").is_file()
        or not (work / "truth" / f"tile{seed:04d}.txt").is_file()
    ]
    if not missing:
        return
    print(f"generating {len(missing)} synthetic tile(s) into {work} ...", flush=True)
    start = time.perf_counter()
    for seed in missing:
        tile = generate_tile(seed, SIZE)
        nuclei = [Nucleus(i + 1, (n.x, n.y), n.endonuke_class) for i, n in enumerate(tile.nuclei)]
        write_centroids_txt(work / "truth" / f"tile{seed:04d}.txt", nuclei)
        write_image(work / "tiles" / f"tile{seed:04d}.png", tile.ihc)
    print(f"  {len(missing)} tile(s) in {time.perf_counter() - start:.0f} s", flush=True)


def tile_set(work: Path, count: int) -> Path:
    """``work/sets/nCOUNT/{tiles,truth}``: symlinks to the first ``count`` tiles and their truth files."""
    folder = work / "sets" / f"n{count}"
    for kind, suffix in (("tiles", ".png"), ("truth", ".txt")):
        sub = folder / kind
        sub.mkdir(parents=True, exist_ok=True)
        for seed in range(count):
            link = sub / f"tile{seed:04d}{suffix}"
            if not link.exists():
                link.symlink_to((work / kind / link.name).resolve())
    return folder


def make_models(work: Path) -> dict[str, str]:
    """Small random networks in the real formats (written once)."""
    import torch

    folder = work / "models"
    folder.mkdir(parents=True, exist_ok=True)
    translator, segmenter = folder / "cyclegan-small.pt", folder / "hovernet-tiny.pt"
    if not translator.is_file():
        from histostain.translation.compat import save_generator
        from histostain.translation.cyclegan import ResnetGenerator, init_weights

        torch.manual_seed(0)
        save_generator(translator, init_weights(ResnetGenerator(ngf=8, n_blocks=3)), direction="ihc2he")
    if not segmenter.is_file():
        from histostain.segmentation.hovernet import HoVerNet

        torch.manual_seed(0)
        net = HoVerNet("fast", 6, encoder_width=1 / 16, units=[1, 1, 1, 1], decoder_width=0.125, decoder_units=[1, 1])
        torch.save({"desc": net.state_dict()}, segmenter)  # the official hover_net checkpoint layout
    return {"translator": str(translator), "segmenter_weights": str(segmenter)}


def demo_available() -> bool:
    from histostain.weights.registry import load_registry

    registry = load_registry()
    return all(name in registry for name in DEMO)


# ------------------------------------------------------------------------------------------------ children


def _config(spec: dict[str, Any], folder: Path, out: Path):
    from histostain.pipeline.config import resolve_config

    return resolve_config(
        {
            "input": [str(folder / "tiles")],
            "out": out,
            "translator": spec["translator"],
            "segmenter": spec["segmenter"],
            "segmenter_weights": spec["segmenter_weights"],
            "ground_truth": folder / "truth",
            "mpp": MPP,
            "radius_um": RADIUS_UM,
            "formats": FORMATS,
        }
    )


def _device():
    from histostain.runtime.device import DeviceManager

    return DeviceManager.create("cpu", exact_cpu=True)  # what run_pipeline uses without a device


def child_speed(spec: dict[str, Any]) -> dict[str, Any]:
    import torch

    from histostain.metrics.evaluate_celldet import evaluate_celldet
    from histostain.pipeline.run import run_pipeline
    from histostain.segmentation.segment_files import segment_paths
    from histostain.translation.translate import translate_paths

    torch.set_num_threads(spec["threads"])
    device = _device()
    work = Path(spec["work"])
    folder, warm = Path(spec["folder"]), Path(spec["warm"])
    result: dict[str, Any] = {"threads": torch.get_num_threads(), "precision": device.plan.precision}
    result["load_start"] = _load()
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        scratch = Path(tmp)
        start = time.perf_counter()
        run_pipeline(_config(spec, warm, scratch / "warm"), device=device, overwrite=True)  # warm-up
        result["warmup_s"] = time.perf_counter() - start
        runs: list[dict[str, Any]] = []
        for repeat in range(spec["repeats"]):
            row: dict[str, Any] = {"load_before": _load()}
            out = scratch / f"e2e{repeat}"
            config = _config(spec, folder, out)
            start = time.perf_counter()
            report = run_pipeline(config, device=device, overwrite=True)
            row["e2e_call_s"] = time.perf_counter() - start
            row["e2e_loop_s"] = report.seconds
            row["processed"] = report.processed
            row["failed"] = len(report.failed)
            row["nuclei"] = report.nuclei
            row["stage_seconds"] = dict(report.stage_seconds)
            row["f1"] = (report.metrics or {}).get("f1")
            config = _config(spec, folder, out)  # the same options for the stages alone

            start = time.perf_counter()
            translated = translate_paths(
                [str(folder / "tiles")], config.translator, scratch / f"translated{repeat}", direction=config.direction,
                device=device, tile=config.tile, overlap=config.overlap, batch_size=config.batch_size, overwrite=True,
            )  # fmt: skip
            row["translate_call_s"] = time.perf_counter() - start
            row["translate_loop_s"] = translated.seconds

            start = time.perf_counter()
            segmented = segment_paths(
                [str(scratch / f"translated{repeat}")], scratch / f"segment{repeat}", model=config.segmenter_model,
                weights=config.segmenter_weights, device=device, stain=config.segmenter_stain, mpp=MPP,
                formats=FORMATS, batch_size=config.batch_size, chunk=config.chunk_size, overwrite=True,
            )  # fmt: skip
            row["segment_call_s"] = time.perf_counter() - start
            row["segment_loop_s"] = segmented.seconds
            row["segment_nuclei"] = segmented.nuclei

            start = time.perf_counter()
            scored = evaluate_celldet(folder / "truth", scratch / f"segment{repeat}", radius_um=RADIUS_UM, mpp=MPP)
            row["score_call_s"] = time.perf_counter() - start
            row["score_f1"] = scored.summary.get("f1")
            row["load_after"] = _load()
            runs.append(row)
            print(json.dumps({"repeat": repeat, **row}), file=sys.stderr, flush=True)
            for name in (f"e2e{repeat}", f"translated{repeat}", f"segment{repeat}"):
                shutil.rmtree(scratch / name, ignore_errors=True)
    result["runs"] = runs
    result["peak_mb"] = peak_mb()
    result["load_end"] = _load()
    return result


def child_rss(spec: dict[str, Any]) -> dict[str, Any]:
    import torch

    from histostain.pipeline import step as step_module
    from histostain.pipeline.run import run_pipeline

    torch.set_num_threads(spec["threads"])
    count = spec["count"]
    folder, work = Path(spec["folder"]), Path(spec["work"])
    samples: list[tuple[int, float, float]] = []  # (tiles done, VmRSS MB, VmHWM MB)
    marks = {max(1, round(count * f)) for f in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)}
    trace = spec.get("trace", False)
    tenth = min(marks)
    snapshots: list[Any] = []
    done = 0
    original = step_module.PipelineStep.run

    def run(self, item, image):  # type: ignore[no-untyped-def]
        nonlocal done
        if not samples:
            samples.append((0, rss_mb(), peak_mb()))  # before the first tile: imports and both models loaded
            if trace:
                import tracemalloc

                tracemalloc.start(8)
        out = original(self, item, image)
        done += 1
        if done in marks:
            samples.append((done, rss_mb(), peak_mb()))
            print(f"rss: {done}/{count} tiles, VmRSS {samples[-1][1]:.0f} MB, VmHWM {samples[-1][2]:.0f} MB, "
                  f"load {_load():.2f}", file=sys.stderr, flush=True)  # fmt: skip
            if trace and done == tenth:
                import tracemalloc

                snapshots.append(tracemalloc.take_snapshot())
        return out

    step_module.PipelineStep.run = run  # type: ignore[method-assign]
    result: dict[str, Any] = {"count": count, "load_start": _load(), "threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        start = time.perf_counter()
        report = run_pipeline(_config(spec, folder, Path(tmp) / "out"), device=_device(), overwrite=True)
        result["seconds"] = time.perf_counter() - start
        result["loop_s"] = report.seconds
        result["processed"] = report.processed
        result["nuclei"] = report.nuclei
        result["after_mb"] = rss_mb()
        result["peak_mb"] = peak_mb()
        if trace:
            import tracemalloc

            final = tracemalloc.take_snapshot()
            base = snapshots[0] if snapshots else final
            stats = final.compare_to(base, "traceback")[:12]
            result["trace"] = [
                {"kb": stat.size_diff / 1024, "count": stat.count_diff, "where": stat.traceback.format()[-6:]}
                for stat in stats
            ]
            result["traced_mb"] = tracemalloc.get_traced_memory()[0] / 2**20
    result["samples"] = samples
    result["load_end"] = _load()
    return result


def run_child(spec: dict[str, Any]) -> dict[str, Any]:
    command = [sys.executable, __file__, "--child", json.dumps(spec)]
    result = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=False)  # stderr: the progress
    if result.returncode != 0:
        return {"error": f"exit code {result.returncode} (its stderr is above)"}
    return json.loads(result.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------------ report


def _rate(tiles: int, seconds: float) -> float:
    return tiles / seconds if seconds > 0 else float("nan")


def speed_table(speed: dict[str, Any], tiles: int) -> tuple[list[str], dict[str, Any]]:
    """Markdown rows of the best repeat of each measurement (the fastest), and those figures."""
    runs = speed["runs"]

    def best(key: str) -> float:
        return min(run[key] for run in runs)

    fig = {key: best(key) for key in runs[0] if key.endswith("_s")}
    fig["stages_loop_s"] = fig["translate_loop_s"] + fig["segment_loop_s"] + fig["score_call_s"]
    fig["stages_call_s"] = fig["translate_call_s"] + fig["segment_call_s"] + fig["score_call_s"]
    loads = [run["load_before"] for run in runs] + [run["load_after"] for run in runs]
    load = f"{min(loads):.1f}-{max(loads):.1f}"
    rows = [
        "| what | seconds | tiles/s | load (1 min) |",
        "|---|---:|---:|---:|",
        f"| translate alone (`translate_paths`, image loop) | {fig['translate_loop_s']:.2f} | "
        f"{_rate(tiles, fig['translate_loop_s']):.2f} | {load} |",
        f"| segment alone (`segment_paths` on the translated tiles, image loop) | {fig['segment_loop_s']:.2f} | "
        f"{_rate(tiles, fig['segment_loop_s']):.2f} | {load} |",
        f"| score alone (`evaluate_celldet`, whole call) | {fig['score_call_s']:.2f} | "
        f"{_rate(tiles, fig['score_call_s']):.2f} | {load} |",
        f"| **sum of the stages** (loops + scoring) | {fig['stages_loop_s']:.2f} | "
        f"{_rate(tiles, fig['stages_loop_s']):.2f} | {load} |",
        f"| **end to end** (`run_pipeline`, image loop) | {fig['e2e_loop_s']:.2f} | "
        f"{_rate(tiles, fig['e2e_loop_s']):.2f} | {load} |",
        f"| sum of the three commands' whole calls (models loaded, summaries) | {fig['stages_call_s']:.2f} | "
        f"{_rate(tiles, fig['stages_call_s']):.2f} | {load} |",
        f"| end to end, whole call (models loaded, metrics, summary, report.html) | {fig['e2e_call_s']:.2f} | "
        f"{_rate(tiles, fig['e2e_call_s']):.2f} | {load} |",
    ]
    fig["ratio_loop"] = fig["stages_loop_s"] / fig["e2e_loop_s"]
    fig["ratio_call"] = fig["stages_call_s"] / fig["e2e_call_s"]
    fig["load"] = load
    return rows, fig


def _slope_kb(samples: list[tuple[int, float, float]]) -> float:
    """Least-squares growth of VmRSS per tile (KB) over ``samples`` (tiles done, VmRSS MB, ...): the loop's
    steady state from its first 10 % on (single samples jump by tens of MB as allocator arenas grow and shrink)."""
    if len(samples) < 2:
        return float("nan")
    xs = [float(s[0]) for s in samples]
    ys = [s[1] for s in samples]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mx) ** 2 for x in xs)
    return 1024 * sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var if var else float("nan")


def rss_rows(rows_in: list[dict[str, Any]]) -> list[str]:
    rows = [
        "| tiles | peak RSS (VmHWM) MB | peak before tile 1 MB | RSS at tile 1 MB | RSS at half MB | "
        "RSS at loop end MB | RSS after call MB | RSS growth over the loop (fit) KB/tile | s | load (1 min) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows_in:
        if "error" in row:
            rows.append(f"| {row.get('count', '?')} | failed: {row['error']} | | | | | | | | |")
            continue
        samples = row["samples"]
        first, last = samples[0], samples[-1]
        half = min(samples[1:], key=lambda s: abs(s[0] - last[0] / 2))
        per_tile = _slope_kb(samples[1:])
        rows.append(
            f"| {row['count']} | {row['peak_mb']:.0f} | {first[2]:.0f} | {first[1]:.0f} | {half[1]:.0f} | "
            f"{last[1]:.0f} | {row['after_mb']:.0f} | {per_tile:.1f} | {row['seconds']:.0f} | "
            f"{row['load_start']:.1f}-{row['load_end']:.1f} |"
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiles", type=int, default=20, help="tiles in the speed runs")
    parser.add_argument("--repeats", type=int, default=2, help="speed runs (best shown)")
    parser.add_argument("--rss", type=int, nargs="*", help="tile counts of the memory rows (100 1000; none: no rows)")
    parser.add_argument("--no-speed", action="store_true", help="only the memory rows")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK, help="cache of tiles, truth and models")
    parser.add_argument("--translator", help="translation weights: FILE | RUN | NAME (default: a small random one)")
    parser.add_argument("--segmenter", choices=["hovernet", "classical"], default="hovernet")
    parser.add_argument("--segmenter-weights", help="HoVer-Net weights: FILE | RUN | NAME (default: small random)")
    parser.add_argument("--demo", action="store_true", help=f"the packaged {' and '.join(DEMO)} weights")
    parser.add_argument("--trace", action="store_true", help="tracemalloc's largest growths in the memory runs")
    parser.add_argument("--quick", action="store_true", help="4 tiles, one repeat, RSS at 20 and 50")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        spec = json.loads(args.child)
        out = child_speed(spec) if spec["kind"] == "speed" else child_rss(spec)
        print(json.dumps(out))
        return
    if args.quick:
        args.tiles, args.repeats = 4, 1
    if args.rss is None:
        args.rss = [20, 50] if args.quick else [100, 1000]

    import torch

    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    models = make_models(work)
    if args.demo:
        if not demo_available():
            parser.error(f"--demo: the registry does not list {' and '.join(DEMO)} (see `histostain weights list`)")
        models = {"translator": DEMO[0], "segmenter_weights": DEMO[1]}
    if args.translator:
        models["translator"] = args.translator
    if args.segmenter_weights:
        models["segmenter_weights"] = args.segmenter_weights
    if args.segmenter == "classical":
        models["segmenter_weights"] = None
    make_tiles(work, max([args.tiles, *args.rss]))
    base = {"work": str(work), "threads": args.threads, "segmenter": args.segmenter, **models}
    print(
        f"torch {torch.__version__}, {args.threads} torch thread(s), {os.cpu_count()} CPUs, load {_load():.2f}; "
        f"translator {models['translator']}; segmenter {args.segmenter} {models['segmenter_weights'] or ''}"
    )

    markdown: list[str] = []
    if not args.no_speed:
        warm = tile_set(work, 2)
        spec = {**base, "kind": "speed", "folder": str(tile_set(work, args.tiles)), "warm": str(warm)}
        spec["repeats"] = args.repeats
        speed = run_child(spec)
        if "error" in speed:
            print(f"speed run failed: {speed['error']}")
        else:
            rows, fig = speed_table(speed, args.tiles)
            stage = [run["stage_seconds"] for run in speed["runs"]]
            print(f"\nspeed: {args.tiles} tiles {SIZE} x {SIZE}, best of {args.repeats}, {speed['precision']}")
            for number, run in enumerate(speed["runs"]):
                parts = ", ".join(f"{k} {v:.2f} s" for k, v in run["stage_seconds"].items())
                print(
                    f"  repeat {number}: end to end loop {run['e2e_loop_s']:.2f} s (stage_seconds: {parts}); alone: "
                    f"translate {run['translate_loop_s']:.2f} s, segment {run['segment_loop_s']:.2f} s, "
                    f"score {run['score_call_s']:.2f} s; {run['processed']} processed, {run['nuclei']} nuclei, "
                    f"F1 {run['f1']} (alone {run['score_f1']}); load {run['load_before']:.2f} -> "
                    f"{run['load_after']:.2f}"
                )
            markdown += [f"Speed: {args.tiles} tiles of {SIZE} x {SIZE}, best of {args.repeats}, "
                         f"{speed['threads']} torch thread(s).", "", *rows, ""]  # fmt: skip
            best_stage = min(stage, key=lambda s: sum(s.values()))
            markdown.append(
                "End to end / sum of stages (tiles/s): "
                f"**{fig['ratio_loop']:.2f}** over the image loops, {fig['ratio_call']:.2f} over whole calls "
                "(above 1: the pipeline beats the three commands in a row). Inside the end-to-end loop "
                f"(`stage_seconds`): translate {best_stage['translate']:.2f} s, segment {best_stage['segment']:.2f}"
                f" s, score {best_stage['score']:.2f} s (sum {sum(best_stage.values()):.2f} s of a "
                f"{fig['e2e_loop_s']:.2f} s loop)."
            )
            markdown.append("")
    if args.rss:
        rows_in = []
        for count in args.rss:
            spec = {**base, "kind": "rss", "count": count, "folder": str(tile_set(work, count)), "trace": args.trace}
            row = run_child(spec)
            row.setdefault("count", count)
            rows_in.append(row)
            if "trace" in row:
                print(f"\ntracemalloc, {count} tiles: traced {row['traced_mb']:.1f} MB; growth since tile 10%:")
                for stat in row["trace"]:
                    where = " <- ".join(line.strip() for line in stat["where"] if line.strip())
                    print(f"  {stat['kb']:+9.1f} KB {stat['count']:+7d} blocks  {where[:300]}")
        markdown += [
            "Memory: `run_pipeline` end to end in a fresh process, every format, ground truth.",
            "",
            *rss_rows(rows_in),
            "",
        ]
        good = [row for row in rows_in if "error" not in row]
        if len(good) >= 2:
            low, high = good[0], good[-1]
            growth = high["peak_mb"] - low["peak_mb"]
            per = growth * 1024 / (high["count"] - low["count"])
            markdown.append(
                f"Peak RSS {low['count']} -> {high['count']} tiles: {growth:+.0f} MB ({per:+.1f} KB per tile); "
                f"{'flat' if growth < 50 else 'NOT flat (> 50 MB)'}; RSS at the loop's end "
                f"{low['samples'][-1][1]:.0f} -> {high['samples'][-1][1]:.0f} MB, after the call "
                f"{low['after_mb']:.0f} -> {high['after_mb']:.0f} MB."
            )
            markdown.append("")
    print("\n" + "\n".join(markdown))
    print(f"load average at the end: {_load():.2f} (figures on a shared machine are noisy)")


if __name__ == "__main__":
    main()
