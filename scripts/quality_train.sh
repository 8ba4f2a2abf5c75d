#!/usr/bin/env bash
# Train the sets of docs/quality.md on SmolLM2-135M-Instruct: ARC-Easy, PIQA and SIQA, each training
# document in the cloze form and in MoORE's lettered form (scripts/quality_data.py), same data and seed
# for every method, one torch thread per run (run two kinds side by side to use both cores).
# Usage: scripts/quality_train.sh OUT_DIR KIND [KIND ...]     kinds: moore lora badit
# Environment: PER_TASK (documents per task, default 200), EPOCHS (default 1), BATCH (default 8).
set -euo pipefail
OUT=${1:?output folder}
shift
PY=${PYTHON:-.venv/bin/python}
M=$($PY -m server.cli prepare-model)
mkdir -p "$OUT"
DATA="$OUT/train-${PER_TASK:-200}.jsonl"
[ -f "$DATA" ] || $PY scripts/quality_data.py "$DATA" --tasks arc-e,piqa,siqa --per-task "${PER_TASK:-200}" --seed 42
COMMON=(--base-model "$M" --data "$DATA" --epochs "${EPOCHS:-1}" --batch-size "${BATCH:-8}" --loss completion --seed 42
        --threads 1 --checkpoint-every 20)
export OMP_NUM_THREADS=1
for kind in "$@"; do
    extra=()
    [ "$kind" = lora ] && extra=(--match-params)
    resume=(--overwrite)
    [ -d "$OUT/sets/csr-$kind.checkpoints" ] && resume=(--resume)
    start=$(date +%s)
    $PY -m server.cli train "$kind" "${COMMON[@]}" "${extra[@]}" "${resume[@]}" --out "$OUT/sets/csr-$kind" >> "$OUT/train-$kind.log" 2>&1
    echo "wall_seconds=$(( $(date +%s) - start ))" >> "$OUT/train-$kind.log"
    tail -2 "$OUT/train-$kind.log"
done
