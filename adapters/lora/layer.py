"""LoRA reference layer."""

from __future__ import annotations

import torch

from adapters.lora.loader import LoraModule
from adapters.lora.math import lora_forward
from adapters.registry import BaseProjection


def reference_forward(
    x: torch.Tensor, token_mask: torch.Tensor, module: LoraModule, task_index: int, base: BaseProjection
) -> torch.Tensor:
    """Whole output y (n, out) = x Wᵀ + scaling (x Aᵀ) Bᵀ."""
    return lora_forward(x, base.weight, module.A, module.B, module.scaling)
