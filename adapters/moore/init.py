"""MoORE initialisers.

paper:  T = 0, G_up = 0, Householder vectors in identical pairs (H_i H_i = I ⇒ M = I), G and Emb random:
        the untrained set reproduces the base model exactly.
random: every tensor random (seeded) and large enough to change greedy tokens — for tests.
"""

from __future__ import annotations

import math

import torch

from adapters.base_model import BaseModelInfo
from adapters.errors import ManifestInvalid
from adapters.moore.config import MooreConfig
from adapters.registry import InitMode
from adapters.tensor_names import tensor_name


def initialise(
    base: BaseModelInfo,
    config: MooreConfig,
    target_modules: list[str],
    tasks: list[str],
    mode: InitMode,
    factors: object | None,
    generator: torch.Generator,
) -> dict[str, torch.Tensor]:
    h, E, e = config.householder_count, config.router_width, config.task_embedding_width
    if mode == "paper" and h % 2:
        raise ManifestInvalid(
            f"householder_count must be even for the paper initialisation (identical pairs); got {h}.",
            field="hyper_parameters.householder_count",
        )
    tensors: dict[str, torch.Tensor] = {}
    for layer in range(base.num_layers):
        for proj in target_modules:
            out_features, in_features = base.shape(proj)
            d = base.rank(proj)

            def randn(*shape: int) -> torch.Tensor:
                return torch.randn(*shape, generator=generator)

            G = randn(E, in_features) / math.sqrt(in_features)  # (E, in)
            Emb = randn(len(tasks), e)  # (n_tasks, e)
            if mode == "paper":
                Y = randn(h // 2, in_features).repeat_interleave(2, dim=0)  # (h, in), rows in identical pairs
                G_up = torch.zeros(d, E)  # (d, E)
                T = torch.zeros(d, e)  # (d, e)
            else:
                # Scale the gate terms to the typical singular value so they move g by about half of S.
                sigma = float(torch.linalg.matrix_norm(base.read_weight(layer, proj))) / math.sqrt(d)
                Y = randn(h, in_features)  # (h, in)
                G_up = randn(d, E) * (0.5 * sigma / math.sqrt(E))  # (d, E)
                T = randn(d, e) * (0.5 * sigma / math.sqrt(e))  # (d, e)
            for param, value in {"Y": Y, "G": G, "G_up": G_up, "T": T, "Emb": Emb}.items():
                tensors[tensor_name(layer, proj, param)] = value.to(torch.float32).contiguous()
    return tensors
