"""Toy bias in the engine: one pool of task rows `b[row] (out)` shared by every toy bias slot, the
set's scale folded in; a step adds the row of each token's task to its output columns."""

from __future__ import annotations

import torch
from pydantic import Field

from adapters.serving.bank import (
    BankPlacement,
    KindRows,
    MethodCapacity,
    ProjectionShape,
    SlotContents,
    scatter_add,
    tensors_nbytes,
)
from toy_bias.config import ToyBiasConfig
from toy_bias.loader import BiasModule


class ToyBiasCapacity(MethodCapacity):
    max_sets: int = Field(default=4, ge=1, description="Toy bias set versions resident at once.")
    max_tasks: int = Field(default=16, ge=1, description="Tasks of all resident toy bias sets together.")


def capacity_limits(capacity: ToyBiasCapacity, config: ToyBiasConfig, n_tasks: int) -> list[tuple[str, int, int]]:
    return [("max_toy_bias_tasks", n_tasks, capacity.max_tasks)]


def task_rows_needed(config: ToyBiasConfig, n_tasks: int) -> int:
    return n_tasks


class ToyBiasBank:
    replaces_base = False

    def __init__(self, capacity: ToyBiasCapacity, shape: ProjectionShape, placement: BankPlacement) -> None:
        self.shape = shape
        self.placement = placement
        self.b = placement.zeros(capacity.max_tasks, shape.out_features)  # (task rows, out)

    def write(self, slot: int, contents: SlotContents) -> int:
        module: BiasModule = contents.module
        b = self.shape.output_part(module.b, 1) * module.scale  # (n_tasks, out)
        self.b.index_copy_(0, self.placement.put(contents.task_rows, torch.long), self.placement.put(b))
        return tensors_nbytes(b, dtype=self.placement.dtype)

    def clear(self, slot: int) -> None:
        """Nothing is held per slot: the next set given a task row overwrites it."""

    def apply(self, x: torch.Tensor, columns: torch.Tensor, rows: KindRows) -> None:
        scatter_add(columns, rows, self.b.index_select(0, rows.task_row))  # (n, out)

    def held(self) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
        return (), (self.b,)

    @property
    def nbytes(self) -> int:
        return tensors_nbytes(self.b)
