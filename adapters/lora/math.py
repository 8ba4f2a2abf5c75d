"""LoRA math, pure torch: y = x Wᵀ + scaling · (x Aᵀ) Bᵀ."""

from __future__ import annotations

import torch


def lora_forward(x: torch.Tensor, W: torch.Tensor, A: torch.Tensor, B: torch.Tensor, scaling: float) -> torch.Tensor:
    """The whole output (n, out) of a LoRA-adapted linear."""
    x32 = x.to(torch.float32)  # (n, in)
    delta = (x32 @ A.to(torch.float32).T) @ B.to(torch.float32).T  # (n, r) → (n, out)
    return (x32 @ W.to(torch.float32).T + scaling * delta).to(x.dtype)  # (n, out)
