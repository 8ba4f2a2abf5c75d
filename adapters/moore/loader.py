"""Tensors of a MoORE set, per targeted module `layers.{i}.{proj}`:

    Y     (h, in)         Householder vectors, fp32
    G     (E, in)         router down-projection
    G_up  (d, E)          router up-projection
    T     (d, e)          task projection
    Emb   (n_tasks, e)    task table (row t ↔ manifest task t)

A MoORE set holds one or more tasks; every module carries its own router and task table.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from adapters.base_model import BaseModelInfo
from adapters.errors import TaskListInvalid, TensorValueInvalid
from adapters.moore.config import MooreConfig
from adapters.moore.math import task_vectors
from adapters.tensor_names import per_module_shapes, tensor_name

PARAMS = ("Y", "G", "G_up", "T", "Emb")


@dataclass(frozen=True)
class MooreModule:
    Y: torch.Tensor  # (h, in)
    G: torch.Tensor  # (E, in)
    G_up: torch.Tensor  # (d, E)
    T: torch.Tensor  # (d, e)
    Emb: torch.Tensor  # (n_tasks, e)

    def task_vectors(self) -> torch.Tensor:
        """c_t = T·Emb[t] for all tasks, fp32: (n_tasks, d)."""
        return task_vectors(self.T, self.Emb)


def expected_tensors(
    config: MooreConfig, base: BaseModelInfo, target_modules: list[str], n_tasks: int
) -> dict[str, tuple[int, ...]]:
    h, E, e = config.householder_count, config.router_width, config.task_embedding_width
    return per_module_shapes(
        base,
        target_modules,
        lambda out_f, in_f, d: {"Y": (h, in_f), "G": (E, in_f), "G_up": (d, E), "T": (d, e), "Emb": (n_tasks, e)},
    )


def module_view(tensors: dict[str, torch.Tensor], layer: int, proj: str, config: MooreConfig) -> MooreModule:
    return MooreModule(**{param: tensors[tensor_name(layer, proj, param)] for param in PARAMS})


def check_tasks(config: MooreConfig, tasks: list[str]) -> None:
    if not tasks:
        raise TaskListInvalid("A MoORE set must name at least one task.", field="tasks")


def check_values(name: str, tensor: torch.Tensor, config: MooreConfig) -> None:
    if name.endswith(".Y") and bool((torch.linalg.vector_norm(tensor.float(), dim=1) == 0).any()):
        raise TensorValueInvalid(f"Tensor '{name}' has a zero Householder vector (it cannot be normalised).", field=name)
