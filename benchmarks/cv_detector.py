"""K-fold cross-validation of the IHC nuclei detector on raw EndoNuke tiles, split by tile, through the CLI.

For each fold k the tiles of fold k are the test set, those of fold k+1 the validation set (it picks the
stored score threshold and the best epoch) and the rest the training set, so every tile is tested exactly once
by a detector that never saw it. Each fold runs the commands a user runs::

    histostain prepare endonuke RAW --out WORK/all --mpp 0.5 --fractions 1,0,0   (once)
    histostain train detector WORK/foldK/prepared --name foldK --runs-dir WORK/runs [TRAIN OPTIONS]
    histostain segment WORK/foldK/images -o WORK/foldK/points --model detector --weights WORK/runs/foldK \\
        --stain ihc --mpp 0.5 --formats txt
    histostain evaluate celldet WORK/foldK/labels WORK/foldK/points --radius-um 3 --mpp 0.5 --json

and the test tiles are the raw images at their own 0.5 um/px. The script prints per fold and pooled over the
folds (TP/FP/FN added up) precision, recall and F1 at 3 um (class-agnostic), the per-class F1 of
``evaluate celldet`` (HoVer-Net/CoNIC's definition) and the training time, and writes WORK/cv.json. A
finished fold (its evaluation file exists) is not run again; a fold whose training was interrupted resumes.

    python benchmarks/cv_detector.py ../shared/data/endonuke-dev --work /tmp/cv --jobs 2 \\
        -- --config scripts/detector-endonuke.toml
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ANNOTATOR = "ptg1"
CLASSES = {0: "stroma", 1: "epithelium", 2: "other"}


def run(cmd: list[str], env: dict[str, str] | None = None, log: Path | None = None) -> str:
    """Run a histostain command; its stdout (stderr goes to ``log``). A failure stops the script."""
    with open(log or os.devnull, "a") as err:
        done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=env, check=False)
    if done.returncode != 0:
        sys.exit(f"failed ({done.returncode}): {' '.join(cmd)}" + (f" (see {log})" if log else ""))
    return done.stdout


def histostain(*args: str) -> list[str]:
    return [sys.executable, "-m", "histostain", *args]


def link(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.exists():
        target.symlink_to(source.resolve())


def fold_prepared(all_dir: Path, out: Path, test: set[str], val: set[str]) -> None:
    """A prepared folder whose splits are this fold's (symlinks to the files of ``all_dir``)."""
    if (out / "manifest.json").exists():
        return
    manifest = json.loads((all_dir / "manifest.json").read_text())
    counts = {"train": 0, "val": 0, "test": 0}
    for sample in manifest["samples"]:
        split = "test" if sample["id"] in test else "val" if sample["id"] in val else "train"
        source_split = sample["split"]
        sample["split"] = split
        counts[split] += 1
        for sub, suffix in (("images", ".png"), ("labels", ".txt")):
            link(
                all_dir / source_split / sub / f"{sample['id']}{suffix}", out / split / sub / f"{sample['id']}{suffix}"
            )
    manifest["splits"] = counts
    manifest["options"]["fractions"] = {"train": 0.6, "val": 0.2, "test": 0.2}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))


def one_fold(
    k: int, work: Path, raw: Path, ids: list[str], folds: list[list[str]], train_args: list[str], threads: int
) -> dict:
    fold = work / f"fold{k}"
    result_file = fold / "celldet.json"
    if result_file.exists():
        return json.loads(result_file.read_text())
    test, val = set(folds[k]), set(folds[(k + 1) % len(folds)])
    fold_prepared(work / "all", fold / "prepared", test, val)
    images, labels = raw / "data" / "dataset" / "images", raw / "data" / "dataset" / "labels" / "bulk" / ANNOTATOR
    for sample_id in sorted(test):
        link(images / f"{sample_id}.png", fold / "images" / f"{sample_id}.png")
        link(labels / f"{sample_id}.txt", fold / "labels" / f"{sample_id}.txt")
    env = {**os.environ, "HISTOSTAIN_NUM_THREADS": str(threads)}
    log = fold / "log.txt"
    run_dir = work / "runs" / f"fold{k}"
    resume = ["--resume"] if (run_dir / "checkpoints" / "last.pt").exists() else []
    start = time.perf_counter()
    train = histostain(
        "train", "detector", str(fold / "prepared"), "--name", f"fold{k}", "--runs-dir", str(work / "runs")
    )
    run([*train, *resume, *train_args, "--quiet"], env, log)
    seconds = time.perf_counter() - start
    points = fold / "points"
    shutil.rmtree(points, ignore_errors=True)
    segment = histostain(
        "segment", str(fold / "images"), "-o", str(points), "--model", "detector", "--weights", str(run_dir)
    )
    run([*segment, "--stain", "ihc", "--mpp", "0.5", "--formats", "txt", "--quiet"], env, log)
    evaluate = histostain("evaluate", "celldet", str(fold / "labels"), str(points), "--radius-um", "3", "--mpp", "0.5")
    report = json.loads(run([*evaluate, "--json"], env, log))
    summary = report["summary"]
    per_class = {
        CLASSES.get(int(row["class"]), str(row["class"])): row for row in report["tables"].get("per_class", [])
    }
    result = {
        "fold": k,
        "tiles": len(test),
        "train_seconds": round(seconds, 1),
        "tp": int(summary["tp"]),
        "fp": int(summary["fp"]),
        "fn": int(summary["fn"]),
        "precision": summary["precision"],
        "recall": summary["recall"],
        "f1": summary["f1"],
        "type_accuracy": summary.get("type_accuracy"),
        "class_f1": {name: row["f1"] for name, row in per_class.items()},
        "per_image": [
            {key: row[key] for key in ("stem", "n_true", "tp", "fp", "fn", "f1")} for row in report["per_image"]
        ],
        "class_counts": {
            name: {key: row[key] for key in ("tp", "fp_dt", "fn_dt", "fp_d", "fn_d")} for name, row in per_class.items()
        },
    }
    result_file.write_text(json.dumps(result, indent=2))
    print(
        f"fold {k}: P {result['precision']:.4f} R {result['recall']:.4f} F1 {result['f1']:.4f} "
        f"({seconds:.0f} s training)",
        flush=True,
    )
    return result


def pooled(results: list[dict]) -> dict:
    tp, fp, fn = (sum(r[key] for r in results) for key in ("tp", "fp", "fn"))
    precision, recall = tp / max(tp + fp, 1), tp / max(tp + fn, 1)
    f1 = 2 * tp / max(2 * tp + fp + fn, 1)
    classes = {}
    for name in CLASSES.values():
        counts = [r["class_counts"][name] for r in results if name in r["class_counts"]]
        if counts:  # CoNIC's per-class F1 over the pooled counts (weights 2, 2, 1, 1)
            c = {key: sum(x[key] for x in counts) for key in counts[0]}
            denominator = 2 * c["tp"] + 2 * c["fp_dt"] + 2 * c["fn_dt"] + c["fp_d"] + c["fn_d"]
            classes[name] = 2 * c["tp"] / denominator if denominator else float("nan")
    fold_f1 = [r["f1"] for r in results]
    return {
        "tp": tp, "fp": fp, "fn": fn, "precision": precision, "recall": recall, "f1": f1,
        "f1_mean": float(np.mean(fold_f1)), "f1_sd": float(np.std(fold_f1, ddof=1)) if len(fold_f1) > 1 else 0.0,
        "class_f1": classes,
        "train_seconds_mean": float(np.mean([r["train_seconds"] for r in results])),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("raw", type=Path, help="raw EndoNuke folder (data/dataset/images, labels/bulk/ptg1)")
    parser.add_argument("--work", type=Path, required=True, help="working folder (kept: re-runs resume)")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0, help="seed of the tile shuffle")
    parser.add_argument("--jobs", type=int, default=1, help="folds trained at once")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per fold (default: cores / jobs)")
    argv = sys.argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)
    args = parser.parse_args(argv[:split])
    args.train_args = argv[split + 1 :]  # options for `train detector`, after --
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    if not (work / "all" / "manifest.json").exists():
        prepare = histostain("prepare", "endonuke", str(args.raw), "--out", str(work / "all"), "--mpp", "0.5")
        run([*prepare, "--fractions", "1,0,0", "--annotator", ANNOTATOR, "--quiet"], log=work / "prepare.log")
    manifest = json.loads((work / "all" / "manifest.json").read_text())
    ids = sorted(sample["id"] for sample in manifest["samples"])
    order = np.random.default_rng(args.seed).permutation(len(ids))
    folds = [sorted(ids[i] for i in part) for part in np.array_split(order, args.folds)]
    threads = args.threads or max(1, (os.cpu_count() or 1) // max(1, args.jobs))
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        jobs = [
            pool.submit(one_fold, k, work, args.raw, ids, folds, args.train_args, threads) for k in range(args.folds)
        ]
        results = [job.result() for job in jobs]
    total = pooled(results)
    (work / "cv.json").write_text(
        json.dumps({"folds": results, "pooled": total, "train_args": args.train_args}, indent=2)
    )
    names = list(CLASSES.values())
    print("\n| fold | tiles | P | R | F1 | " + " | ".join(f"F1 {n}" for n in names) + " | train s |")
    print("| --- " * (6 + len(names)) + "|")
    for r in results:
        cls = " | ".join(f"{r['class_f1'].get(n, float('nan')):.3f}" for n in names)
        print(
            f"| {r['fold']} | {r['tiles']} | {r['precision']:.4f} | {r['recall']:.4f} | {r['f1']:.4f} | {cls} "
            f"| {r['train_seconds']:.0f} |"
        )
    cls = " | ".join(f"{total['class_f1'].get(n, float('nan')):.3f}" for n in names)
    print(
        f"| pooled | {len(ids)} | {total['precision']:.4f} | {total['recall']:.4f} | {total['f1']:.4f} | {cls} "
        f"| {total['train_seconds_mean']:.0f} |"
    )
    print(f"\nF1 per fold: mean {total['f1_mean']:.4f}, sd {total['f1_sd']:.4f}")
    tiles = sorted((row for r in results for row in r.get("per_image", [])), key=lambda row: row["f1"])
    if tiles:
        worst = ", ".join(f"{row['stem']} {row['f1']:.3f}" for row in tiles[:5])
        best = ", ".join(f"{row['stem']} {row['f1']:.3f}" for row in tiles[-5:])
        print(f"worst tiles (F1): {worst}\nbest tiles (F1): {best}")


if __name__ == "__main__":
    main()
