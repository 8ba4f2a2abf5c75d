"""MoORE in the engine. For the rows of all MoORE slots at once:

    z = x V − (x Ŷ[slot]) P[slot]                     x V shared by every set on this base
    g = ReLU(S + C[task row] + (x G[slot]ᵀ) G_up[slot]ᵀ)
    y = (z ⊙ g) Uᵀ                                      replaces the base output of these rows

Per-slot parts are stacked over slots (Householder count and router width zero-padded to the engine's
maxima: exact) and run as grouped products; task vectors `c_t = T·Emb[t]` live in one pool of task
rows shared by all MoORE slots, so a set pays only its rows per task.
"""

from __future__ import annotations

import torch
from pydantic import Field

from adapters.moore.config import MooreConfig
from adapters.moore.loader import MooreModule
from adapters.moore.math import compact_wy
from adapters.serving.bank import (
    BankPlacement,
    KindRows,
    MethodCapacity,
    ProjectionShape,
    SlotContents,
    aligned,
    scatter_set,
    tensors_nbytes,
)
from adapters.serving.factors import SharedFactors


class MooreCapacity(MethodCapacity):
    max_sets: int = Field(default=4, ge=1, description="MoORE set versions resident at once.")
    max_tasks: int = Field(default=256, ge=1, description="Tasks of all resident MoORE sets together.")
    max_householder: int = Field(default=8, ge=1, description="Largest MoORE Householder count h.")
    max_router_width: int = Field(default=128, ge=1, description="Largest MoORE router width E.")


def capacity_limits(capacity: MooreCapacity, config: MooreConfig, n_tasks: int) -> list[tuple[str, int, int]]:
    return [
        ("max_moore_householder", config.householder_count, capacity.max_householder),
        ("max_moore_router_width", config.router_width, capacity.max_router_width),
        ("max_moore_tasks", n_tasks, capacity.max_tasks),
    ]


def task_rows_needed(config: MooreConfig, n_tasks: int) -> int:
    return n_tasks


class MooreBank:
    replaces_base = True

    def __init__(self, capacity: MooreCapacity, shape: ProjectionShape, placement: BankPlacement, shared: SharedFactors) -> None:
        slots, h, E, d = capacity.max_sets, aligned(capacity.max_householder), aligned(capacity.max_router_width), shape.rank
        self.shared = shared
        self.shape = shape
        self.placement = placement
        self.Y_hat = placement.grouped(slots, shape.in_features, h)  # (slots, in, h)
        self.P = placement.grouped(slots, h, d)  # (slots, h, d)
        self.G_t = placement.grouped(slots, shape.in_features, E)  # (slots, in, E)
        self.G_up_t = placement.grouped(slots, E, d)  # (slots, E, d)
        self.C = placement.zeros(capacity.max_tasks, d)  # (task rows, d)

    def write(self, slot: int, contents: SlotContents) -> int:
        module: MooreModule = contents.module
        put = self.placement.put
        Y_hat, T_tilde = compact_wy(module.Y)  # (h, in), (h, h): whole input
        P = put(T_tilde, torch.float32) @ self._times_V(Y_hat, contents)  # (h, d): x M V = x V − (x Ŷᵀ) P
        Y_hat_t = Y_hat.T  # (in, h)
        h, E = Y_hat_t.shape[1], module.G.shape[0]
        C = module.task_vectors()  # (n_tasks, d)
        self.Y_hat[slot][:, :h].copy_(put(self.shape.input_part(Y_hat_t, 0)))
        self.P[slot][:h].copy_(P)
        self.G_t[slot][:, :E].copy_(put(self.shape.input_part(module.G, 1).T))
        self.G_up_t[slot][:E].copy_(put(module.G_up.T))
        self.C.index_copy_(0, put(contents.task_rows, torch.long), put(C))
        part = self.shape
        return tensors_nbytes(part.input_part(Y_hat_t, 0), P, part.input_part(module.G, 1), module.G_up, C, dtype=self.placement.dtype)

    def _times_V(self, Y_hat: torch.Tensor, contents: SlotContents) -> torch.Tensor:  # noqa: N802
        """Ŷ V (h, d) in fp32 on the bank's device, through the held product when this rank holds V
        whole (no row-parallel split), which spares reading V from the factor file at every load."""
        if self.shape.reduce is None:
            return self.shared.current().project_in(self.placement.put(Y_hat)).to(torch.float32)
        return self.placement.put(Y_hat @ contents.base_factors().V.to(torch.float32), torch.float32)

    def clear(self, slot: int) -> None:
        for weights in (self.Y_hat, self.P, self.G_t, self.G_up_t):
            weights.clear(slot)

    def apply(self, x: torch.Tensor, columns: torch.Tensor, rows: KindRows) -> None:
        factors = self.shared.current()
        xc = rows.take(x).to(self.placement.dtype)  # (n, in)
        z, xY, xG = self.shape.summed_together(
            [factors.project_in(xc), self.Y_hat.matmul(xc, rows.groups), self.G_t.matmul(xc, rows.groups)]
        )  # (n, d), (n, h), (n, E)
        z.sub_(self.P.matmul(xY, rows.groups))  # rank-h rotation
        gate = self.G_up_t.matmul(xG, rows.groups)  # (n, d): the router
        gate.add_(self.C.index_select(0, rows.task_row)).add_(factors.S).relu_()
        scatter_set(columns, rows, factors.project_out(z.mul_(gate)))

    def held(self) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
        return tuple(w.storage for w in (self.Y_hat, self.P, self.G_t, self.G_up_t)), (self.C,)

    @property
    def nbytes(self) -> int:
        return sum(w.nbytes for w in (self.Y_hat, self.P, self.G_t, self.G_up_t)) + tensors_nbytes(self.C)
