"""LoRA initialisers.

paper:  A uniform ±1/√in (like PEFT's Kaiming-uniform), B = 0: the untrained set equals the base model.
random: B random, sized so that scaling·B A is about half the base weight's typical entry — for tests.
"""

from __future__ import annotations

import math

import torch

from adapters.base_model import BaseModelInfo
from adapters.lora.config import LoraConfig
from adapters.registry import InitMode
from adapters.tensor_names import tensor_name


def initialise(
    base: BaseModelInfo,
    config: LoraConfig,
    target_modules: list[str],
    tasks: list[str],
    mode: InitMode,
    factors: object | None,
    generator: torch.Generator,
) -> dict[str, torch.Tensor]:
    r = config.rank
    tensors: dict[str, torch.Tensor] = {}
    for layer in range(base.num_layers):
        for proj in target_modules:
            out_features, in_features = base.shape(proj)
            A = (torch.rand(r, in_features, generator=generator) * 2 - 1) / math.sqrt(in_features)  # (r, in)
            if mode == "paper":
                B = torch.zeros(out_features, r)  # (out, r)
            else:
                w_rms = float(base.read_weight(layer, proj).pow(2).mean().sqrt())
                a_rms = 1.0 / math.sqrt(3 * in_features)
                b_std = 0.5 * w_rms / (config.scaling * a_rms * math.sqrt(r))
                B = torch.randn(out_features, r, generator=generator) * b_std  # (out, r)
            tensors[tensor_name(layer, proj, "A")] = A.contiguous()
            tensors[tensor_name(layer, proj, "B")] = B.contiguous()
    return tensors
