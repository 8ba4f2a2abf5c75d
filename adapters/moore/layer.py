"""MoORE reference layer: the per-request oracle, written as methods.md §1 reads."""

from __future__ import annotations

import torch

from adapters.moore.loader import MooreModule
from adapters.moore.math import moore_forward
from adapters.registry import BaseProjection


def reference_forward(
    x: torch.Tensor, token_mask: torch.Tensor, module: MooreModule, task_index: int, base: BaseProjection
) -> torch.Tensor:
    """Whole output y (n, out) for the tokens x (n, in) of one request tagged with task `task_index`."""
    factors = base.factors()
    c_t = module.task_vectors()[task_index]  # (d,)
    return moore_forward(x, factors.U, factors.S, factors.V, module.Y, module.G, module.G_up, c_t)
