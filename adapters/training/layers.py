"""What every trainable layer shares: the frozen base linear, the exported parameters, and the batch
context that carries a batch's per-row task ids and real-token mask.

A trainable layer (adapters/<method>/training.py) is the method's reference math, batched over the rows
of a training batch, with the base weights and SVD factors frozen. It replaces one `nn.Linear` of the
Hugging Face model and returns the WHOLE output (MoORE replaces x Wᵀ). The trainer fills the shared
`BatchContext` before every forward; the layers never see example or task names.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class BatchContext:
    task_ids: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))  # (B,)
    token_mask: torch.Tensor = field(default_factory=lambda: torch.zeros(0, 0, dtype=torch.bool))  # (B, T)


class TrainableLayer(nn.Module):
    """Common part: the frozen base linear (for its bias and shape) and the exported parameters."""

    def __init__(self, base: nn.Linear, context: BatchContext, params: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.base = base
        self.base.requires_grad_(False)
        self.context = context
        self.adapter = nn.ParameterDict({name: nn.Parameter(value.to(torch.float32).clone()) for name, value in params.items()})

    def export(self) -> dict[str, torch.Tensor]:
        """The set's tensors of this module, fp32, detached."""
        return {name: param.detach().cpu().clone() for name, param in self.adapter.items()}

    def _finish(self, y: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        if self.base.bias is not None:
            y = y + self.base.bias.to(torch.float32)
        return y.to(like.dtype)
