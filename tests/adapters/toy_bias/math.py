"""Toy bias math, pure torch: y = x Wᵀ + s·b_t."""

from __future__ import annotations

import torch


def biased_forward(x: torch.Tensor, W: torch.Tensor, b_t: torch.Tensor, scale: float) -> torch.Tensor:
    """The whole output (n, out) of a linear with the bias b_t (out,) of one task added."""
    x32 = x.to(torch.float32)  # (n, in)
    return (x32 @ W.to(torch.float32).T + scale * b_t.to(torch.float32)).to(x.dtype)  # (n, out)
