"""On CUDA, fp16 and bf16 banks run their segmented products through vLLM's punica LoRA kernels.

No GPU here: the same Triton kernels run through Triton's interpreter on the CPU, called exactly as a
GPU engine calls them (`GroupedWeights` with the kernel `segmented_kernel` picks for CUDA), for shrink
and expand shapes, every slot listed and only some, and are compared with one product per slot. The
interpreter has no bf16 arithmetic (NumPy has no such type), so fp16 stands for both half types.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_punica_kernels_equal_one_product_per_slot() -> None:
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("punica_interpreted.py"))],
        env=env, capture_output=True, text=True, timeout=600, cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    assert results.pop("kernel").startswith("vLLM punica")
    assert len(results) == 4
    for name, worst in results.items():
        assert worst <= 2e-2, (name, worst)  # fp16 products of unit-scale values
