#!/usr/bin/env bash
# Score the base model and the sets trained by scripts/quality_train.sh through a real orthoserve server
# (fp32), and the PyTorch reference on a subset (fidelity). Usage: scripts/quality_eval.sh OUT_DIR [LIMIT] [REF_LIMIT]
set -euo pipefail
OUT=${1:?output folder}
LIMIT=${2:-100}
REF_LIMIT=${3:-20}
PORT=${PORT:-8391}
PY=${PYTHON:-.venv/bin/python}
M=$($PY -m server.cli prepare-model)
TASKS=boolq,arc-e,piqa,sciq,copa
URL=http://127.0.0.1:$PORT/v1
export OMP_NUM_THREADS=1
$PY -m server.cli serve --model "$M" --dtype float32 --adapter-sets "$OUT/sets" --port "$PORT" \
    --cpu-threads 1 --max-model-len 1024 > "$OUT/server.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
until curl -sf "http://127.0.0.1:$PORT/health" >/dev/null; do
    kill -0 $SERVER 2>/dev/null || { echo "server exited; see $OUT/server.log" >&2; exit 1; }
    sleep 5
done
curl -sf "$URL/models" | $PY -c 'import json,sys; print([m["id"] for m in json.load(sys.stdin)["data"]])'
# Held-out tasks run on the MoORE task of the most similar format: SciQ (4-way science MC) on arc-e, COPA (2-way) on piqa.
ROUTES=(--route-task sciq=arc-e --route-task copa=piqa)
declare -A MODEL=([base]="$(basename "$M")" [moore]="csr-moore/{task}" [lora]=csr-lora [badit]=csr-badit)
for row in base moore lora badit; do
    start=$(date +%s)
    $PY -m server.cli eval --base-model "$M" --model "${MODEL[$row]}" --tasks $TASKS --limit "$LIMIT" "${ROUTES[@]}" \
        --base-url "$URL" --json-out "$OUT/eval-$row.json" | tee "$OUT/eval-$row.txt"
    echo "wall_seconds=$(( $(date +%s) - start ))" | tee -a "$OUT/eval-$row.txt"
done
for row in moore badit; do
    set_dir="$OUT/sets/csr-$row"
    $PY -m server.cli eval --base-model "$M" --model "${MODEL[$row]}" --tasks $TASKS --limit "$REF_LIMIT" "${ROUTES[@]}" \
        --base-url "$URL" --reference --set-dir "$set_dir" --json-out "$OUT/fidelity-$row.json" | tee "$OUT/fidelity-$row.txt"
done
