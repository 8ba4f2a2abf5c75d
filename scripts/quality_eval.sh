#!/usr/bin/env bash
# Score the base model and the sets of scripts/quality_train.sh through one real orthoserve server (fp32):
# per-choice log-likelihoods (lm-eval's cloze scoring) and the label-token argmax of MoORE's lettered
# prompts, one JSONL line per item; the PyTorch reference scores the first FIDELITY items per task.
# Usage: scripts/quality_eval.sh OUT_DIR [ROW ...]    rows: base moore lora badit (default: all)
# Environment: LIMIT (first N items of every task instead of the sizes below), FIDELITY (items per task
# for the reference, default 100), PORT (default 8391),
# THREADS (server CPU threads, default 1); a server already on PORT (ADMIN_TOKEN, default quality) is reused.
set -euo pipefail
OUT=$(cd "${1:?output folder}" && pwd)
shift
ROWS=("${@:-base moore lora badit}")
PORT=${PORT:-8391}
ADMIN_TOKEN=${ADMIN_TOKEN:-quality}
PY=${PYTHON:-.venv/bin/python}
M=$($PY -m server.cli prepare-model)
# Trained: ARC-Easy (all 570), PIQA and SIQA (first 500). Held out: SciQ (1,000), COPA (100), OpenBookQA (500).
TASKS=(--tasks arc-e,piqa,siqa,sciq,copa,obqa --task-limit piqa=500 --task-limit siqa=500)
[ -n "${LIMIT:-}" ] && TASKS=(--tasks arc-e,piqa,siqa,sciq,copa,obqa --limit "$LIMIT")
URL=http://127.0.0.1:$PORT
export OMP_NUM_THREADS=${THREADS:-1}
mkdir -p "$OUT/results"
if ! curl -sf "$URL/health" >/dev/null; then
    $PY -m server.cli serve --model "$M" --dtype float32 --port "$PORT" --cpu-threads "${THREADS:-1}" --max-model-len 1024 \
        --max-lora-rank 128 --admin-token "$ADMIN_TOKEN" --adapter-root "$OUT/sets" > "$OUT/server.log" 2>&1 &
    SERVER=$!
    trap 'kill $SERVER 2>/dev/null || true' EXIT
    until curl -sf "$URL/health" >/dev/null; do
        kill -0 $SERVER 2>/dev/null || { echo "server exited; see $OUT/server.log" >&2; exit 1; }
        sleep 5
    done
fi
# A MoORE set answers a held-out task with one of its own tasks: SciQ and OpenBookQA (science questions)
# with arc-e, COPA (two-way everyday reasoning) with piqa.
ROUTES=(--route-task sciq=arc-e --route-task obqa=arc-e --route-task copa=piqa)
declare -A MODEL=([base]="$(basename "$M")" [moore]="csr-moore/{task}" [lora]=csr-lora [badit]=csr-badit)
for row in ${ROWS[*]}; do
    fidelity=(--reference --fidelity-limit "${FIDELITY:-100}" --fidelity-out "$OUT/results/fidelity-$row.jsonl")
    if [ "$row" != base ]; then
        curl -sf -H "Authorization: Bearer $ADMIN_TOKEN" -X DELETE "$URL/v1/adapter-sets/csr-$row?wait=true" >/dev/null || true
        curl -sS --fail-with-body -H "Authorization: Bearer $ADMIN_TOKEN" -H "Content-Type: application/json" \
            -d "{\"name\":\"csr-$row\",\"path\":\"$OUT/sets/csr-$row\"}" "$URL/v1/adapter-sets" >/dev/null
        fidelity+=(--set-dir "$OUT/sets/csr-$row")
    fi
    start=$(date +%s)
    $PY -m server.cli eval --base-model "$M" --model "${MODEL[$row]}" --set-name "$row" "${TASKS[@]}" "${ROUTES[@]}" \
        --base-url "$URL/v1" --jsonl-out "$OUT/results/eval-$row.jsonl" "${fidelity[@]}" > "$OUT/eval-$row.txt"
    echo "wall_seconds=$(( $(date +%s) - start ))" >> "$OUT/eval-$row.txt"
    cat "$OUT/eval-$row.txt"
done
