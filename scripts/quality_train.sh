#!/usr/bin/env bash
# Train the sets of docs/quality.md on SmolLM2-135M-Instruct (CSR-MTL: BoolQ, ARC-Easy, PIQA).
# Usage: scripts/quality_train.sh OUT_DIR [KIND ...]   (default kinds: moore lora badit; one torch thread)
# Environment: PER_TASK (training examples per task, default 128).
set -euo pipefail
OUT=${1:?output folder}
shift
KINDS=("${@:-moore lora badit}")
PY=${PYTHON:-.venv/bin/python}
M=$($PY -m server.cli prepare-model)
mkdir -p "$OUT"
COMMON=(--base-model "$M" --csr-tasks boolq,arc-e,piqa --per-task ${PER_TASK:-128} --epochs 1 --batch-size 4
        --loss completion --seed 42 --threads 1 --checkpoint-every 8 --overwrite)
export OMP_NUM_THREADS=1
for kind in ${KINDS[*]}; do
    extra=()
    [ "$kind" = lora ] && extra=(--match-params)
    start=$(date +%s)
    $PY -m server.cli train "$kind" "${COMMON[@]}" "${extra[@]}" --out "$OUT/sets/csr-$kind" > "$OUT/train-$kind.log" 2>&1
    echo "wall_seconds=$(( $(date +%s) - start ))" >> "$OUT/train-$kind.log"
    tail -2 "$OUT/train-$kind.log"
done
