"""The worker side of an engine (banks, routing buffers and adapted layers of one decoder layer) on any
device, without vLLM: for GPU-emulation and residency tests.

Import from here (`from worker_support import worker_on`), not from a conftest.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from adapters.base_model import BaseModelInfo
from adapters.registry import get_method
from adapters.serving.bank import ProjectionShape
from adapters.serving.factors import torch_product
from adapters.serving.grouped import SegmentedKernel
from server.engine.worker.adapted_linear import AdaptedLinear, Projection
from server.engine.worker.residency import WorkerAdapters
from server.engine.worker.step_routing import RequestRoute

LAYER = 1
Batch = list[tuple[int | None, int, int]]  # requests in batch order: (slot id or None, task index, tokens this step)


@dataclass
class EmulatedWorker:
    adapters: WorkerAdapters
    layers: list[AdaptedLinear]
    in_features: int


def worker_on(
    device: torch.device, model_dtype: torch.dtype, base: BaseModelInfo, kernel: SegmentedKernel, kinds: dict[str, dict]
) -> EmulatedWorker:
    """One decoder layer's fused `qkv_proj`, `o_proj` and fused `gate_up_proj` (all read the hidden
    state), adapted, with banks of `kinds` on `device`."""
    hidden = base.shape("o_proj")[0]
    fused = {
        "qkv_proj": [(name, *base.shape(name)) for name in ("q_proj", "k_proj", "v_proj")],
        "o_proj": [("o_proj", *base.shape("o_proj"))],
        "gate_up_proj": [("gate_proj", *base.shape("gate_proj")), ("up_proj", *base.shape("up_proj"))],
    }
    installed: list[AdaptedLinear] = []
    linears = []
    for parts in fused.values():
        projections, shapes, start = [], {}, 0
        for name, out_features, in_features in parts:
            projections.append(Projection(name, start, out_features))
            shapes[name] = ProjectionShape(in_features, out_features)
            start += out_features
        base_layer = torch.nn.Linear(parts[0][2], start, bias=False, device=device, dtype=model_dtype)
        linears.append((LAYER, base_layer, projections, shapes, installed.append))
    adapters = WorkerAdapters(
        linears,
        {kind: get_method(kind).serving.capacity_cls(**fields) for kind, fields in kinds.items()},
        device=device,
        model_dtype=model_dtype,
        max_tokens=64,
        product=torch_product,
        base_forward=lambda layer, x: layer(x),
        pack_output=lambda layer, y: y,
        bank_dtype="model",
        kernel_for=lambda device, dtype: kernel,
    )
    return EmulatedWorker(adapters, installed, hidden)


def run_step(worker: EmulatedWorker, batch: Batch, x: torch.Tensor) -> list[torch.Tensor]:
    """Every adapted layer's output for `x` under the routing of `batch`."""
    routes = [RequestRoute(slot, task) if slot is not None else None for slot, task, _ in batch]
    worker.adapters.begin_step(routes, np.array([n for _, _, n in batch]))
    try:
        return [layer.compute(x) for layer in worker.layers]
    finally:
        worker.adapters.end_step()
