"""Training MoORE sets: the trainable layer and the recipe of the official code (MoE-PEFT, CSR-MTL):
AdamW lr 3e-4, weight decay 0.01, ≈10 % warm-up then constant, loss on the whole sequence, no
clipping, batch 16, 2 epochs, cutoff 512. One set task per training task."""

from __future__ import annotations

import math

import torch

from adapters.moore.math import gate, rotate_and_project_wy, task_vectors
from adapters.svd_cache import SvdFactors
from adapters.training.layers import BatchContext, TrainableLayer
from adapters.training.method_training import LayerSetup, MethodTraining


class TrainableMoore(TrainableLayer):
    """y = ((x M) V ⊙ ReLU(S + T·Emb[t] + G_up G x)) Uᵀ, params Y, G, G_up, T, Emb."""

    def __init__(
        self, base: torch.nn.Linear, context: BatchContext, params: dict[str, torch.Tensor], factors: SvdFactors
    ) -> None:
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


def make_layer(setup: LayerSetup) -> TrainableMoore:
    """The official code draws G kaiming-uniform (a = √5), like an `nn.Linear`; so does this."""
    params = dict(setup.params)
    bound = 1.0 / math.sqrt(setup.linear.in_features)
    params["G"] = (torch.rand(params["G"].shape, generator=setup.generator) * 2 - 1) * bound
    return TrainableMoore(setup.linear, setup.context, params, setup.factors)


TRAINING = MethodTraining(
    defaults=dict(
        learning_rate=3e-4, weight_decay=0.01, schedule="constant", warmup_ratio=0.1, grad_clip=None,
        loss="all", batch_size=16, epochs=2, max_length=512,
    ),  # fmt: skip
    make_layer=make_layer,
    multi_task=True,
)
