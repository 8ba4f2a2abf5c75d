"""Toy bias reference layer: the per-request oracle."""

from __future__ import annotations

import torch

from adapters.registry import BaseProjection
from toy_bias.loader import BiasModule
from toy_bias.math import biased_forward


def reference_forward(
    x: torch.Tensor, token_mask: torch.Tensor, module: BiasModule, task_index: int, base: BaseProjection
) -> torch.Tensor:
    """Whole output y (n, out) for the tokens x (n, in) of one request tagged with task `task_index`."""
    return biased_forward(x, base.weight, module.b[task_index], module.scale)
