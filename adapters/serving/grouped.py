"""Segmented matmul: rows sorted by adapter slot, one weight matrix per slot, one call for all slots.

Each bank's per-slot matrices live in a `GroupedWeights`, stored in the layout the device's kernel
reads. The kernel is chosen once, when the engine builds its banks (`SegmentedKernels`):

- CPU: `torch._grouped_mm`, any float dtype;
- CUDA, fp16 and bf16: vLLM's punica Triton kernels (`lora_shrink` / `lora_expand`), handed in by the
  engine seam (`server/engine/vllm/worker.py`);
- any other case (fp32 on CUDA, rows not 16-byte aligned): one product per listed slot.

No kernel reads device data on the host: group sizes come from the host's routing (`Groups.host_ends`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from adapters.serving.pages import zero_and_release

_HAS_GROUPED_MM = hasattr(torch, "_grouped_mm")


@dataclass(frozen=True)
class Groups:
    """How rows sorted by slot split into groups: `ends` (g,) int32 cumulative row counts of the listed
    slots, which are every slot in order (`slots` None) or only `slots` (g,) int64, when few of many
    slots have rows: then only their weights are gathered, and empty slots cost nothing. `host_ends`
    holds the same counts on the host. `only_slot` (known on the host) is the one slot that has rows,
    when just one does."""

    ends: torch.Tensor
    host_ends: np.ndarray
    slots: torch.Tensor | None = None
    only_slot: int | None = None

    @property
    def slot_ids(self) -> torch.Tensor:
        """(g,) the slot of each group, on the device."""
        if self.slots is not None:
            return self.slots
        return torch.arange(self.ends.shape[0], device=self.ends.device)


SegmentedProduct = Callable[[torch.Tensor, torch.Tensor, Groups], torch.Tensor]
"""(x (n, a), storage of every slot, groups) → (n, b): `x[rows of slot s] @ W[s]`."""


@dataclass(frozen=True)
class SegmentedKernel:
    """One way to run a segmented product; `transposed` kernels read each W[s] stored as (b, a)."""

    name: str
    run: SegmentedProduct
    transposed: bool = False


class GroupedWeights:
    """Per-slot matrices `W[s] (a × b)` stacked over slots, zeroed, in the layout `kernel` reads.

    `weights` is the (slots, a, b) view every bank writes through; `matmul` runs one segmented product
    over the rows of all slots. On the CPU the pages are given back until a slot is written, so
    capacity costs address space, not resident memory."""

    def __init__(self, slots: int, a: int, b: int, *, device: torch.device, dtype: torch.dtype, kernel: SegmentedKernel) -> None:
        self.kernel = kernel
        shape = (slots, b, a) if kernel.transposed else (slots, a, b)
        self.storage = torch.empty(shape, device=device, dtype=dtype)
        zero_and_release(self.storage)
        self.weights = self.storage.transpose(1, 2) if kernel.transposed else self.storage

    def __getitem__(self, slot: int) -> torch.Tensor:
        return self.weights[slot]

    def matmul(self, x: torch.Tensor, groups: Groups) -> torch.Tensor:
        if groups.only_slot is not None:
            return x @ self.weights[groups.only_slot]  # one plain product on the slot's own weights, nothing gathered
        return self.kernel.run(x, self.storage, groups)

    def clear(self, slot: int) -> None:
        zero_and_release(self.storage[slot])

    @property
    def dtype(self) -> torch.dtype:
        return self.storage.dtype

    @property
    def nbytes(self) -> int:
        return self.storage.numel() * self.storage.element_size()


def grouped_matmul_reference(x: torch.Tensor, weights: torch.Tensor, groups: Groups) -> torch.Tensor:
    """The same product, one listed slot at a time (the definition; also the fallback where no kernel
    exists). `weights` (slots, a, b); the loop runs on the host's group sizes, never reading the device."""
    out = x.new_zeros(x.shape[0], weights.shape[2])
    listed = None if groups.slots is None else weights.index_select(0, groups.slots)
    start = 0
    for group, end in enumerate(groups.host_ends.tolist()):
        if end > start:
            out[start:end] = x[start:end] @ (weights[group] if listed is None else listed[group])
        start = end
    return out


def _loop(x: torch.Tensor, storage: torch.Tensor, groups: Groups) -> torch.Tensor:
    return grouped_matmul_reference(x, storage, groups)


def _torch_grouped_mm(x: torch.Tensor, storage: torch.Tensor, groups: Groups) -> torch.Tensor:
    if not _aligned(x, storage.shape[1], storage.shape[2]) or not x.is_contiguous():
        return grouped_matmul_reference(x, storage, groups)
    weights = storage if groups.slots is None else storage.index_select(0, groups.slots)  # (listed slots, a, b)
    return torch._grouped_mm(x, weights, offs=groups.ends)


def _aligned(x: torch.Tensor, *sizes: int) -> bool:
    """The grouped kernels need 16-byte aligned rows."""
    return all((size * x.element_size()) % 16 == 0 for size in (x.shape[1], *sizes))


LOOP = SegmentedKernel("per-slot products", _loop)
TORCH_GROUPED_MM = SegmentedKernel("torch._grouped_mm", _torch_grouped_mm)


def default_kernel(device: torch.device, dtype: torch.dtype) -> SegmentedKernel:
    """The kernel torch itself offers for `device` and `dtype`; the engine seam offers vLLM's on CUDA."""
    return TORCH_GROUPED_MM if device.type == "cpu" and _HAS_GROUPED_MM else LOOP
