"""The Hugging Face base model with its targeted linears replaced by trainable adapter layers.

Parameters start from the method's paper initialisation (adapters/<method>/init.py), so an untrained
MoORE or LoRA model equals the base and an untrained BADIT model equals the base up to the gate;
the official MoORE code draws G kaiming-uniform (a = √5), which is done here too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from transformers import LlamaForCausalLM

from adapters.badit.config import BaditConfig
from adapters.base_model import BaseModelInfo
from adapters.lora.config import LoraConfig
from adapters.registry import MethodConfig, get_method
from adapters.svd_cache import BaseFactors
from adapters.training.layers import BatchContext, TrainableBadit, TrainableLayer, TrainableLora, TrainableMoore

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
    model.requires_grad_(False)
    generator = torch.Generator().manual_seed(seed)
    initial = get_method(kind).initialise(base, config, targets, tasks, "paper", factors, generator)
    context = BatchContext()
    layers: dict[str, TrainableLayer] = {}
    for index, decoder_layer in enumerate(model.model.layers):
        for proj in targets:
            parent = getattr(decoder_layer, _PARENT.get(proj, "mlp"))
            params = {name.rsplit(".", 1)[1]: value for name, value in initial.items() if name.startswith(f"layers.{index}.{proj}.")}
            layer = _make_layer(kind, getattr(parent, proj), context, params, config, factors, index, proj, generator, train_gate)
            setattr(parent, proj, layer)
            layers[f"layers.{index}.{proj}"] = layer
    return TrainableModel(model, context, layers)


def _make_layer(
    kind: str,
    linear: nn.Linear,
    context: BatchContext,
    params: dict[str, torch.Tensor],
    config: MethodConfig,
    factors: BaseFactors | None,
    layer: int,
    proj: str,
    generator: torch.Generator,
    train_gate: bool,
) -> TrainableLayer:
    if kind == "moore":
        assert factors is not None
        bound = 1.0 / math.sqrt(linear.in_features)  # kaiming-uniform(a=√5) of an nn.Linear
        params["G"] = (torch.rand(params["G"].shape, generator=generator) * 2 - 1) * bound
        return TrainableMoore(linear, context, params, factors.get(layer, proj))
    if kind == "badit":
        assert factors is not None and isinstance(config, BaditConfig)
        return TrainableBadit(
            linear,
            context,
            params,
            factors.get(layer, proj),
            rank=config.expert_rank,
            scale=config.scale,
            route_top_k=config.route_top_k,
            train_gate=train_gate,
        )
    assert isinstance(config, LoraConfig)
    return TrainableLora(linear, context, params, scaling=config.scaling)


def trainable_count(base: BaseModelInfo, kind: str, config: MethodConfig, targets: list[str], n_tasks: int) -> int:
    """Parameters a set of this kind trains on `base` (its stored tensors; BADIT's G counted too)."""
    shapes = get_method(kind).expected_tensors(config, base, targets, n_tasks)
    return sum(math.prod(shape) for shape in shapes.values())


def matched_lora_rank(base: BaseModelInfo, moore_params: int, targets: list[str]) -> int:
    """The LoRA rank whose trainable count on `targets` is closest to `moore_params`."""
    per_rank = base.num_layers * sum(sum(base.shape(proj)) for proj in targets)  # r·(in + out) per module
    return max(1, round(moore_params / per_rank))
