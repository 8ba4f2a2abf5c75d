"""What a GPU enforces, emulated on the CPU.

`DeviceDiscipline` plays the part of a CUDA device for tensors on the `meta` device: it fails on an
op that mixes host and device tensors (a copy between them excepted), and on an op that reads device
data on the host (`.item()`, `.tolist()`, `nonzero`, `bincount`, `unique`), which on a GPU would stall
the host until the device catches up. `worker_support.worker_on` builds the worker side of an engine
on any device.
"""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

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
