"""BADIT initialisers.

paper:  A, B from the BAD split of the base SVD (expert 0 = largest singular values); G drawn like an
        `nn.Linear` default (uniform ±1/√in, seeded), W_task uniform.
random: the split plus noise and a sharper gate, so experts and routing visibly matter — for tests.
"""

from __future__ import annotations

import math

import torch

from adapters.badit.config import BaditConfig
from adapters.badit.math import bad_split
from adapters.base_model import BaseModelInfo
from adapters.registry import InitMode
from adapters.svd_cache import BaseFactors
from adapters.tensor_names import tensor_name


def initialise(
    base: BaseModelInfo,
    config: BaditConfig,
    target_modules: list[str],
    tasks: list[str],
    mode: InitMode,
    factors: BaseFactors | None,
    generator: torch.Generator,
) -> dict[str, torch.Tensor]:
    if factors is None:
        raise ValueError("BADIT initialisation needs the base SVD factors.")
    K = config.num_experts
    tensors: dict[str, torch.Tensor] = {}
    for layer in range(base.num_layers):
        for proj in target_modules:
            in_features = base.shape(proj)[1]
            f = factors.get(layer, proj)
            A, B = bad_split(f.U, f.S, f.V, config.top_k, config.scale)  # (k, in), (out, k)
            bound = 1.0 / math.sqrt(in_features)
            G = (torch.rand(K, in_features, generator=generator) * 2 - 1) * bound  # (K, in)
            W_task = torch.full((len(tasks), K), 1.0 / K)  # (n_tasks, K)
            if mode == "random":
                A = A + 0.5 * A.std() * torch.randn(A.shape, generator=generator)
                B = B + 0.5 * B.std() * torch.randn(B.shape, generator=generator)
                G = G * 8.0
                W_task = torch.softmax(3.0 * torch.randn(len(tasks), K, generator=generator), dim=-1)
            routing = {"G": G} if config.routing == "input" else {"W_task": W_task}
            for param, value in {"A": A, "B": B, **routing}.items():
                tensors[tensor_name(layer, proj, param)] = value.to(torch.float32).contiguous()
    return tensors
