#!/usr/bin/env bash
# Checks orthoserve on an NVIDIA GPU machine, in one run:
#   1. installs the CUDA build (vllm at the pinned version) into .venv-cuda;
#   2. exactness of every method and of a mixed batch against the PyTorch reference, in fp32, bf16
#      and fp16, on an eager engine and on a compiled one with CUDA graphs (vLLM's default mode);
#      the bank tests and the GPU-emulation tests run on the real device too;
#      tensor parallelism at TP=2 when two GPUs are visible;
#   3. `orthoserve bench` in bf16, compiled, with its ratios (skipped with --quick).
#
#   scripts/gpu-check.sh [--quick]
#
# Writes docs/gpu/{gpu.txt,pytest.log,bench.txt,bench.json}. Exit status: that of the tests, or of the
# benchmark when the tests passed.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
QUICK=0
[ "${1:-}" = "--quick" ] && QUICK=1
OUT="$ROOT/docs/gpu"

command -v nvidia-smi >/dev/null || { echo "gpu-check: no nvidia-smi: this machine has no NVIDIA GPU" >&2; exit 2; }
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv | tee "$OUT/gpu.txt"
GPUS=$(nvidia-smi --list-gpus | wc -l)

export VENV="${VENV:-$ROOT/.venv-cuda}"
scripts/install.sh cuda --dev
PY="$VENV/bin/python"
"$PY" -c "import torch, vllm; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'vllm', vllm.__version__)" | tee -a "$OUT/gpu.txt"

TESTS=(tests/server/engine/test_adapter_exactness.py tests/adapters/test_serving_banks.py tests/gpu_emulation)
if [ "$GPUS" -ge 2 ]; then TESTS+=(tests/server/engine/test_tensor_parallel.py); fi
status=0
ORTHOSERVE_EXACTNESS_DTYPES=float32,bfloat16,float16 \
    "$PY" -m pytest "${TESTS[@]}" -q -rA --durations=10 2>&1 | tee "$OUT/pytest.log" || status=$?

if [ "$QUICK" -eq 0 ]; then
    "$PY" -m server.cli bench --compiled --dtype bfloat16 --json-out "$OUT/bench.json" --work-dir "$ROOT/gpu-check-work" \
        | tee "$OUT/bench.txt" || { [ "$status" -ne 0 ] || status=$?; }
fi
exit $status
