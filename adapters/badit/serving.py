"""BADIT in the engine, as a rank-2k LoRA with a per-token scale between shrink and expand:

    Δy = [x V_k | x A] · [−S_k | ω] · [U_kᵀ ; s·B]ᵀ        (k = K·r, padded to the engine's k_max)

`ω` repeats each expert's weight over its r components: `w = softmax(G x̄ + mask)` per request segment
(input routing; x̄ is the segment mean, so prompts are prefilled whole) or a fixed mixture per task.
Padded experts get a −inf gate mask, padded components zero weights, so padding changes nothing.
"""

from __future__ import annotations

import torch
from pydantic import Field

from adapters.badit.config import BaditConfig
from adapters.badit.loader import BaditModule
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
from adapters.serving.pages import zero_and_release


class BaditCapacity(MethodCapacity):
    max_sets: int = Field(default=4, ge=1, description="BADIT set versions resident at once.")
    max_rank: int = Field(default=32, ge=1, description="Largest BADIT K·r (top triplets split into experts).")
    max_experts: int = Field(default=8, ge=1, description="Largest BADIT expert count K.")
    max_tasks: int = Field(default=64, ge=1, description="Task mixtures of all resident task-routed BADIT sets together.")


def capacity_limits(capacity: BaditCapacity, config: BaditConfig, n_tasks: int) -> list[tuple[str, int, int]]:
    return [
        ("max_badit_rank", config.top_k, capacity.max_rank),
        ("max_badit_experts", config.num_experts, capacity.max_experts),
    ]


def task_rows_needed(config: BaditConfig, n_tasks: int) -> int:
    return n_tasks if config.routing == "task" else 0


def segment_mean(x: torch.Tensor, segment: torch.Tensor, num_segments: int) -> torch.Tensor:
    """Mean of the rows of `x` (n, in) per segment id → (num_segments, in)."""
    sums = x.new_zeros(num_segments, x.shape[1]).index_add_(0, segment, x)
    counts = x.new_zeros(num_segments).index_add_(0, segment, x.new_ones(x.shape[0]))  # no bincount: no host sync
    return sums / counts.unsqueeze(1)


class BaditBank:
    replaces_base = False

    def __init__(self, capacity: BaditCapacity, shape: ProjectionShape, placement: BankPlacement) -> None:
        slots, k, K = capacity.max_sets, aligned(capacity.max_rank), aligned(capacity.max_experts)
        self.k_max = k
        self.shape = shape
        self.placement = placement
        self.W_in = placement.grouped(slots, shape.in_features, 2 * k)  # (slots, in, 2k) [V_k | Aᵀ]
        self.W_out = placement.grouped(slots, 2 * k, shape.out_features)  # (slots, 2k, out) [U_kᵀ ; s·Bᵀ]
        self.neg_S = placement.zeros(slots, k)  # (slots, k) −S_k
        self.G_t = placement.grouped(slots, shape.in_features, K)  # (slots, in, K)
        self.gate_mask = placement.zeros(slots, K).fill_(float("-inf"))  # (slots, K)
        self.expert_of = placement.zeros(slots, k, dtype=torch.long)  # (slots, k) component → expert
        self.input_routed = placement.zeros(slots, dtype=torch.bool)  # (slots,)
        self.route_top_k = placement.zeros(slots, dtype=torch.long)  # (slots,) experts kept, 0: all
        self.mixtures = placement.zeros(capacity.max_tasks, K)  # (task rows, K)

    def write(self, slot: int, contents: SlotContents) -> int:
        module: BaditModule = contents.module
        k, K, r = module.num_experts * module.expert_rank, module.num_experts, module.expert_rank
        top = contents.base_factors().top(k)
        shape, put = self.shape, self.placement.put
        self.W_in[slot][:, :k].copy_(put(shape.input_part(top.V, 0)))
        self.W_in[slot][:, self.k_max : self.k_max + k].copy_(put(shape.input_part(module.A, 1).T))
        self.W_out[slot][:k].copy_(put(shape.output_part(top.U, 0).T))
        self.W_out[slot][self.k_max : self.k_max + k].copy_(put(shape.output_part(module.B, 0).to(torch.float32).T * module.scale))
        self.neg_S[slot, :k].copy_(put(-top.S))
        self.expert_of[slot, :k].copy_(put(torch.arange(k) // r, torch.long))
        if module.G is not None:
            self.G_t[slot][:, :K].copy_(put(shape.input_part(module.G, 1).T))
            self.gate_mask[slot, :K] = 0.0
            self.input_routed[slot] = True
            self.route_top_k[slot] = module.route_top_k or 0
        else:
            mixtures = torch.zeros(module.task_mixture.shape[0], self.mixtures.shape[1])
            mixtures[:, :K] = module.task_mixture
            self.mixtures.index_copy_(0, put(contents.task_rows, torch.long), put(mixtures))
        routing = shape.input_part(module.G, 1) if module.G is not None else module.task_mixture
        parts = (shape.input_part(top.V, 0), shape.output_part(top.U, 0), top.S, shape.input_part(module.A, 1), shape.output_part(module.B, 0))
        return tensors_nbytes(*parts, routing, dtype=self.placement.dtype)

    def clear(self, slot: int) -> None:
        for weights in (self.W_in, self.W_out, self.G_t):
            weights.clear(slot)
        for weights in (self.neg_S, self.expert_of):
            zero_and_release(weights[slot])
        self.gate_mask[slot] = float("-inf")
        self.input_routed[slot] = False
        self.route_top_k[slot] = 0

    def apply(self, x: torch.Tensor, columns: torch.Tensor, rows: KindRows) -> None:
        xs = rows.take(x).to(self.placement.dtype)  # (n, in)
        experts = torch.where(
            self.input_routed.index_select(0, rows.slot).unsqueeze(1),
            self._input_gate(xs, rows),
            self.mixtures.index_select(0, rows.task_row),
        )  # (n, K)
        omega = experts.gather(1, self.expert_of.index_select(0, rows.slot))  # (n, k)
        scale = torch.cat([self.neg_S.index_select(0, rows.slot), omega], dim=1)  # (n, 2k)
        shrunk = self.shape.summed(self.W_in.matmul(xs, rows.groups)) * scale  # (n, 2k)
        scatter_add(columns, rows, self.W_out.matmul(shrunk, rows.groups))  # (n, out)

    def _input_gate(self, xs: torch.Tensor, rows: KindRows) -> torch.Tensor:
        """softmax(G x̄ + mask) of each row's segment (n, K); rows of task-routed slots get unused values."""
        means = segment_mean(xs, rows.segment, rows.num_segments)  # (segments, in)
        logits = self.shape.summed(self.G_t.matmul(means, rows.segment_groups))  # (segments, K)
        segment_slot = torch.zeros(rows.num_segments, dtype=torch.long, device=xs.device).index_copy_(
            0, rows.segment, rows.slot
        )  # (segments,)
        logits = logits + self.gate_mask.index_select(0, segment_slot)
        weights = torch.softmax(logits, dim=-1).nan_to_num(0.0)  # task-routed slots: all −inf → 0
        weights = self._keep_top_k(weights, self.route_top_k.index_select(0, segment_slot))
        return weights.index_select(0, rows.segment)  # (n, K)

    @staticmethod
    def _keep_top_k(weights: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """Each row's k largest weights renormalised to sum 1, the others 0; k = 0 keeps the row whole."""
        K = weights.shape[1]
        order = torch.argsort(weights, dim=1, descending=True)  # (segments, K)
        rank = torch.empty_like(order).scatter_(1, order, torch.arange(K, device=weights.device).expand_as(order))
        kept = weights * (rank < torch.where(k > 0, k, K).unsqueeze(1))
        return kept / kept.sum(1, keepdim=True).clamp(min=torch.finfo(kept.dtype).tiny)

    def held(self) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
        grouped = tuple(w.storage for w in (self.W_in, self.W_out, self.G_t))
        return (*grouped, self.neg_S, self.gate_mask, self.expert_of, self.input_routed, self.route_top_k), (self.mixtures,)

    @property
    def nbytes(self) -> int:
        grouped = sum(w.nbytes for w in (self.W_in, self.W_out, self.G_t))
        return grouped + tensors_nbytes(self.neg_S, self.gate_mask, self.expert_of, self.mixtures)
