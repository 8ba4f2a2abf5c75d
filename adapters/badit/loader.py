"""Tensors of a BADIT set, per targeted module `layers.{i}.{proj}` (k = K·r):

    A       (k, in)         stacked A_e (expert e = rows e·r … e·r+r−1)
    B       (out, k)        concatenated B_e
    G       (K, in)         ability gate          (routing = "input")
    W_task  (n_tasks, K)    fixed ability mixture (routing = "task"; rows ≥ 0, summing to 1)

An input-routed set holds exactly one task name (the input chooses the abilities); a task-routed set
holds one mixture row per task.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from adapters.badit.config import BaditConfig
from adapters.base_model import BaseModelInfo
from adapters.errors import ManifestInvalid, TaskListInvalid, TensorValueInvalid
from adapters.tensor_names import per_module_shapes, tensor_name


@dataclass(frozen=True)
class BaditModule:
    A: torch.Tensor  # (K·r, in)
    B: torch.Tensor  # (out, K·r)
    G: torch.Tensor | None  # (K, in), input routing
    task_mixture: torch.Tensor | None  # (n_tasks, K), task routing
    num_experts: int
    expert_rank: int
    alpha: float
    route_top_k: int | None = None  # keep the k largest gate weights, renormalised (None: all K)

    @property
    def scale(self) -> float:
        """s = α/r."""
        return self.alpha / self.expert_rank


def _routing_param(config: BaditConfig) -> str:
    return "G" if config.routing == "input" else "W_task"


def expected_tensors(
    config: BaditConfig, base: BaseModelInfo, target_modules: list[str], n_tasks: int
) -> dict[str, tuple[int, ...]]:
    k, K = config.top_k, config.num_experts
    for proj in target_modules:
        if k > base.rank(proj):
            raise ManifestInvalid(
                f"K·r = {k} exceeds the rank {base.rank(proj)} of {proj}; lower num_experts or expert_rank.",
                field="hyper_parameters.expert_rank",
            )

    def shapes(out_f: int, in_f: int, d: int) -> dict[str, tuple[int, ...]]:
        routing = (K, in_f) if config.routing == "input" else (n_tasks, K)
        return {"A": (k, in_f), "B": (out_f, k), _routing_param(config): routing}

    return per_module_shapes(base, target_modules, shapes)


def module_view(tensors: dict[str, torch.Tensor], layer: int, proj: str, config: BaditConfig) -> BaditModule:
    def get(param: str) -> torch.Tensor:
        return tensors[tensor_name(layer, proj, param)]

    return BaditModule(
        A=get("A"),
        B=get("B"),
        G=get("G") if config.routing == "input" else None,
        task_mixture=get("W_task") if config.routing == "task" else None,
        num_experts=config.num_experts,
        expert_rank=config.expert_rank,
        alpha=config.alpha,
        route_top_k=config.route_top_k,
    )


def check_tasks(config: BaditConfig, tasks: list[str]) -> None:
    if not tasks:
        raise TaskListInvalid("A BADIT set must name at least one task.", field="tasks")
    if config.routing == "input" and len(tasks) != 1:
        raise TaskListInvalid(
            f"An input-routed BADIT set holds exactly one task name; got {len(tasks)}. "
            "Use routing = 'task' with a W_task mixture per task for several tasks.",
            field="tasks",
        )


def check_values(name: str, tensor: torch.Tensor, config: BaditConfig) -> None:
    if not name.endswith(".W_task"):
        return
    mixture = tensor.to(torch.float32)
    if bool((mixture < 0).any()) or not torch.allclose(mixture.sum(-1), torch.ones(mixture.shape[0]), atol=1e-3):
        raise TensorValueInvalid(f"Tensor '{name}' must hold non-negative rows summing to 1 (ability mixtures).", field=name)
