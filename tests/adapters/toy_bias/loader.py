"""Tensors of a toy bias set, per targeted module `layers.{i}.{proj}`:

    b  (n_tasks, out)    one bias row per task (row t ↔ manifest task t)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from adapters.base_model import BaseModelInfo
from adapters.tensor_names import per_module_shapes, tensor_name
from toy_bias.config import ToyBiasConfig


@dataclass(frozen=True)
class BiasModule:
    b: torch.Tensor  # (n_tasks, out)
    scale: float


def expected_tensors(
    config: ToyBiasConfig, base: BaseModelInfo, target_modules: list[str], n_tasks: int
) -> dict[str, tuple[int, ...]]:
    return per_module_shapes(base, target_modules, lambda out_f, in_f, d: {"b": (n_tasks, out_f)})


def module_view(tensors: dict[str, torch.Tensor], layer: int, proj: str, config: ToyBiasConfig) -> BiasModule:
    return BiasModule(b=tensors[tensor_name(layer, proj, "b")], scale=config.scale)


def check_tasks(config: ToyBiasConfig, tasks: list[str]) -> None:
    """Any non-empty task list (the manifest checks that)."""


def check_values(name: str, tensor: torch.Tensor, config: ToyBiasConfig) -> None:
    """No value rule beyond finiteness."""
