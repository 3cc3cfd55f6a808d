"""Peak memory and speed of ``histostain segment`` on whole slides: is the memory bounded by the chunk size?

The target (slide segmentation issue): the peak resident memory of a run on a synthetic 8k x 8k slide and on a
32k x 32k one (16 x the pixels) are the same within 20 %, and the speed in tiles/s.

Slides: Aperio-style SVS files written by :func:`write_slide` **without ever holding a slide-sized array** (a
32768 x 32768 RGB level 0 is 3 GB): a pool of 16 ``histostain.synth`` H&E tiles of 256 px and their 8
flips/rotations, chosen per level-0 tile ``(row, col)`` by a fixed hash; tissue inside an ellipse covering ~60 %
of the slide, faintly noisy near-white glass (238, 236, 241) +- 2 outside it, so tissue detection has glass to
skip. Pages in the order of ``tests/io/slides_fixtures.py::write_svs``: tiled JPEG level 0, stripped
thumbnail, tiled levels 1/4 and 1/16, label, macro; every page is written from a tile generator (or is
thumbnail-sized) whose tiles are composed from pool tiles area-downscaled once, so a lower level's tile never
needs the level-0 pixels under it. ``|MPP = 0.25`` (40x). Each slide is written once into ``--workdir`` and
checked with ``histostain.io.slides.open_slide`` (levels, mpp, format); re-runs reuse it.

Runs: ``histostain -q segment SLIDE -o OUT --json --overwrite --chunk-size N [-w hovernet-demo]`` in a fresh
child process (``python -c`` wrapper that runs the CLI in-process), one at a time. The wrapper reports the
child's peak resident memory (VmHWM, kernel-tracked, so no sampling gaps) at three marks: after the tissue mask
(imports, model and mask), before the outputs are written (end of the chunk loop) and at exit (outputs, overview
PNG and summary written), with the resident memory (VmRSS) at the loop's end and at exit, and VmRSS / VmHWM after
every segmented chunk (printed as a trajectory: does the peak creep up chunk after chunk, or is it set by one?).
From the CLI's ``--json``: processed megapixels (tissue chunk cores at the model's scale), chunks segmented /
glass, nuclei, megapixels/s and tiles/s (a tile = 256 x 256 processing pixels, over the CLI's own ``seconds``:
slide open to outputs written); wall seconds include Python start-up and imports.

The classical model runs slides at 0.5 um/px (a 0.25 um/px slide is read at level 0 and halved, so an 8k slide
is 4096 x 4096 processing pixels); ``hovernet-demo`` at 0.25 um/px (8192 x 8192).

    python benchmarks/bench_slide_segment.py                              # 8k and 32k, classical
    python benchmarks/bench_slide_segment.py --sizes 8192 --model hovernet-demo
    python benchmarks/bench_slide_segment.py --sizes 4096,8192 --chunk-size 1024
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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_WORKDIR = Path(tempfile.gettempdir()) / "histostain-bench-slides"
TILE = 256  # level-0 tile of the SVS and of the pool; also the "tile" of tiles/s (in processing pixels)
POOL = 16  # synthetic H&E tiles (x 8 flips/rotations)
GLASS_POOL = 8  # noisy glass tiles
GLASS_RGB = (238, 236, 241)
TISSUE_FRACTION = 0.6  # of the slide's area inside the tissue ellipse
MPP = 0.25
QUALITY = 90
LEVEL_FACTORS = (4, 16)  # the tiled lower levels, as write_svs
THUMB_SIDE = 1024  # thumbnail at most this long a side (real Aperio thumbnails are ~1k)
MACRO_SIDE = 512
APERIO_HEAD = "Aperio Image Library v12.0.0 \n"
WRITER_VERSION = 1  # bump when the slide content changes (part of the cached file's name)
RSS_TARGET = 0.20


def _load() -> float:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


# ------------------------------------------------------------------------------------------------ the slide


class SlideContent:
    """The synthetic slide's pixels at any power-of-two downsample, composed tile by tile from a small pool."""

    def __init__(self, height: int, width: int, seed: int = 0) -> None:
        import cv2

        from histostain.synth import generate_tile

        self.height, self.width = height, width
        self.rows, self.cols = -(-height // TILE), -(-width // TILE)
        base = [generate_tile(seed * 1000 + i, TILE).he for i in range(POOL)]
        variants = []
        for tile in base:  # the 8 symmetries of the square
            for k in range(4):
                turned = np.rot90(tile, k)
                variants += [np.ascontiguousarray(turned), np.ascontiguousarray(turned[:, ::-1])]
        self.tissue = np.stack(variants)
        rng = np.random.default_rng(seed + 7)
        glass = rng.normal(GLASS_RGB, 2, size=(GLASS_POOL, TILE, TILE, 3))
        self.glass = np.clip(np.rint(glass), 0, 255).astype(np.uint8)
        self._small: dict[int, tuple[np.ndarray, np.ndarray]] = {1: (self.tissue, self.glass)}

        def shrink(stack: np.ndarray, side: int) -> np.ndarray:
            return np.stack([cv2.resize(t, (side, side), interpolation=cv2.INTER_AREA) for t in stack])

        self._shrink = shrink
        scale = float(np.sqrt(TISSUE_FRACTION * 4 / np.pi))  # ellipse semi-axes = scale x half the sides
        self.cx, self.cy = width / 2.0, height / 2.0
        self.ax, self.ay = scale * width / 2.0, scale * height / 2.0

    def pools(self, factor: int) -> tuple[np.ndarray, np.ndarray]:
        """Tissue and glass pool tiles area-downscaled by ``factor`` (cached)."""
        if factor not in self._small:
            if TILE % factor:
                raise ValueError(f"downsample {factor} does not divide the {TILE} px tile")
            side = TILE // factor
            self._small[factor] = (self._shrink(self.tissue, side), self._shrink(self.glass, side))
        return self._small[factor]

    @staticmethod
    def _hash(r: int, c: int, salt: int) -> int:
        h = (r * 0x9E3779B1 + c * 0x85EBCA77 + salt * 0xC2B2AE3D) & 0xFFFFFFFF
        h ^= h >> 15
        h = (h * 0x2C1B3C6D) & 0xFFFFFFFF
        h ^= h >> 12
        h = (h * 0x297A2D39) & 0xFFFFFFFF
        return h ^ (h >> 15)

    def _inside(self, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
        """Whether level-0 points (a column of ys, a row of xs) lie in the tissue ellipse."""
        return ((xs - self.cx) / self.ax) ** 2 + ((ys - self.cy) / self.ay) ** 2 <= 1.0

    def cell(self, r: int, c: int, factor: int) -> np.ndarray:
        """Level-0 tile ``(r, c)`` downscaled by ``factor`` (a TILE/factor square)."""
        tissue, glass = self.pools(factor)
        side = TILE // factor
        corners_y = np.array([[r * TILE], [(r + 1) * TILE]], dtype=np.float64)
        corners_x = np.array([[c * TILE, (c + 1) * TILE]], dtype=np.float64)
        inside = self._inside(corners_y, corners_x)
        pick = tissue[self._hash(r, c, 1) % len(tissue)]
        if inside.all():  # convex: all four corners in means the whole tile is in
            return pick
        plain = glass[self._hash(r, c, 2) % len(glass)]
        centres = (np.arange(side, dtype=np.float64) + 0.5) * factor
        mask = self._inside((r * TILE + centres)[:, None], (c * TILE + centres)[None, :])
        if not mask.any():
            return plain
        return np.where(mask[..., None], pick, plain)

    def region(self, factor: int, y0: int, x0: int, height: int, width: int) -> np.ndarray:
        """Pixels ``[y0:y0+height, x0:x0+width]`` of the slide downscaled by ``factor`` (white past its edge)."""
        side = TILE // factor
        lh, lw = -(-self.height // factor), -(-self.width // factor)
        out = np.full((height, width, 3), 255, dtype=np.uint8)
        for r in range(y0 // side, min(self.rows, -(-(y0 + height) // side))):
            for c in range(x0 // side, min(self.cols, -(-(x0 + width) // side))):
                ty, tx = r * side, c * side
                sy0, sx0 = max(y0, ty), max(x0, tx)
                sy1, sx1 = min(y0 + height, ty + side, lh), min(x0 + width, tx + side, lw)
                if sy1 > sy0 and sx1 > sx0:
                    tile = self.cell(r, c, factor)
                    out[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = tile[sy0 - ty : sy1 - ty, sx0 - tx : sx1 - tx]
        return out

    def tiles(self, factor: int) -> Iterator[np.ndarray]:
        """The level downscaled by ``factor`` as TILE x TILE tiles in row-major order (edge tiles padded white)."""
        lh, lw = -(-self.height // factor), -(-self.width // factor)
        for y in range(0, lh, TILE):
            for x in range(0, lw, TILE):
                if factor == 1 and y + TILE <= lh and x + TILE <= lw:
                    yield self.cell(y // TILE, x // TILE, 1)
                else:
                    yield self.region(factor, y, x, TILE, TILE)


def _overview_factor(side: int, limit: int) -> int:
    factor = 8
    while side / factor > limit:
        factor *= 2
    return factor


def write_slide(path: Path, side: int, *, quality: int = QUALITY) -> Path:
    """A ``side x side`` Aperio SVS at 0.25 um/px (module docstring), written tile by tile; returns ``path``."""
    import tifffile

    content = SlideContent(side, side)
    h = w = side
    fields = f"|AppMag = 40|MPP = {MPP}"
    head = f"{APERIO_HEAD}{w}x{h} [0,0 {w}x{h}] ({TILE}x{TILE}) JPEG/RGB Q={quality}"
    jpeg = {"photometric": "rgb", "compression": "jpeg", "compressionargs": {"level": quality}, "metadata": None}
    bigtiff = h * w * 3 > 2**32  # the JPEG file of a 32k slide is a few hundred MB: classic TIFF, like most SVS
    tmp = path.with_name(path.name + ".tmp")
    with tifffile.TiffWriter(tmp, bigtiff=bigtiff) as tw:
        tw.write(
            content.tiles(1), shape=(h, w, 3), dtype=np.uint8, tile=(TILE, TILE), description=head + fields, **jpeg
        )
        factor = _overview_factor(side, THUMB_SIDE)
        th, tw_ = -(-h // factor), -(-w // factor)
        thumb = content.region(factor, 0, 0, th, tw_)
        tw.write(thumb, description=f"{APERIO_HEAD}{w}x{h} -> {tw_}x{th} - {fields}", **jpeg)
        for factor in LEVEL_FACTORS:
            lh, lw = -(-h // factor), -(-w // factor)
            desc = f"{head} -> {lw}x{lh}{fields}"
            tw.write(
                content.tiles(factor), shape=(lh, lw, 3), dtype=np.uint8, tile=(TILE, TILE), description=desc, **jpeg
            )
        label = np.full((96, 96, 3), 200, dtype=np.uint8)
        tw.write(
            label,
            photometric="rgb",
            compression="lzw",
            subfiletype=1,
            description=f"{APERIO_HEAD}label 96x96",
            metadata=None,
        )
        factor = _overview_factor(side, MACRO_SIDE)
        mh, mw = -(-h // factor), -(-w // factor)
        macro = content.region(factor, 0, 0, mh, mw)
        tw.write(macro, subfiletype=9, description=f"{APERIO_HEAD}macro {mw}x{mh}", **jpeg)
    tmp.replace(path)
    return path


def check_slide(path: Path, side: int) -> dict[str, Any]:
    """Open the slide the way ``segment`` does and check its levels, scale and format."""
    from histostain.io.slides import open_slide

    with open_slide(path) as slide:
        expected = [(-(-side // f), -(-side // f)) for f in (1, *LEVEL_FACTORS)]
        problems = []
        if slide.format != "aperio":
            problems.append(f"format {slide.format}, not aperio")
        if slide.levels != expected:
            problems.append(f"levels {slide.levels}, not {expected}")
        if slide.mpp is None or abs(slide.mpp - MPP) > 1e-9:
            problems.append(f"mpp {slide.mpp}, not {MPP}")
        centre = slide.read_region(side // 2 - 128, side // 2 - 128, 256, 256, 0)
        corner = slide.read_region(0, 0, 256, 256, 0)
        if not (centre.std() > 20 and corner.std() < 5 and abs(float(corner.mean()) - 238.3) < 3):
            problems.append(f"pixels: centre std {centre.std():.1f}, corner mean {corner.mean():.1f}")
        if problems:
            raise SystemExit(f"{path}: {'; '.join(problems)}")
        return {"levels": [[w, h] for h, w in slide.levels], "mpp": slide.mpp, "format": slide.format}


def ensure_slide(workdir: Path, side: int) -> tuple[Path, float | None]:
    """The cached slide of ``side`` (written when missing); the seconds spent writing it (None: cached)."""
    path = workdir / f"synthetic-{side}-v{WRITER_VERSION}.svs"
    if path.is_file():
        check_slide(path, side)
        return path, None
    print(f"writing {path.name} ({side} x {side}) ...", flush=True)
    start = time.perf_counter()
    write_slide(path, side)
    seconds = time.perf_counter() - start
    info = check_slide(path, side)
    print(
        f"  {seconds:.1f} s, {path.stat().st_size / 2**20:.0f} MB; opens as {info['format']}, levels "
        f"{info['levels']}, mpp {info['mpp']}",
        flush=True,
    )
    return path, seconds


# ------------------------------------------------------------------------------------------------ the child

# Runs the CLI in this process; records VmHWM / VmRSS after the tissue mask, before the outputs and at exit
# into the file named by HISTOSTAIN_BENCH_MARKS (the CLI's stdout stays its JSON alone).
WRAPPER = r"""
import atexit, json, os, resource, sys, time

marks = []

def _status():
    values = {}
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(("VmHWM:", "VmRSS:")):
                values[line.split(":")[0]] = int(line.split()[1]) / 1024.0
    return values

def mark(name):
    marks.append({"mark": name, "t": time.perf_counter(), **_status()})

def _dump():
    mark("exit")
    marks.append({"mark": "children", "ru_maxrss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024})
    marks.append({"mark": "chunks", "rss_hwm": chunks})
    with open(os.environ["HISTOSTAIN_BENCH_MARKS"], "w") as handle:
        json.dump(marks, handle)

atexit.register(_dump)
mark("start")
from histostain.segmentation import slide_segment as ss

_tissue, _finish = ss._tissue, ss._finish

def tissue(*args, **kwargs):
    out = _tissue(*args, **kwargs)
    mark("mask")
    return out

def finish(*args, **kwargs):
    mark("loop_end")
    return _finish(*args, **kwargs)

_save_record = ss._save_record
chunks = []

def save_record(*args, **kwargs):
    _save_record(*args, **kwargs)
    status = _status()
    chunks.append([round(status["VmRSS"], 1), round(status["VmHWM"], 1)])

ss._tissue, ss._finish, ss._save_record = tissue, finish, save_record
from histostain.cli import main
sys.argv = ["histostain", *sys.argv[1:]]
main()
"""


def run_segment(slide: Path, out: Path, model: str, chunk: int, threads: int | None) -> dict[str, Any]:
    """One ``histostain segment`` of ``slide`` in a fresh process: its JSON row, peak memory marks and times."""
    command = [sys.executable, "-c", WRAPPER, "-q", "segment", str(slide), "-o", str(out), "--json", "--overwrite"]
    command += ["--chunk-size", str(chunk)]
    if model != "classical":
        command += ["-w", model]
    env = dict(os.environ)
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as handle:
        marks_path = Path(handle.name)
    env["HISTOSTAIN_BENCH_MARKS"] = str(marks_path)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    load_before = _load()
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    wall = time.perf_counter() - start
    row: dict[str, Any] = {"wall_s": wall, "load_before": load_before, "load_after": _load()}
    try:
        marks = json.loads(marks_path.read_text()) if marks_path.stat().st_size else []
    finally:
        marks_path.unlink(missing_ok=True)
    if result.returncode != 0:
        row["error"] = f"exit code {result.returncode}: {result.stderr.strip()[-800:]}"
        return row
    payload = json.loads(result.stdout)
    report = payload["slides"][0] if isinstance(payload, dict) and "slides" in payload else payload
    row["report"] = report
    by = {m["mark"]: m for m in marks}
    row["marks"] = by
    row["peak_mb"] = by["exit"]["VmHWM"]
    row["children_mb"] = by.get("children", {}).get("ru_maxrss_mb", 0.0)
    return row


# ------------------------------------------------------------------------------------------------ the report


def table(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| slide | model | processing px | peak RSS MB | peak after mask MB | peak at loop end MB | "
        "RSS at loop end MB | RSS at exit MB | CLI s | wall s | MP | MP/s | tiles/s | nuclei | "
        "chunks (tissue / glass) | tissue | load |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---|",
    ]
    for row in rows:
        name = f"{row['side']} x {row['side']}"
        if "error" in row:
            lines.append(f"| {name} | {row['model']} | failed: {row['error'][:300]} |" + " |" * 14)
            continue
        rep, marks = row["report"], row["marks"]
        tiles_s = rep["megapixels"] * 1e6 / (TILE * TILE) / rep["seconds"] if rep["seconds"] else float("nan")
        scale = rep["mpp"] / MPP if rep.get("mpp") else 1.0
        px = f"{round(row['side'] / scale)}^2 @ {rep.get('mpp')} um"
        lines.append(
            f"| {name} | {row['model']} | {px} | {row['peak_mb']:.0f} | {marks['mask']['VmHWM']:.0f} | "
            f"{marks['loop_end']['VmHWM']:.0f} | {marks['loop_end']['VmRSS']:.0f} | {marks['exit']['VmRSS']:.0f} | "
            f"{rep['seconds']:.1f} | "
            f"{row['wall_s']:.1f} | {rep['megapixels']:.1f} | {rep['megapixels_per_second']:.2f} | {tiles_s:.1f} | "
            f"{rep['nuclei']} | {rep['segmented']} / {rep['glass']} of {rep['chunks']} | "
            f"{rep.get('tissue_fraction')} | {row['load_before']:.2f}-{row['load_after']:.2f} |"
        )
    return lines


def trajectory(row: dict[str, Any]) -> str:
    """VmHWM after the first chunk, at each quarter and after the last, and the chunks that raised it most."""
    chunks = row["marks"].get("chunks", {}).get("rss_hwm", [])
    if not chunks:
        return "no chunk segmented"
    n = len(chunks)
    picks = sorted({0, n // 4, n // 2, 3 * n // 4, n - 1})
    path = ", ".join(f"#{i + 1} {chunks[i][1]:.0f}" for i in picks)
    before = [row["marks"]["mask"]["VmHWM"]] + [hwm for _, hwm in chunks[:-1]]
    rises = sorted(
        ((hwm - prev, i) for i, ((_, hwm), prev) in enumerate(zip(chunks, before, strict=True))), reverse=True
    )
    top = ", ".join(f"#{i + 1} +{d:.0f}" for d, i in rises[:4] if d > 0.5)
    rss = [r for r, _ in chunks]
    return (
        f"peak (VmHWM) after chunk {path} MB; largest rises: {top or 'none'}; VmRSS between chunks "
        f"{min(rss):.0f}-{max(rss):.0f} MB (first {rss[0]:.0f}, last {rss[-1]:.0f})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="8192,32768", help="slide sides in pixels, comma-separated")
    parser.add_argument("--model", default="classical", help="classical | hovernet-demo | any -w value")
    parser.add_argument("--chunk-size", type=int, default=2048, help="segment --chunk-size")
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR, help="cache of the written slides")
    parser.add_argument("--threads", type=int, help="OMP_NUM_THREADS of the child (default: unset)")
    parser.add_argument("--keep", action="store_true", help="keep the segment outputs (in WORKDIR/out-*)")
    parser.add_argument("--write-only", action="store_true", help="write (and check) the slides, run nothing")
    parser.add_argument("--save", type=Path, help="also write every run's figures (and marks) to this JSON file")
    args = parser.parse_args()

    sides = [int(s) for s in args.sizes.split(",") if s.strip()]
    if not sides or any(s < TILE for s in sides):
        parser.error(f"--sizes: sides of at least {TILE} px")
    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"{os.cpu_count()} CPUs, load {_load():.2f}; model {args.model}, chunk {args.chunk_size}; {workdir}")
    slides, written = {}, {}
    for side in sides:
        slides[side], written[side] = ensure_slide(workdir, side)
    if args.write_only:
        return
    rows = []
    for side in sides:
        out = workdir / f"out-{side}-{args.model.replace('/', '_')}-{args.chunk_size}"
        print(f"segmenting {slides[side].name} ({args.model}) ...", flush=True)
        row = run_segment(slides[side], out, args.model, args.chunk_size, args.threads)
        row.update(side=side, model=args.model)
        rows.append(row)
        if "error" in row:
            print(f"  failed: {row['error']}", flush=True)
        else:
            rep = row["report"]
            print(
                f"  {rep['seconds']:.1f} s, peak {row['peak_mb']:.0f} MB, {rep['nuclei']} nuclei, "
                f"{rep['megapixels_per_second']:.2f} MP/s",
                flush=True,
            )
        if not args.keep:
            shutil.rmtree(out, ignore_errors=True)

    print()
    print(
        f"`histostain segment` on synthetic Aperio slides (0.25 um/px, JPEG Q{QUALITY}, ~{TISSUE_FRACTION:.0%} "
        f"tissue), model {args.model}, --chunk-size {args.chunk_size}; peak RSS = VmHWM of the child process; "
        f"tiles/s = 256 x 256 processing-pixel tiles of tissue chunk cores per CLI second."
    )
    print()
    print("\n".join(table(rows)))
    print()
    for side in sides:
        if written[side] is not None:
            print(
                f"slide {side} x {side} written in {written[side]:.1f} s ({slides[side].stat().st_size / 2**20:.0f} MB)"
            )
    for row in rows:
        if "error" not in row:
            print(f"{row['side']} x {row['side']}: {trajectory(row)}")
    if args.save:
        args.save.write_text(json.dumps(rows, indent=1) + "\n")
    good = [row for row in rows if "error" not in row]
    if len(good) >= 2:
        low = min(good, key=lambda r: r["side"])
        high = max(good, key=lambda r: r["side"])
        ratio = high["peak_mb"] / low["peak_mb"]
        verdict = "within" if abs(ratio - 1.0) <= RSS_TARGET else "NOT within"
        print(
            f"peak RSS {high['side']} / {low['side']}: {high['peak_mb']:.0f} / {low['peak_mb']:.0f} MB = "
            f"{ratio:.3f} ({verdict} the {RSS_TARGET:.0%} target); "
            f"at the loop's end {high['marks']['loop_end']['VmHWM']:.0f} / {low['marks']['loop_end']['VmHWM']:.0f}"
            f" MB = {high['marks']['loop_end']['VmHWM'] / low['marks']['loop_end']['VmHWM']:.3f}"
        )
    print(f"load average at the end: {_load():.2f} ({os.cpu_count()} CPUs)")


if __name__ == "__main__":
    main()
