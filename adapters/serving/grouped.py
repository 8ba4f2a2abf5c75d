"""Segmented matmul: rows sorted by adapter slot, one weight matrix per slot, one call for all slots."""

from __future__ import annotations

from dataclasses import dataclass

import torch

_HAS_GROUPED_MM = hasattr(torch, "_grouped_mm")


@dataclass(frozen=True)
class Groups:
    """How rows sorted by slot split into groups: `ends` (g,) int32 cumulative row counts of the listed
    slots, which are every slot in order (`slots` None) or only `slots` (g,) int64, when few of many
    slots have rows: then only their weights are gathered, and empty slots cost nothing. `only_slot`
    (known on the host) is the one slot that has rows, when just one does."""

    ends: torch.Tensor
    slots: torch.Tensor | None = None
    only_slot: int | None = None


def grouped_matmul(x: torch.Tensor, weights: torch.Tensor, groups: Groups) -> torch.Tensor:
    """`out[rows of slot s] = x[rows of slot s] @ weights[s]` for rows sorted by slot.

    x (n, a), weights (slots, a, b) → (n, b).
    """
    if groups.only_slot is not None:
        return x @ weights[groups.only_slot]  # one plain product on the slot's own weights, nothing gathered
    if groups.slots is not None:
        weights = weights.index_select(0, groups.slots)  # (listed slots, a, b)
    if _HAS_GROUPED_MM and _grouped_mm_supports(x, weights):
        return torch._grouped_mm(x, weights, offs=groups.ends)
    return grouped_matmul_reference(x, weights, groups.ends)


def grouped_matmul_reference(x: torch.Tensor, weights: torch.Tensor, ends: torch.Tensor) -> torch.Tensor:
    """The same product, one slot at a time (the definition; also the fallback where no kernel exists)."""
    out = x.new_zeros(x.shape[0], weights.shape[2])
    start = 0
    for slot, end in enumerate(ends.tolist()):
        if end > start:
            out[start:end] = x[start:end] @ weights[slot]
        start = end
    return out


def _grouped_mm_supports(x: torch.Tensor, weights: torch.Tensor) -> bool:
    # The kernels need 16-byte aligned rows; the CPU one takes any float dtype, CUDA's bf16 on recent GPUs.
    aligned = all((size * x.element_size()) % 16 == 0 for size in (x.shape[1], weights.shape[1], weights.shape[2]))
    if not aligned or not x.is_contiguous():
        return False
    return x.device.type == "cpu" or (x.dtype == torch.bfloat16 and torch.cuda.get_device_capability(x.device)[0] >= 9)
