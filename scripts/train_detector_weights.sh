#!/usr/bin/env bash
# Reproduce histostain's packaged IHC nuclei detector (registry name detector-endonuke) from the real EndoNuke
# development tiles, with histostain's own commands, and export it (float16) into
# src/histostain/weights/packaged/.
#
#   scripts/train_detector_weights.sh [ENDONUKE_DIR] [WORK_DIR]
#
# ENDONUKE_DIR is the raw EndoNuke folder (default ../shared/data/endonuke-dev: 97 tiles, annotator ptg1);
# WORK_DIR keeps the prepared data and the run (default: a temp dir). The EndoNuke dataset is CC BY 4.0
# (Naumov et al., EndoNuke, Data 7(6):75 (2022)): credit it wherever the weights are shown.
#
# Split: `prepare endonuke`'s default random 60/20/20 with seed 0 (58 train, 20 val, 19 test tiles); the val
# split picks the best epoch and the score threshold, the test split is only measured. Training took about
# 28 minutes (prepare, train, export and measure) with one thread while five cross-validation trainings shared
# the project's 2-core CPU. HISTOSTAIN (the CLI) and PYTHON default to the
# repository's .venv. Afterwards, copy the sha256 and size_bytes the export prints into the detector-endonuke
# card in src/histostain/weights/models.toml, and the figures into docs/models/detector-endonuke.md.
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
RAW="${1:-$ROOT/../shared/data/endonuke-dev}"
WORK="$(work_dir "${2:-}" histostain-detector)"
OUT="$ROOT/src/histostain/weights/packaged/detector-endonuke.pt"

step "prepare: the tiles at their own 0.5 um/px, annotator ptg1, random 60/20/20 split (seed 0)"
run "$HISTOSTAIN" prepare endonuke "$RAW" --out "$WORK/prepared" --mpp 0.5 --annotator ptg1 --overwrite

step "train detector-endonuke with scripts/detector-endonuke.toml (the recipe benchmarks/cv_detector.py validates)"
run "$HISTOSTAIN" train detector "$WORK/prepared" --name detector-endonuke --runs-dir "$WORK/runs" \
    --config "$ROOT/scripts/detector-endonuke.toml" --overwrite

step "export (float16) and measure on the held-out test split through segment + evaluate celldet"
run "$PYTHON" "$ROOT/scripts/export_detector_weights.py" "$WORK/runs/detector-endonuke" "$WORK/prepared" --out "$OUT"

step "done in $((SECONDS - START)) s: $OUT"
