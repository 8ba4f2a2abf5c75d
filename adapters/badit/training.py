"""Training BADIT sets: the trainable layer, DOG regrouping, and the recipe of the official code (PEFT
LoRAMoE): AdamW lr 2e-4, cosine with 3 % warm-up, no weight decay, clip 1.0, loss on the completion
only, batch 1, 10 epochs, DOG regrouping on; orthoserve also trains and saves the gate. Training writes
input-routed sets holding one task."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from adapters.badit.config import BaditConfig
from adapters.badit.dog import regroup_permutation
from adapters.badit.math import ability_weights, residual_weight
from adapters.svd_cache import SvdFactors
from adapters.training.examples import TrainingInputError
from adapters.training.layers import BatchContext, TrainableLayer
from adapters.training.method_training import LayerSetup, MethodTraining


class TrainableBadit(TrainableLayer):
    """y = x W_resᵀ + s Σ_e w_e (x A_eᵀ) B_eᵀ, w = softmax(G x̄) per row (x̄: mean over the row's real tokens)."""

    def __init__(
        self,
        base: torch.nn.Linear,
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


def make_layer(setup: LayerSetup) -> TrainableBadit:
    config: BaditConfig = setup.config
    return TrainableBadit(
        setup.linear,
        setup.context,
        setup.params,
        setup.factors,
        rank=config.expert_rank,
        scale=config.scale,
        route_top_k=config.route_top_k,
        train_gate=setup.train_gate,
    )


def regroup(layers: Iterable[TrainableLayer], optimizer: torch.optim.Optimizer) -> None:
    """DOG: permute every layer's rank-one components (and their optimiser state) into gradient clusters."""
    for layer in layers:
        A, B = layer.adapter["A"], layer.adapter["B"]
        if A.grad is None or B.grad is None:
            continue
        K = layer.adapter["G"].shape[0]
        perm = regroup_permutation(A.grad.cpu(), B.grad.cpu(), K, layer.rank).to(A.device)
        with torch.no_grad():
            for param, dim in ((A, 0), (B, 1)):
                param.copy_(param.index_select(dim, perm))
                for value in optimizer.state.get(param, {}).values():
                    if isinstance(value, torch.Tensor) and value.shape == param.shape:
                        value.copy_(value.index_select(dim, perm))


def check_config(config: BaditConfig) -> None:
    if config.routing != "input":
        raise TrainingInputError("orthoserve train writes input-routed BADIT sets (routing = 'input').")


TRAINING = MethodTraining(
    defaults=dict(
        learning_rate=2e-4, weight_decay=0.0, schedule="cosine", warmup_ratio=0.03, grad_clip=1.0,
        loss="completion", batch_size=1, epochs=10, max_length=512, dog=True,
    ),  # fmt: skip
    make_layer=make_layer,
    options=("dog", "train_gate"),
    regroup=regroup,
    check_config=check_config,
)
