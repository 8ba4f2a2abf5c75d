"""What a GPU enforces, emulated on the CPU.

`DeviceDiscipline` plays the part of a CUDA device for tensors on the `meta` device: it fails on an
op that mixes host and device tensors (a copy between them excepted), and on an op that reads device
data on the host (`.item()`, `.tolist()`, `nonzero`, `bincount`, `unique`), which on a GPU would stall
the host until the device catches up. `worker_on` builds the worker side of an engine (banks, routing
buffers and adapted layers of one decoder layer) on any device.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from adapters.base_model import BaseModelInfo
from adapters.registry import get_method
from adapters.serving.bank import ProjectionShape
from adapters.serving.factors import torch_product
from adapters.serving.grouped import SegmentedKernel
from server.engine.adapted_linear import AdaptedLinear, Projection
from server.engine.adapter_residency import WorkerAdapters

LAYER = 1
DEVICE = torch.device("meta")
aten = torch.ops.aten

_TRANSFERS = {aten._to_copy.default, aten.copy_.default}
_HOST_READS = {
    aten._local_scalar_dense.default,
    aten.nonzero.default,
    aten.bincount.default,
    aten._unique2.default,
    aten.unique_consecutive.default,
    aten.unique_dim.default,
}


class DeviceDiscipline(TorchDispatchMode):
    """Records every op on `DEVICE` tensors that a GPU would refuse or stall on."""

    def __init__(self) -> None:
        super().__init__()
        self.violations: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        tensors = [t for t in tree_leaves((args, kwargs or {})) if isinstance(t, torch.Tensor)]
        if any(t.device == DEVICE for t in tensors):
            if func in _HOST_READS:
                self.violations.append(f"{func} reads device data on the host")
            elif func not in _TRANSFERS:
                # 0-dim host tensors are scalars, which CUDA kernels accept.
                host = [tuple(t.shape) for t in tensors if t.device.type == "cpu" and t.dim() > 0]
                if host:
                    self.violations.append(f"{func} mixes host tensors {host} with device tensors")
        return func(*args, **(kwargs or {}))


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


@pytest.fixture(scope="session")
def factors_dir(factors) -> Path:
    return factors.folder
