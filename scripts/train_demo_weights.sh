#!/usr/bin/env bash
# Train histostain's built-in DEMO weights (registry names cyclegan-demo and hovernet-demo) on synthetic
# tissue from `histostain synth`, with histostain's own `train` commands, and export them (fp16) into
# src/histostain/weights/demo/. DEMO ONLY: the networks never see real tissue; do not use them on real slides.
#
#   scripts/train_demo_weights.sh [WORK_DIR]     # WORK_DIR keeps the data and the runs (default: a temp dir)
#
# One CPU thread (HISTOSTAIN_NUM_THREADS=1 unless set) took 39 minutes on a shared 2-core machine. HISTOSTAIN
# (the CLI) and PYTHON default to the repository's .venv. Afterwards, copy the sha256 and size_bytes the export
# prints into the cards in src/histostain/weights/models.toml (and re-measure the floor in
# tests/weights/test_demo_weights.py).
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
export HISTOSTAIN_NUM_THREADS="${HISTOSTAIN_NUM_THREADS:-1}"
WORK="$(work_dir "${1:-}" histostain-demo-weights)"
OUT="$ROOT/src/histostain/weights/demo"

step "work dir: $WORK (threads: $HISTOSTAIN_NUM_THREADS)"

step "synthetic data: 200 BCI pairs (256 px, seed 1) and 300 PanNuke patches (256 px, seed 2)"
run "$HISTOSTAIN" synth --layout bci --n 200 --size 256 --seed 1 --out "$WORK/raw/bci" --overwrite
run "$HISTOSTAIN" synth --layout pannuke --n 300 --size 256 --seed 2 --out "$WORK/raw/pannuke" --overwrite

step "prepare: BCI as whole 256 px patches; PanNuke split at random 85/15/0"
run "$HISTOSTAIN" prepare bci "$WORK/raw/bci" --out "$WORK/prepared/bci" --patch 256 --size 256 --overwrite
run "$HISTOSTAIN" prepare pannuke "$WORK/raw/pannuke" --out "$WORK/prepared/pannuke" \
    --split random --fractions 0.85,0.15,0 --overwrite

step "train hovernet-demo: fast mode, 6 types, encoder x0.125 (1 unit per group), decoder x0.125 (2+2 dense units)"
cat > "$WORK/hovernet-demo.toml" <<'TOML'
# the hovernet-demo network: ~0.32 M parameters (the published HoVer-Net has ~38 M)
units = [1, 1, 1, 1]
decoder_units = [2, 2]
TOML
# the encoder is random (scratch), so no frozen phase: 4 epochs of all layers, lr 1e-3 then 1e-4 for the last
run "$HISTOSTAIN" --device cpu train hovernet "$WORK/prepared/pannuke" --name hovernet-demo \
    --runs-dir "$WORK/runs" --overwrite --config "$WORK/hovernet-demo.toml" \
    --mode fast --num-types 6 --encoder-width 0.125 --decoder-width 0.125 \
    --phase1-epochs 0 --phase2-epochs 4 --batch-size-phase2 4 --lr 1e-3 --decay-epoch 3 \
    --seed 10 --num-workers 0 --save-every 0 --sample-every 0 --log-every 16 --val-every 1

step "train cyclegan-demo: IHC -> H&E, ngf 16, ndf 16, 6 residual blocks, 128 px crops"
run "$HISTOSTAIN" --device cpu train cyclegan "$WORK/prepared/bci" --name cyclegan-demo \
    --runs-dir "$WORK/runs" --overwrite --direction ihc2he \
    --ngf 16 --ndf 16 --n-blocks 6 --crop 128 --epochs 4 --epochs-decay 2 --batch-size 1 \
    --seed 0 --num-workers 0 --save-every 0 --sample-every 0 --log-every 64 --val-every 0

step "export fp16 weights to $OUT"
run "$PYTHON" "$ROOT/scripts/export_demo_weights.py" \
    --hovernet-run "$WORK/runs/hovernet-demo" --cyclegan-run "$WORK/runs/cyclegan-demo" --out "$OUT"

step "done in $((SECONDS - START)) s; data and runs kept in $WORK"
