"""LoRA in the engine: `A[slot] (in, r_max)`, `B[slot] (r_max, out)` stacked over slots, scaling folded
into B and ranks zero-padded to the engine's maximum; one grouped shrink and one grouped expand."""

from __future__ import annotations

import torch
from pydantic import Field

from adapters.lora.config import LoraConfig
from adapters.lora.loader import LoraModule
from adapters.serving.bank import (
    BankPlacement,
    KindRows,
    MethodCapacity,
    ProjectionShape,
    SlotContents,
    aligned,
    scatter_add,
    tensors_nbytes,
)


class LoraCapacity(MethodCapacity):
    max_sets: int = Field(default=32, ge=1, description="LoRA adapters resident at once.")
    max_rank: int = Field(default=16, ge=1, description="Largest LoRA rank a slot holds.")


def capacity_limits(capacity: LoraCapacity, config: LoraConfig, n_tasks: int) -> list[tuple[str, int, int]]:
    """(limit name, needed, capacity) of every per-set limit."""
    return [("max_lora_rank", config.rank, capacity.max_rank)]


class LoraBank:
    replaces_base = False

    def __init__(self, capacity: LoraCapacity, shape: ProjectionShape, placement: BankPlacement) -> None:
        r = aligned(capacity.max_rank)
        self.shape = shape
        self.placement = placement
        self.A_t = placement.grouped(capacity.max_sets, shape.in_features, r)  # (slots, in, r)
        self.B_t = placement.grouped(capacity.max_sets, r, shape.out_features)  # (slots, r, out)

    def write(self, slot: int, contents: SlotContents) -> int:
        module: LoraModule = contents.module
        r = module.A.shape[0]
        A, B = self.shape.input_part(module.A, 1), self.shape.output_part(module.B, 0)
        self.A_t[slot][:, :r].copy_(self.placement.put(A.T))
        self.B_t[slot][:r].copy_(self.placement.put(B.to(torch.float32).T * module.scaling))
        return tensors_nbytes(A, B, dtype=self.placement.dtype)

    def clear(self, slot: int) -> None:
        self.A_t.clear(slot)
        self.B_t.clear(slot)

    def apply(self, x: torch.Tensor, columns: torch.Tensor, rows: KindRows) -> None:
        xs = rows.take(x).to(self.placement.dtype)  # (n, in)
        shrunk = self.shape.summed(self.A_t.matmul(xs, rows.groups))  # (n, r)
        scatter_add(columns, rows, self.B_t.matmul(shrunk, rows.groups))  # (n, out)

    def held(self) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
        return (self.A_t.storage, self.B_t.storage), ()

    @property
    def nbytes(self) -> int:
        return self.A_t.nbytes + self.B_t.nbytes
