"""Training LoRA sets: the trainable layer, the recipe (the MoORE paper's baseline: MoORE's recipe),
and `--match-params`, which sizes the rank so that the set trains as many parameters as a default MoORE
set on all 7 projections (α = 2r), the paper's comparison."""

from __future__ import annotations

import math
from typing import Any

import torch

from adapters.base_model import PROJECTIONS, BaseModelInfo
from adapters.moore.config import MooreConfig
from adapters.moore.loader import expected_tensors as moore_expected_tensors
from adapters.training.examples import TrainingInputError
from adapters.training.layers import BatchContext, TrainableLayer
from adapters.training.method_training import LayerSetup, MethodTraining


class TrainableLora(TrainableLayer):
    """y = x Wᵀ + scaling (x Aᵀ) Bᵀ."""

    def __init__(self, base: torch.nn.Linear, context: BatchContext, params: dict[str, torch.Tensor], *, scaling: float) -> None:
        super().__init__(base, context, params)
        self.scaling = scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, T, in)
        x32 = x.to(torch.float32)
        y = x32 @ self.base.weight.to(torch.float32).T + self.scaling * ((x32 @ self.adapter["A"].T) @ self.adapter["B"].T)
        return self._finish(y, x)


def make_layer(setup: LayerSetup) -> TrainableLora:
    return TrainableLora(setup.linear, setup.context, setup.params, scaling=setup.config.scaling)


def matched_rank(base: BaseModelInfo, budget: int, targets: list[str]) -> int:
    """The LoRA rank whose trainable count on `targets` is closest to `budget`."""
    per_rank = base.num_layers * sum(sum(base.shape(proj)) for proj in targets)  # r·(in + out) per module
    return max(1, round(budget / per_rank))


def match_params(base: BaseModelInfo, targets: list[str], n_tasks: int, params: dict[str, Any]) -> dict[str, Any]:
    if "rank" in params:
        raise TrainingInputError("--match-params chooses the LoRA rank: do not also set rank.")
    shapes = moore_expected_tensors(MooreConfig(), base, list(PROJECTIONS), n_tasks)
    rank = matched_rank(base, sum(math.prod(shape) for shape in shapes.values()), targets)
    return {"alpha": 2.0 * rank} | params | {"rank": rank}


TRAINING = MethodTraining(
    defaults=dict(
        learning_rate=3e-4, weight_decay=0.01, schedule="constant", warmup_ratio=0.1, grad_clip=None,
        loss="all", batch_size=16, epochs=2, max_length=512,
    ),  # fmt: skip
    make_layer=make_layer,
    match_params=match_params,
)
