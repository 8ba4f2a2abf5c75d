"""A set version evicted from its bank slot and brought back serves what it served before, whether it
comes back from its host copy or is read again from its folder, into another slot and other task rows.
Host copies keep only what a set fills, not the slot's padding."""

from __future__ import annotations

import pytest
import torch
from worker_support import run_step, worker_on

from adapters.serving.grouped import TORCH_GROUPED_MM

CPU = torch.device("cpu")
SETS = {1: "moore-random", 2: "badit-tasks", 3: "lora-random", 4: "badit-random"}
# Room for one more set of each kind, so versions come back into other slots and task rows.
CAPACITIES = {"moore": {"max_sets": 2, "max_tasks": 4}, "badit": {"max_sets": 3, "max_tasks": 4}, "lora": {"max_sets": 2, "max_rank": 32}}
BATCH = [(1, 1, 3), (None, 0, 2), (2, 1, 2), (3, 0, 4), (4, 0, 2), (1, 0, 1)]
SQUATTERS = {11: "moore-paper", 12: "badit-paper", 13: "lora-paper"}


@pytest.mark.parametrize("from_host", [True, False], ids=["host copy", "folder"])
def test_evicted_version_comes_back_exactly(base, set_dirs, factors_dir, from_host: bool) -> None:
    worker = worker_on(CPU, torch.float32, base, TORCH_GROUPED_MM, CAPACITIES)
    for slot, name in SETS.items():
        worker.adapters.load(slot, set_dirs[name], factors_dir)
    x = torch.randn(sum(n for _, _, n in BATCH), worker.in_features)
    before = run_step(worker, BATCH, x)
    slots_before = {slot: worker.adapters.entries[slot] for slot in SETS}

    for slot in SETS:
        host_bytes = worker.adapters.evict(slot, keep_host_copy=from_host)
        assert (host_bytes > 0) == from_host
    assert worker.adapters.resident_bytes()["slots"] == 0
    for slot, name in SQUATTERS.items():
        worker.adapters.load(slot, set_dirs[name], factors_dir)
    for slot in reversed(SETS):
        if from_host:
            worker.adapters.restore(slot, factors_dir)
        else:
            worker.adapters.load(slot, set_dirs[SETS[slot]], factors_dir)
    assert any(worker.adapters.entries[slot] != slots_before[slot] for slot in SETS)
    assert worker.adapters.host_copies == {}

    after = run_step(worker, BATCH, x)
    for served, expected in zip(after, before):
        torch.testing.assert_close(served, expected, rtol=1e-6, atol=1e-6)


def test_host_copy_keeps_what_the_set_fills(base, set_dirs, factors_dir) -> None:
    worker = worker_on(CPU, torch.float32, base, TORCH_GROUPED_MM, {"lora": {"max_sets": 2, "max_rank": 64}})
    in_slot = worker.adapters.load(1, set_dirs["lora-random"], factors_dir)
    kept = worker.adapters.evict(1, keep_host_copy=True)
    assert in_slot <= kept < 2 * in_slot  # the set's rank, not the bank's 64
    assert worker.adapters.resident_bytes()["host_copies"] == kept
    worker.adapters.forget(1)
    assert worker.adapters.resident_bytes()["host_copies"] == 0
    with pytest.raises(KeyError):
        worker.adapters.restore(1, factors_dir)
