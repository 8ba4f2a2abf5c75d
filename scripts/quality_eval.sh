#!/usr/bin/env bash
# Score the base model and the sets trained by scripts/quality_train.sh through a real orthoserve server
# (fp32), and the PyTorch reference on the first REF_LIMIT items per task (fidelity).
# Usage: scripts/quality_eval.sh OUT_DIR [ROW ...]    rows: base moore lora badit (default: all)
# Environment: LIMIT (items per task, default 100), REF_LIMIT (default 20), PORT (default 8391);
# a server already running on PORT with ADMIN_TOKEN (default quality) is reused, else one is started.
set -euo pipefail
OUT=$(cd "${1:?output folder}" && pwd)
shift
ROWS=("${@:-base moore lora badit}")
LIMIT=${LIMIT:-100}
REF_LIMIT=${REF_LIMIT:-20}
PORT=${PORT:-8391}
ADMIN_TOKEN=${ADMIN_TOKEN:-quality}
PY=${PYTHON:-.venv/bin/python}
M=$($PY -m server.cli prepare-model)
TASKS=boolq,arc-e,piqa,sciq,copa
URL=http://127.0.0.1:$PORT
export OMP_NUM_THREADS=1
if ! curl -sf "$URL/health" >/dev/null; then
    $PY -m server.cli serve --model "$M" --dtype float32 --port "$PORT" --cpu-threads 1 --max-model-len 1024 --max-lora-rank 128 \
        --admin-token "$ADMIN_TOKEN" --adapter-root "$OUT/sets" > "$OUT/server.log" 2>&1 &
    SERVER=$!
    trap 'kill $SERVER 2>/dev/null || true' EXIT
    until curl -sf "$URL/health" >/dev/null; do
        kill -0 $SERVER 2>/dev/null || { echo "server exited; see $OUT/server.log" >&2; exit 1; }
        sleep 5
    done
fi
# Held-out tasks run on the MoORE task of the most similar format: SciQ (4-way science MC) on arc-e, COPA (2-way) on piqa.
ROUTES=(--route-task sciq=arc-e --route-task copa=piqa)
declare -A MODEL=([base]="$(basename "$M")" [moore]="csr-moore/{task}" [lora]=csr-lora [badit]=csr-badit)
for row in ${ROWS[*]}; do
    fidelity=()
    if [ "$row" != base ]; then
        curl -sf -H "Authorization: Bearer $ADMIN_TOKEN" -X DELETE "$URL/v1/adapter-sets/csr-$row?wait=true" >/dev/null || true
        curl -sS --fail-with-body -H "Authorization: Bearer $ADMIN_TOKEN" -H "Content-Type: application/json" -d "{\"name\":\"csr-$row\",\"path\":\"$OUT/sets/csr-$row\"}" \
            "$URL/v1/adapter-sets" >/dev/null
        fidelity=(--reference --set-dir "$OUT/sets/csr-$row")
    fi
    start=$(date +%s)
    $PY -m server.cli eval --base-model "$M" --model "${MODEL[$row]}" --tasks $TASKS --limit "$LIMIT" "${ROUTES[@]}" \
        --base-url "$URL/v1" --json-out "$OUT/eval-$row.json" > "$OUT/eval-$row.txt"
    echo "wall_seconds=$(( $(date +%s) - start ))" >> "$OUT/eval-$row.txt"
    cat "$OUT/eval-$row.txt"
    $PY -m server.cli eval --base-model "$M" --model "${MODEL[$row]}" --tasks $TASKS --limit "$REF_LIMIT" "${ROUTES[@]}" \
        --base-url "$URL/v1" --reference ${fidelity[*]} --json-out "$OUT/fidelity-$row.json" > "$OUT/fidelity-$row.txt"
    cat "$OUT/fidelity-$row.txt"
done
