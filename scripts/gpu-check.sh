#!/usr/bin/env bash
# Checks orthoserve on an NVIDIA GPU machine: installs the CUDA build, runs the engine exactness
# tests (eager and compiled, TP=1; TP=2 too when two GPUs are visible) and the engine benchmark.
#
#   scripts/gpu-check.sh [--quick]     --quick: exactness tests only, no benchmark
#
# Writes gpu-check/{pytest.log,bench.json,bench.txt}. Exit status: that of the tests.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
QUICK=0
[ "${1:-}" = "--quick" ] && QUICK=1

command -v nvidia-smi >/dev/null || { echo "gpu-check: no nvidia-smi: this machine has no NVIDIA GPU" >&2; exit 2; }
nvidia-smi --query-gpu=name,memory.total --format=csv
GPUS=$(nvidia-smi --list-gpus | wc -l)

VENV="${VENV:-$ROOT/.venv-cuda}" scripts/install.sh cuda --dev
PY="${VENV:-$ROOT/.venv-cuda}/bin/python"
mkdir -p gpu-check

TESTS=(tests/adapters/test_serving_banks.py tests/server/engine/test_adapter_exactness.py)
if [ "$GPUS" -ge 2 ]; then TESTS+=(tests/server/engine/test_tensor_parallel.py); fi
status=0
"$PY" -m pytest "${TESTS[@]}" -q 2>&1 | tee gpu-check/pytest.log || status=$?

if [ "$QUICK" -eq 0 ]; then
    "$PY" -m server.cli bench --compiled --json-out gpu-check/bench.json --work-dir gpu-check/work | tee gpu-check/bench.txt
fi
exit $status
