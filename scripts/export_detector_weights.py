"""Export a ``train detector`` run as the packaged ``detector-endonuke`` weights and measure them on held-out tiles.

Called by ``scripts/train_detector_weights.sh``; also usable alone::

    python scripts/export_detector_weights.py RUNS/detector-endonuke PREPARED \\
        --out src/histostain/weights/packaged/detector-endonuke.pt

The run's best checkpoint (by validation F1 at 3 um) is written with
:func:`histostain.segmentation.detector_weights.export_detector` (float16 weights, the stored threshold). The
exported file is then measured exactly as a user would: ``histostain segment --model detector --weights FILE``
on the prepared test split's images and ``histostain evaluate celldet`` against its labels at 3 um. The
validation and test figures are stored in the file (``validation``) and printed with its sha256 and size for
``src/histostain/weights/models.toml``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

MAX_BYTES = 5 * 1024 * 1024


def histostain(*args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "histostain", *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"histostain {' '.join(args)} failed: {done.stderr.strip().splitlines()[-1:]}")
    return done.stdout


def held_out(weights: Path, prepared: Path, split: str, mpp: float) -> dict[str, float]:
    """P/R/F1 at 3 um of ``weights`` on a prepared split, through the CLI."""
    with tempfile.TemporaryDirectory() as tmp:
        points = Path(tmp) / "points"
        images, labels = prepared / split / "images", prepared / split / "labels"
        histostain("segment", str(images), "-o", str(points), "--model", "detector", "--weights", str(weights),
                   "--mpp", str(mpp), "--formats", "txt", "--quiet")  # fmt: skip
        report = json.loads(histostain("evaluate", "celldet", str(labels), str(points), "--radius-um", "3",
                                       "--mpp", str(mpp), "--json"))  # fmt: skip
    summary = report["summary"]
    return {key: float(summary[key]) for key in ("precision", "recall", "f1", "tp", "fp", "fn", "n_images")}


def main() -> None:
    from histostain.runtime.checkpoint import load_checkpoint, sha256_file
    from histostain.segmentation.detector_weights import export_detector

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="the `train detector` run folder")
    parser.add_argument("prepared", type=Path, help="the prepared EndoNuke folder it trained on (test split used)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    best = args.run / "checkpoints" / "best.pt"
    if not best.is_file():
        raise SystemExit(f"{best} does not exist: train first")
    header = load_checkpoint(best)
    mpp = float(header["mpp"])
    # the epoch best.pt was saved at and its validation F1 as training measured it (decoded in memory)
    validation = {"best_val_f1": float(header.get("best", float("nan"))), "epoch": int(header.get("epoch", 0))}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    export_detector(best, args.out, validation=validation)
    test = held_out(args.out, args.prepared, "test", mpp)
    val = held_out(args.out, args.prepared, "val", mpp)
    validation.update({f"test_{k}": v for k, v in test.items()}, **{f"val_{k}": v for k, v in val.items()})
    export_detector(best, args.out, validation=validation)  # the same weights, now with their figures
    size = args.out.stat().st_size
    if size > MAX_BYTES:
        raise SystemExit(f"{args.out} is {size} bytes, over the 5 MB a packaged model may take")
    sys.stdout.write(json.dumps(validation, indent=2) + "\n")
    sys.stdout.write(f'sha256 = "{sha256_file(args.out)}"\nsize_bytes = {size}\n')


if __name__ == "__main__":
    main()
