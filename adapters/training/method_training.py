"""What a method gives `orthoserve train`: its recipe's defaults, its trainable layer and its hooks.

Each method folder builds one `MethodTraining` (adapters/<method>/training.py) and puts it in its
`MethodSpec`; the trainer calls it and never branches on the kind.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from adapters.svd_cache import SvdFactors
from adapters.training.layers import BatchContext, TrainableLayer


@dataclass(frozen=True)
class LayerSetup:
    """Everything a method may use to build the trainable layer of one targeted base linear."""

    linear: nn.Linear  # the frozen base linear the layer replaces
    context: BatchContext
    params: dict[str, torch.Tensor]  # the module's tensors from the method's paper initialisation
    config: Any  # the method's hyper-parameters
    factors: SvdFactors | None  # the base linear's SVD, for methods that need factors
    generator: torch.Generator  # seeded; for draws the paper initialisation leaves to training
    train_gate: bool  # the `train_gate` option, for methods that take it


@dataclass(frozen=True)
class MethodTraining:
    defaults: Mapping[str, Any]  # `TrainSettings` values of the method's own recipe
    make_layer: Callable[[LayerSetup], TrainableLayer]
    # True: the set holds one task per training task; False: one task, named by --set-task, for every example.
    multi_task: bool = False
    options: tuple[str, ...] = ()  # method-only `TrainSettings` options the method reads
    # (layers, optimiser) -> None: the `dog` option's regrouping, at epoch ends in the first half
    regroup: Callable[[Iterable[TrainableLayer], torch.optim.Optimizer], None] = lambda layers, optimizer: None
    # (config) -> None, raises TrainingInputError for a config training does not write
    check_config: Callable[[Any], None] = lambda config: None
    # (base, targets, n_tasks, method params) -> the params sized to the paper's comparison budget
    # (--match-params); None: the method has no such budget
    match_params: Callable[..., dict[str, Any]] | None = None
