"""Every method's load and forward keep to one device and never read device data on the host.

The banks, routing buffers and base layer live on the `meta` device, standing in for a GPU, and
`DeviceDiscipline` fails on what CUDA would refuse or stall on. Sets are read from their files on the
host, as in the engine, so a host tensor that reaches a bank or the forward without being moved is
caught. Both layouts are covered: kernels reading each slot's matrix as stored, and transposed (vLLM's
punica kernels).
"""

from __future__ import annotations

import pytest
import torch
from worker_support import Batch, EmulatedWorker, run_step, worker_on

from adapters.serving.grouped import LOOP, SegmentedKernel, grouped_matmul_reference

from conftest import DEVICE, DeviceDiscipline  # type: ignore[import-not-found]

TRANSPOSED_LOOP = SegmentedKernel(
    "per-slot products, transposed storage",
    lambda x, storage, groups: grouped_matmul_reference(x, storage.transpose(1, 2), groups),
    transposed=True,
)
# slot id → set; kinds get capacities that leave empty slots and padding
SETS = {1: "moore-random", 2: "badit-random", 3: "badit-tasks", 4: "lora-random", 5: "moore-paper"}
CAPACITIES = {"moore": {"max_sets": 3}, "badit": {"max_sets": 3}, "lora": {"max_sets": 2}}
BATCH = [(1, 1, 3), (None, 0, 2), (2, 0, 4), (4, 0, 1), (3, 1, 2), (5, 0, 1), (1, 0, 1), (None, 0, 1)]


def step_on_device(worker: EmulatedWorker, batch: Batch) -> list[torch.Tensor]:
    x = torch.empty(sum(n for _, _, n in batch), worker.in_features, device=DEVICE, dtype=worker.layers[0].base_layer.weight.dtype)
    return run_step(worker, batch, x)


@pytest.mark.parametrize("kernel", [LOOP, TRANSPOSED_LOOP], ids=["as-stored", "transposed"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_load_and_forward_stay_on_the_device(base, set_dirs, factors_dir, kernel, dtype) -> None:
    worker = worker_on(DEVICE, dtype, base, kernel, CAPACITIES)
    discipline = DeviceDiscipline()
    with discipline:
        for slot, name in SETS.items():
            assert worker.adapters.load(slot, set_dirs[name], factors_dir) > 0
        outputs = step_on_device(worker, BATCH)
        step_on_device(worker, [(4, 0, 3)])  # one slot alone: its own weights, no gather
        step_on_device(worker, [(1, 0, 2), (5, 1, 1)])  # one method covering the whole batch
        for slot in SETS:
            worker.adapters.unload(slot)
    assert discipline.violations == []
    assert [tuple(y.shape) for y in outputs] == [(15, layer.output_size) for layer in worker.layers]
    held = [t for layer in worker.layers for by_projection in layer.banks.values() for bank in by_projection.values()
            for t in vars(bank).values() if isinstance(t, torch.Tensor)]
    assert held and all(t.device == DEVICE for t in held)
    assert all(t.dtype == dtype for t in held if t.is_floating_point())


def test_discipline_catches_a_host_tensor_and_a_host_read() -> None:
    """The emulation can fail: what CUDA refuses is recorded."""
    discipline = DeviceDiscipline()
    device = torch.zeros(4, 3, device=DEVICE)
    with discipline:
        device.index_select(0, torch.tensor([1, 2]))  # host indices into a device tensor
        device.copy_(torch.ones(4, 3))  # a transfer: allowed
        try:
            device.sum().item()
        except RuntimeError:
            pass  # meta tensors hold no data; the read is recorded before it fails
    assert len(discipline.violations) == 2
    assert "mixes host tensors [(2,)]" in discipline.violations[0]
    assert "reads device data on the host" in discipline.violations[1]
