"""The Hugging Face base model with its targeted linears replaced by the method's trainable layers.

Parameters start from the method's paper initialisation (adapters/<method>/init.py), so an untrained
MoORE or LoRA model equals the base and an untrained BADIT model equals the base up to the gate; a
method's layer may redraw what its official code draws differently (adapters/<method>/training.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from transformers import LlamaForCausalLM

from adapters.base_model import BaseModelInfo
from adapters.registry import MethodConfig, get_method
from adapters.svd_cache import BaseFactors
from adapters.training.layers import BatchContext, TrainableLayer
from adapters.training.method_training import LayerSetup
from adapters.training.settings import method_training

_PARENT = {"q_proj": "self_attn", "k_proj": "self_attn", "v_proj": "self_attn", "o_proj": "self_attn"}


@dataclass
class TrainableModel:
    model: LlamaForCausalLM
    context: BatchContext
    layers: dict[str, TrainableLayer]  # "layers.{i}.{proj}" → layer

    def trainable_parameters(self) -> dict[str, nn.Parameter]:
        """Name ("layers.{i}.{proj}.{param}") → parameter, for every parameter that trains."""
        return {
            f"{prefix}.{name}": param
            for prefix, layer in self.layers.items()
            for name, param in layer.adapter.items()
            if param.requires_grad
        }

    def export(self) -> dict[str, torch.Tensor]:
        """Every tensor of the set (trained or not), named as in an adapter set."""
        return {f"{prefix}.{name}": value for prefix, layer in self.layers.items() for name, value in layer.export().items()}


def build_trainable_model(
    model: LlamaForCausalLM,
    base: BaseModelInfo,
    kind: str,
    config: MethodConfig,
    targets: list[str],
    tasks: list[str],
    factors: BaseFactors | None,
    seed: int,
    train_gate: bool = True,
) -> TrainableModel:
    """Freeze `model`, wrap every targeted linear of every layer, initialise from the method's paper init."""
    training = method_training(kind)
    model.requires_grad_(False)
    generator = torch.Generator().manual_seed(seed)
    initial = get_method(kind).initialise(base, config, targets, tasks, "paper", factors, generator)
    context = BatchContext()
    layers: dict[str, TrainableLayer] = {}
    for index, decoder_layer in enumerate(model.model.layers):
        for proj in targets:
            parent = getattr(decoder_layer, _PARENT.get(proj, "mlp"))
            params = {name.rsplit(".", 1)[1]: value for name, value in initial.items() if name.startswith(f"layers.{index}.{proj}.")}
            setup = LayerSetup(
                linear=getattr(parent, proj),
                context=context,
                params=params,
                config=config,
                factors=factors.get(index, proj) if factors is not None else None,
                generator=generator,
                train_gate=train_gate,
            )
            layer = training.make_layer(setup)
            setattr(parent, proj, layer)
            layers[f"layers.{index}.{proj}"] = layer
    return TrainableModel(model, context, layers)


def trainable_count(base: BaseModelInfo, kind: str, config: MethodConfig, targets: list[str], n_tasks: int) -> int:
    """Parameters a set of this kind trains on `base` (its stored tensors; BADIT's G counted too)."""
    shapes = get_method(kind).expected_tensors(config, base, targets, n_tasks)
    return sum(math.prod(shape) for shape in shapes.values())
