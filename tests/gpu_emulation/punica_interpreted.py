"""Runs orthoserve's punica kernel path (vLLM's `lora_shrink` / `lora_expand` Triton kernels) on the
CPU through Triton's interpreter, and prints, per case, the largest difference from one product per
slot. Run as a script with TRITON_INTERPRET=1 (see test_punica_products.py)."""

from __future__ import annotations

import json
import types

import triton.backends

# vLLM's CPU build keeps Triton only where a CPU backend is registered; the interpreter needs no driver.
triton.backends.backends.setdefault("cpu", types.SimpleNamespace(driver=None))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from adapters.serving.grouped import Groups, GroupedWeights, grouped_matmul_reference  # noqa: E402
from server.engine.vllm.worker import segmented_kernel  # noqa: E402

CPU = torch.device("cpu")


def case(a: int, b: int, ends: list[int], slots: list[int] | None, dtype: torch.dtype) -> float:
    torch.manual_seed(a * 1000 + b)
    kernel = segmented_kernel(torch.device("cuda"), dtype)  # what a GPU engine picks
    weights = GroupedWeights(4, a, b, device=CPU, dtype=dtype, kernel=kernel)
    weights.weights.copy_(torch.randn(4, a, b, dtype=dtype) / a**0.5)
    x = torch.randn(ends[-1], a, dtype=dtype)
    host_ends = np.array(ends, dtype=np.int32)
    groups = Groups(torch.from_numpy(host_ends), host_ends, None if slots is None else torch.tensor(slots))
    served = weights.matmul(x, groups).float()
    expected = grouped_matmul_reference(x.float(), weights.weights.float(), groups)
    return float((served - expected).abs().max())


if __name__ == "__main__":
    results = {"kernel": segmented_kernel(torch.device("cuda"), torch.float16).name}
    for dtype in (torch.float16,):
        results[f"shrink every slot {dtype}"] = case(64, 16, [2, 2, 6, 7], None, dtype)  # slot 1 empty
        results[f"shrink listed slots {dtype}"] = case(64, 16, [3, 5], [3, 1], dtype)
        results[f"expand every slot {dtype}"] = case(16, 96, [1, 4, 4, 9], None, dtype)
        results[f"expand listed slots {dtype}"] = case(16, 96, [4, 6], [0, 2], dtype)
    print(json.dumps(results))
