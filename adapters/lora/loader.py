"""Tensors of a LoRA set, per targeted module `layers.{i}.{proj}`:

    A  (r, in)
    B  (out, r)

A LoRA set is one fine-tune: it holds exactly one task name.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from adapters.base_model import BaseModelInfo
from adapters.errors import TaskListInvalid
from adapters.lora.config import LoraConfig
from adapters.tensor_names import per_module_shapes, tensor_name


@dataclass(frozen=True)
class LoraModule:
    A: torch.Tensor  # (r, in)
    B: torch.Tensor  # (out, r)
    scaling: float


def expected_tensors(
    config: LoraConfig, base: BaseModelInfo, target_modules: list[str], n_tasks: int
) -> dict[str, tuple[int, ...]]:
    r = config.rank
    return per_module_shapes(base, target_modules, lambda out_f, in_f, d: {"A": (r, in_f), "B": (out_f, r)})


def module_view(tensors: dict[str, torch.Tensor], layer: int, proj: str, config: LoraConfig) -> LoraModule:
    return LoraModule(
        A=tensors[tensor_name(layer, proj, "A")], B=tensors[tensor_name(layer, proj, "B")], scaling=config.scaling
    )


def check_tasks(config: LoraConfig, tasks: list[str]) -> None:
    if len(tasks) != 1:
        raise TaskListInvalid(f"A LoRA set holds exactly one task name; got {len(tasks)}.", field="tasks")


def check_values(name: str, tensor: torch.Tensor, config: LoraConfig) -> None:
    """LoRA has no value rule beyond finiteness."""
