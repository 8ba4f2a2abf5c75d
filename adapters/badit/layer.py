"""BADIT reference layer: the per-request oracle, written as methods.md §2 reads.

x̄ is the mean of this forward call's REAL tokens of the request (token_mask): the whole prompt at
prefill, the single new token at a decode step. Left padding never counts (the reference code of the
paper averaged pads too, which made outputs depend on batch padding).
"""

from __future__ import annotations

import torch

from adapters.badit.loader import BaditModule
from adapters.badit.math import ability_weights, badit_forward, masked_mean, residual_weight
from adapters.registry import BaseProjection


def reference_forward(
    x: torch.Tensor, token_mask: torch.Tensor, module: BaditModule, task_index: int, base: BaseProjection
) -> torch.Tensor:
    """Whole output y (n, out) for the tokens x (n, in) of one request."""
    f = base.factors()
    W_res = residual_weight(base.weight, f.U, f.S, f.V, module.num_experts * module.expert_rank)  # (out, in)
    if module.task_mixture is not None:
        w = module.task_mixture[task_index].to(torch.float32)  # (K,)
    else:
        w = ability_weights(masked_mean(x, token_mask), module.G, module.route_top_k)  # (K,)
    return badit_forward(x, W_res, module.A, module.B, w, module.expert_rank, module.scale)
