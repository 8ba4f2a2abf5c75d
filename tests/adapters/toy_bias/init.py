"""Toy bias initialisers.

paper:  b = 0: the untrained set equals the base model.
random: b about as large as a typical output entry of the base linear, so greedy tokens change.
"""

from __future__ import annotations

import math

import torch

from adapters.base_model import BaseModelInfo
from adapters.registry import InitMode
from adapters.tensor_names import tensor_name
from toy_bias.config import ToyBiasConfig


def initialise(
    base: BaseModelInfo,
    config: ToyBiasConfig,
    target_modules: list[str],
    tasks: list[str],
    mode: InitMode,
    factors: object | None,
    generator: torch.Generator,
) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for layer in range(base.num_layers):
        for proj in target_modules:
            out_features, _ = base.shape(proj)
            if mode == "paper":
                b = torch.zeros(len(tasks), out_features)  # (n_tasks, out)
            else:
                row_norm = float(torch.linalg.matrix_norm(base.read_weight(layer, proj))) / math.sqrt(out_features)
                b = torch.randn(len(tasks), out_features, generator=generator) * row_norm  # (n_tasks, out)
            tensors[tensor_name(layer, proj, "b")] = b.contiguous()
    return tensors
