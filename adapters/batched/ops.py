"""Grouped adapter operators over the rows of one batch.

`x` holds only the rows handled by the operator; each group is one adapter set's weights for this
projection plus the local row indices (into `x`) of that set's tokens. The expensive products with the
base factors (`x V`, `· Uᵀ`) are done once for all rows; only the low-rank, set-specific parts loop
over groups — the way multi-LoRA kernels segment tokens by adapter.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from adapters.batched.weights import BaditProjection, ServingFactors, LoraProjection, MooreProjection


@dataclass(frozen=True)
class MooreGroup:
    weights: MooreProjection
    rows: torch.Tensor | None  # (n_s,) local rows into x, or None for every row
    task_index: torch.Tensor  # (n_s,)


@dataclass(frozen=True)
class BaditGroup:
    weights: BaditProjection
    task_index: torch.Tensor  # (n_s,)
    segment: torch.Tensor  # (n_s,) request segment of each row
    num_segments: int


def _take(x: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
    return x if rows is None else x.index_select(0, rows)


def _add(target: torch.Tensor, rows: torch.Tensor | None, value: torch.Tensor) -> None:
    if rows is None:
        target.add_(value)
    else:
        target.index_add_(0, rows, value)


def moore_output(x: torch.Tensor, factors: ServingFactors, groups: Sequence[MooreGroup]) -> torch.Tensor:
    """MoORE's whole output `y = ((x M V) ⊙ ReLU(S + c_t + G_up G x)) Uᵀ` for rows of several sets."""
    z = factors.project_in(x)  # (n, d), shared by every set
    gate = factors.S.expand_as(z).clone()  # (n, d)
    for group in groups:
        xs = _take(x, group.rows)  # (n_s, in)
        w = group.weights
        _add(z, group.rows, -((xs @ w.Y_hat) @ w.P))  # rank-h rotation
        router = (xs @ w.G_t) @ w.G_up_t  # (n_s, d)
        _add(gate, group.rows, router + w.C.index_select(0, group.task_index))
    return factors.project_out(z * torch.relu(gate))  # (n, out)


def segment_mean(x: torch.Tensor, segment: torch.Tensor, num_segments: int) -> torch.Tensor:
    """Mean of the rows of `x` (n, in) per segment id → (num_segments, in)."""
    sums = x.new_zeros(num_segments, x.shape[1]).index_add_(0, segment, x)
    counts = torch.bincount(segment, minlength=num_segments).to(x.dtype).unsqueeze(1)
    return sums / counts


def badit_ability_weights(xs: torch.Tensor, group: BaditGroup) -> torch.Tensor:
    """Per-row expert weights ω (n_s, K·r): softmax gate on the segment mean, or the task's fixed mixture."""
    w = group.weights
    if w.task_mixture is not None:
        experts = w.task_mixture.index_select(0, group.task_index)  # (n_s, K)
    else:
        mean = segment_mean(xs, group.segment, group.num_segments)  # (segments, in)
        experts = torch.softmax(mean @ w.G_t, dim=-1).index_select(0, group.segment)  # (n_s, K)
    return experts.repeat_interleave(w.rank_per_expert, dim=-1)  # (n_s, K·r)


def badit_delta(xs: torch.Tensor, group: BaditGroup) -> torch.Tensor:
    """BADIT's change to the base output of its rows `xs`: `−U_k S_k V_kᵀ x + (ω ⊙ x Aᵀ) Bᵀ` (n_s, out)."""
    w = group.weights
    top_k = ((xs @ w.V_k) * w.S_k) @ w.U_k_t  # (n_s, out)
    experts = ((xs @ w.A_t) * badit_ability_weights(xs, group)) @ w.B_t  # (n_s, out)
    return experts - top_k


def lora_delta(xs: torch.Tensor, weights: LoraProjection) -> torch.Tensor:
    """LoRA's change to the base output of its rows `xs`: `(x Aᵀ) Bᵀ`, scaling folded into B (n_s, out)."""
    return (xs @ weights.A_t) @ weights.B_t
