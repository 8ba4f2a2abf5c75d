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
    KindRows,
    MethodCapacity,
    ProjectionShape,
    SlotContents,
    aligned,
    scatter_set,
    stacked,
    tensors_nbytes,
)
from adapters.serving.factors import SharedFactors
from adapters.serving.grouped import grouped_matmul
from adapters.serving.pages import zero_and_release


class MooreCapacity(MethodCapacity):
    max_sets: int = Field(default=4, ge=1, description="MoORE set versions resident at once.")
    max_tasks: int = Field(default=256, ge=1, description="Tasks of all resident MoORE sets together.")
    max_householder: int = Field(default=8, ge=1, description="Largest Householder count h a slot holds.")
    max_router_width: int = Field(default=128, ge=1, description="Largest router width E a slot holds.")


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

    def __init__(
        self,
        capacity: MooreCapacity,
        shape: ProjectionShape,
        device: torch.device,
        dtype: torch.dtype,
        shared: SharedFactors,
    ) -> None:
        slots, h, E, d = capacity.max_sets, aligned(capacity.max_householder), aligned(capacity.max_router_width), shape.rank
        self.shared = shared
        self.shape = shape
        self.Y_hat = stacked(slots, shape.in_features, h, device=device, dtype=dtype)  # (slots, in, h)
        self.P = stacked(slots, h, d, device=device, dtype=dtype)  # (slots, h, d)
        self.G_t = stacked(slots, shape.in_features, E, device=device, dtype=dtype)  # (slots, in, E)
        self.G_up_t = stacked(slots, E, d, device=device, dtype=dtype)  # (slots, E, d)
        self.C = stacked(capacity.max_tasks, d, device=device, dtype=dtype)  # (task rows, d)

    def write(self, slot: int, contents: SlotContents) -> int:
        module: MooreModule = contents.module
        Y_hat, T_tilde = compact_wy(module.Y)  # (h, in), (h, h): whole input
        P = T_tilde @ self._times_V(Y_hat, contents).to(torch.float32)  # (h, d): x M V = x V − (x Ŷᵀ) P
        Y_hat_t = Y_hat.T  # (in, h)
        h, E = Y_hat_t.shape[1], module.G.shape[0]
        C = module.task_vectors()  # (n_tasks, d)
        self.Y_hat[slot, :, :h].copy_(self.shape.input_part(Y_hat_t, 0))
        self.P[slot, :h].copy_(P)
        self.G_t[slot, :, :E].copy_(self.shape.input_part(module.G, 1).T)
        self.G_up_t[slot, :E].copy_(module.G_up.T)
        self.C.index_copy_(0, contents.task_rows, C.to(self.C.dtype))
        part = self.shape
        return tensors_nbytes(part.input_part(Y_hat_t, 0), P, part.input_part(module.G, 1), module.G_up, C, dtype=self.G_t.dtype)

    def _times_V(self, Y_hat: torch.Tensor, contents: SlotContents) -> torch.Tensor:  # noqa: N802
        """Ŷ V, through the held product when this rank holds V whole (no row-parallel split), which
        spares reading V from the factor file at every load."""
        if self.shape.reduce is None:
            return self.shared.current().project_in(Y_hat.to(self.P.dtype))
        return Y_hat @ contents.base_factors().V.to(torch.float32)

    def clear(self, slot: int) -> None:
        for weights in (self.Y_hat, self.P, self.G_t, self.G_up_t):
            zero_and_release(weights[slot])

    def apply(self, x: torch.Tensor, columns: torch.Tensor, rows: KindRows) -> None:
        factors = self.shared.current()
        xc = rows.take(x).to(self.G_t.dtype)  # (n, in)
        z, xY, xG = self.shape.summed_together(
            [factors.project_in(xc), grouped_matmul(xc, self.Y_hat, rows.groups), grouped_matmul(xc, self.G_t, rows.groups)]
        )  # (n, d), (n, h), (n, E)
        z.sub_(grouped_matmul(xY, self.P, rows.groups))  # rank-h rotation
        gate = grouped_matmul(xG, self.G_up_t, rows.groups)  # (n, d): the router
        gate.add_(self.C.index_select(0, rows.task_row)).add_(factors.S).relu_()
        scatter_set(columns, rows, factors.project_out(z.mul_(gate)))

    @property
    def nbytes(self) -> int:
        return tensors_nbytes(self.Y_hat, self.P, self.G_t, self.G_up_t, self.C)
