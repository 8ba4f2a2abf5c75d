#!/usr/bin/env bash
# Train the three sets of docs/quality.md on SmolLM2-135M-Instruct (CSR-MTL: BoolQ, ARC-Easy, PIQA).
# Usage: scripts/quality_train.sh OUT_DIR   (one torch thread; logs and sets under OUT_DIR)
set -euo pipefail
OUT=${1:?output folder}
PY=${PYTHON:-.venv/bin/python}
M=$($PY -m server.cli prepare-model)
mkdir -p "$OUT"
COMMON=(--base-model "$M" --csr-tasks boolq,arc-e,piqa --per-task 150 --epochs 1 --batch-size 4
        --loss completion --seed 42 --threads 1 --checkpoint-every 40 --no-progress --overwrite)
export OMP_NUM_THREADS=1
for kind in moore lora badit; do
    extra=()
    [ "$kind" = lora ] && extra=(--match-params)
    start=$(date +%s)
    $PY -m server.cli train "$kind" "${COMMON[@]}" "${extra[@]}" --out "$OUT/sets/csr-$kind" 2>&1 | tee "$OUT/train-$kind.log"
    echo "wall_seconds=$(( $(date +%s) - start ))" | tee -a "$OUT/train-$kind.log"
done
