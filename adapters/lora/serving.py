"""LoRA in the engine: `A[slot] (in, r_max)`, `B[slot] (r_max, out)` stacked over slots, scaling folded
into B and ranks zero-padded to the engine's maximum; one grouped shrink and one grouped expand."""

from __future__ import annotations

import torch
from pydantic import Field

from adapters.lora.config import LoraConfig
from adapters.lora.loader import LoraModule
from adapters.serving.bank import (
    KindRows,
    MethodCapacity,
    ProjectionShape,
    SlotContents,
    aligned,
    scatter_add,
    stacked,
    tensors_nbytes,
)
from adapters.serving.grouped import grouped_matmul
from adapters.serving.pages import zero_and_release


class LoraCapacity(MethodCapacity):
    max_sets: int = Field(default=32, ge=1, description="LoRA adapters resident at once.")
    max_rank: int = Field(default=16, ge=1, description="Largest LoRA rank a slot holds.")


def capacity_limits(capacity: LoraCapacity, config: LoraConfig, n_tasks: int) -> list[tuple[str, int, int]]:
    """(limit name, needed, capacity) of every per-set limit."""
    return [("max_lora_rank", config.rank, capacity.max_rank)]


class LoraBank:
    replaces_base = False

    def __init__(self, capacity: LoraCapacity, shape: ProjectionShape, device: torch.device, dtype: torch.dtype) -> None:
        r = aligned(capacity.max_rank)
        self.shape = shape
        self.A_t = stacked(capacity.max_sets, shape.in_features, r, device=device, dtype=dtype)  # (slots, in, r)
        self.B_t = stacked(capacity.max_sets, r, shape.out_features, device=device, dtype=dtype)  # (slots, r, out)

    def write(self, slot: int, contents: SlotContents) -> int:
        module: LoraModule = contents.module
        r = module.A.shape[0]
        self.A_t[slot, :, :r].copy_(self.shape.input_part(module.A, 1).T)
        self.B_t[slot, :r].copy_(self.shape.output_part(module.B, 0).to(torch.float32).T * module.scaling)
        return tensors_nbytes(self.shape.input_part(module.A, 1), self.shape.output_part(module.B, 0), dtype=self.A_t.dtype)

    def clear(self, slot: int) -> None:
        zero_and_release(self.A_t[slot])
        zero_and_release(self.B_t[slot])

    def apply(self, x: torch.Tensor, columns: torch.Tensor, rows: KindRows) -> None:
        xs = rows.take(x).to(self.A_t.dtype)  # (n, in)
        shrunk = self.shape.summed(grouped_matmul(xs, self.A_t, rows.groups))  # (n, r)
        scatter_add(columns, rows, grouped_matmul(shrunk, self.B_t, rows.groups))  # (n, out)

    @property
    def nbytes(self) -> int:
        return tensors_nbytes(self.A_t, self.B_t)
