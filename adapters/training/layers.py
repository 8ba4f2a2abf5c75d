"""Trainable versions of the reference layers: the same math (adapters/<method>/math.py), batched over
the rows of a training batch, with the base weights and SVD factors frozen.

Each layer replaces one `nn.Linear` of the Hugging Face model and returns the WHOLE output (MoORE replaces
x Wᵀ). A batch's per-row task ids and real-token mask reach the layers through one shared `BatchContext`
that the trainer fills before every forward; the layers never see example or task names.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from adapters.badit.math import ability_weights, residual_weight
from adapters.moore.math import gate, rotate_and_project_wy, task_vectors
from adapters.svd_cache import SvdFactors


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


class TrainableMoore(TrainableLayer):
    """y = ((x M) V ⊙ ReLU(S + T·Emb[t] + G_up G x)) Uᵀ, params Y, G, G_up, T, Emb."""

    def __init__(self, base: nn.Linear, context: BatchContext, params: dict[str, torch.Tensor], factors: SvdFactors) -> None:
        super().__init__(base, context, params)
        self.register_buffer("U", factors.U.to(torch.float32), persistent=False)  # (out, d)
        self.register_buffer("S", factors.S.to(torch.float32), persistent=False)  # (d,)
        self.register_buffer("V", factors.V.to(torch.float32), persistent=False)  # (in, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, T, in)
        batch, length, _ = x.shape
        p = self.adapter
        rows = x.reshape(batch * length, -1).to(torch.float32)  # (B·T, in)
        z = rotate_and_project_wy(rows, p["Y"], self.V)  # (B·T, d); rank-h form: no per-reflection activations kept
        c = task_vectors(p["T"], p["Emb"]).index_select(0, self.context.task_ids)  # (B, d)
        g = gate(rows, self.S, c.repeat_interleave(length, dim=0), p["G"], p["G_up"])  # (B·T, d)
        y = (z * g) @ self.U.T  # (B·T, out)
        return self._finish(y.reshape(batch, length, -1), x)


class TrainableBadit(TrainableLayer):
    """y = x W_resᵀ + s Σ_e w_e (x A_eᵀ) B_eᵀ, w = softmax(G x̄) per row (x̄: mean over the row's real tokens)."""

    def __init__(
        self,
        base: nn.Linear,
        context: BatchContext,
        params: dict[str, torch.Tensor],
        factors: SvdFactors,
        *,
        rank: int,
        scale: float,
        route_top_k: int | None,
        train_gate: bool,
    ) -> None:
        super().__init__(base, context, params)
        k = params["A"].shape[0]
        W_res = residual_weight(base.weight.detach(), factors.U, factors.S, factors.V, k)  # (out, in)
        self.register_buffer("W_res", W_res, persistent=False)
        self.rank, self.scale, self.route_top_k = rank, scale, route_top_k
        self.adapter["G"].requires_grad_(train_gate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, T, in)
        p = self.adapter
        x32 = x.to(torch.float32)
        mask = self.context.token_mask.to(torch.float32).unsqueeze(-1)  # (B, T, 1)
        x_mean = (x32 * mask).sum(1) / mask.sum(1).clamp(min=1.0)  # (B, in)
        w = ability_weights(x_mean, p["G"], self.route_top_k)  # (B, K)
        omega = w.repeat_interleave(self.rank, dim=-1).unsqueeze(1)  # (B, 1, K·r)
        experts = ((x32 @ p["A"].T) * omega) @ p["B"].T  # (B, T, K·r) → (B, T, out)
        return self._finish(x32 @ self.W_res.T + self.scale * experts, x)


class TrainableLora(TrainableLayer):
    """y = x Wᵀ + scaling (x Aᵀ) Bᵀ."""

    def __init__(self, base: nn.Linear, context: BatchContext, params: dict[str, torch.Tensor], *, scaling: float) -> None:
        super().__init__(base, context, params)
        self.scaling = scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, T, in)
        x32 = x.to(torch.float32)
        y = x32 @ self.base.weight.to(torch.float32).T + self.scaling * ((x32 @ self.adapter["A"].T) @ self.adapter["B"].T)
        return self._finish(y, x)
