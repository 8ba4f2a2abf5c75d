"""Each method's serving bank equals the per-request reference math, row by row.

Rows of several slots, tasks and request segments are interleaved in one batch, as the engine sees
them; slots hold sets of smaller shapes than the bank's capacity (zero padding), and an empty slot
sits between them. The rows go through the same per-step routing the engine builds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import psutil
import pytest
import torch
from torch.testing import assert_close

from adapters.badit.config import BaditConfig
from adapters.badit.math import ability_weights, badit_forward, residual_weight
from adapters.base_model import BaseModelInfo
from adapters.format import AdapterSet, load_adapter_set
from adapters.initialise import init_adapter_set
from adapters.lora.math import lora_forward
from adapters.moore.math import moore_forward
from adapters.registry import get_method
from adapters.serving.bank import BankPlacement, KindRows, ProjectionShape, SlotContents
from adapters.serving.factors import SharedFactors, torch_product
from adapters.serving.grouped import LOOP, TORCH_GROUPED_MM, Groups, GroupedWeights, grouped_matmul_reference
from adapters.serving.pages import zero_and_release
from adapters.svd_cache import BaseFactors
from server.engine.worker.step_routing import RequestRoute, ResidentEntry, build_host_rows, device_rows

LAYER = 1
CPU = torch.device("cpu")
# (set name, bank slot) → requests in batch order: (set name or None, task index, tokens this step)
REQUESTS = [("a", 1, 4), (None, 0, 2), ("b", 0, 1), ("a", 0, 1), ("b", 0, 3), (None, 0, 1), ("a", 1, 2)]


def load(set_dirs: dict[str, Path], name: str, base: BaseModelInfo) -> AdapterSet:
    return load_adapter_set(set_dirs[name], base)


# Banks in the model's dtype (GPUs, CPUs with bf16 matmul units) against the fp32 reference math.
BANK_DTYPES = [torch.float32, torch.bfloat16]
TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 3e-2}


def make_bank(kind: str, base: BaseModelInfo, proj: str, factors: BaseFactors, capacity: dict, dtype: torch.dtype = torch.float32):
    method = get_method(kind).serving
    out_features, in_features = base.shape(proj)
    shared = SharedFactors(dtype, CPU, torch_product)
    shape = ProjectionShape(in_features, out_features)
    shared.hold(lambda: factors.get(LAYER, proj), shape)
    return method.make_bank(method.capacity_cls(**capacity), shape, BankPlacement.default(CPU, dtype), shared)


def assert_near(served: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype) -> None:
    """Equal within the bank dtype's rounding, relative to the output's scale."""
    tolerance = TOLERANCE[dtype]
    assert_close(served.float(), expected.float(), rtol=tolerance, atol=tolerance * float(expected.abs().max()))


def fill(bank, sets: dict[str, AdapterSet], slots: dict[str, int], proj: str, factors: BaseFactors) -> dict[str, ResidentEntry]:
    entries, next_row = {}, 5  # task rows need not start at 0 nor be contiguous
    for name, adapter_set in sets.items():
        needed = adapter_set.method.serving.task_rows_needed(adapter_set.config, len(adapter_set.tasks))
        rows = tuple(next_row + 3 * i for i in range(needed))
        next_row += 1
        contents = SlotContents(adapter_set.module(LAYER, proj), adapter_set.config, torch.tensor(rows), lambda: factors.get(LAYER, proj))
        assert bank.write(slots[name], contents) > 0
        entries[name] = ResidentEntry(adapter_set.kind, slots[name], rows)
    return entries


def step_rows(entries: dict[str, ResidentEntry], kind: str, num_slots: int) -> tuple[KindRows, list[tuple[str, int, np.ndarray]]]:
    """The bank's rows for REQUESTS, and (set, task, batch rows) of each adapter request."""
    ids = {name: i for i, name in enumerate(entries)}
    routes = [RequestRoute(ids[name], task) if name in entries else None for name, task, _ in REQUESTS]
    counts = [n for _, _, n in REQUESTS]
    by_id = {ids[name]: entry for name, entry in entries.items()}
    host = build_host_rows(routes, counts, by_id.__getitem__, {kind: num_slots})[kind]
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    requests = [(name, task, np.arange(s, s + n)) for (name, task, n), s in zip(REQUESTS, starts) if name in entries]
    return device_rows(host, sum(counts), CPU), requests


@pytest.mark.parametrize("kernel", [TORCH_GROUPED_MM, LOOP], ids=lambda k: k.name)
@pytest.mark.parametrize(("width", "height"), [(5, 3), (16, 8)])  # unaligned rows fall back to one product per slot
def test_grouped_matmul_equals_one_product_per_slot(kernel, width: int, height: int) -> None:
    x = torch.randn(7, width)
    weights = GroupedWeights(4, width, height, device=CPU, dtype=torch.float32, kernel=kernel)
    weights.weights.copy_(torch.randn(4, width, height))
    ends = np.array([2, 2, 6, 7], dtype=np.int32)  # slot 1 empty
    every_slot = weights.matmul(x, Groups(torch.from_numpy(ends), ends))
    for slot, (start, end) in enumerate(zip([0, 2, 2, 6], ends)):
        assert_close(every_slot[start:end], x[start:end] @ weights[slot])
    listed_ends = np.array([2, 6, 7], dtype=np.int32)
    listed = Groups(torch.from_numpy(listed_ends), listed_ends, torch.tensor([0, 2, 3]))
    assert_close(weights.matmul(x, listed), every_slot)
    assert_close(grouped_matmul_reference(x, weights.weights, listed), every_slot)


@pytest.mark.parametrize("dtype", BANK_DTYPES, ids=str)
@pytest.mark.parametrize("proj", ["q_proj", "down_proj"])
def test_moore_bank_matches_reference_per_row(set_dirs, base: BaseModelInfo, factors: BaseFactors, proj: str, dtype: torch.dtype) -> None:
    sets = {"a": load(set_dirs, "moore-random", base), "b": load(set_dirs, "moore-paper", base)}
    bank = make_bank("moore", base, proj, factors, {"max_sets": 3, "max_householder": 12, "max_router_width": 130, "max_tasks": 16}, dtype)
    entries = fill(bank, sets, {"a": 2, "b": 0}, proj, factors)
    rows, requests = step_rows(entries, "moore", 3)
    x = torch.randn(14, base.shape(proj)[1]).to(dtype)
    out = torch.full((14, base.shape(proj)[0]), float("nan"), dtype=dtype)
    bank.apply(x, out, rows)

    f = factors.get(LAYER, proj)
    for name, task, batch_rows in requests:
        module = sets[name].module(LAYER, proj)
        expected = moore_forward(x[batch_rows].float(), f.U, f.S, f.V, module.Y, module.G, module.G_up, module.task_vectors()[task])
        assert_near(out[batch_rows], expected, dtype)
    base_rows = np.setdiff1d(np.arange(14), np.concatenate([r for _, _, r in requests]))
    assert torch.isnan(out[base_rows]).all(), "rows of other requests are left alone"


@pytest.fixture(scope="module")
def badit_top2(tmp_path_factory: pytest.TempPathFactory, base: BaseModelInfo, svd_cache_dir: Path) -> Path:
    """An input-routed BADIT set that keeps only its 2 strongest experts per request, renormalised."""
    path = tmp_path_factory.mktemp("top2") / "badit-top2"
    init_adapter_set(path, kind="badit", base=base, tasks=["default"], mode="random", config=BaditConfig(route_top_k=2), cache_dir=svd_cache_dir, seed=7)
    return path


@pytest.mark.parametrize("dtype", BANK_DTYPES, ids=str)
@pytest.mark.parametrize("input_routed", ["badit-random", "badit-top2"])
def test_badit_bank_matches_reference_per_segment(
    set_dirs, badit_top2: Path, base: BaseModelInfo, factors: BaseFactors, input_routed: str, dtype: torch.dtype
) -> None:
    proj = "gate_proj"
    routed = load_adapter_set(badit_top2, base) if input_routed == "badit-top2" else load(set_dirs, input_routed, base)
    sets = {"a": load(set_dirs, "badit-tasks", base), "b": routed}
    bank = make_bank("badit", base, proj, factors, {"max_sets": 3, "max_rank": 40, "max_experts": 9, "max_tasks": 16}, dtype)
    entries = fill(bank, sets, {"a": 1, "b": 2}, proj, factors)
    rows, requests = step_rows(entries, "badit", 3)
    W = base.read_weight(LAYER, proj)
    x = torch.randn(14, W.shape[1]).to(dtype).float()
    out = (x @ W.T).to(dtype)
    bank.apply(x.to(dtype), out, rows)

    f = factors.get(LAYER, proj)
    for name, task, batch_rows in requests:
        module = sets[name].module(LAYER, proj)
        xs = x[batch_rows]
        w = module.task_mixture[task] if module.task_mixture is not None else ability_weights(xs.mean(0), module.G, module.route_top_k)
        W_res = residual_weight(W, f.U, f.S, f.V, module.num_experts * module.expert_rank)
        expected = badit_forward(xs, W_res, module.A, module.B, w, module.expert_rank, module.scale)
        assert_near(out[batch_rows], expected, dtype)


@pytest.mark.parametrize("dtype", BANK_DTYPES, ids=str)
def test_lora_bank_matches_reference_and_clears(set_dirs, base: BaseModelInfo, factors: BaseFactors, dtype: torch.dtype) -> None:
    proj = "q_proj"
    sets = {"a": load(set_dirs, "lora-random", base)}
    bank = make_bank("lora", base, proj, factors, {"max_sets": 2, "max_rank": 32}, dtype)
    entries = fill(bank, sets, {"a": 1}, proj, factors)
    rows, requests = step_rows(entries, "lora", 2)
    W = base.read_weight(LAYER, proj)
    x = torch.randn(14, W.shape[1]).to(dtype).float()
    out = (x @ W.T).to(dtype)
    bank.apply(x.to(dtype), out, rows)
    module = sets["a"].module(LAYER, proj)
    for _, _, batch_rows in requests:
        assert_near(out[batch_rows], lora_forward(x[batch_rows], W, module.A, module.B, module.scaling), dtype)

    bank.clear(1)
    cleared = (x @ W.T).to(dtype)
    bank.apply(x.to(dtype), cleared, rows)
    assert_close(cleared, (x @ W.T).to(dtype))


def test_released_slot_reads_zero_and_gives_its_pages_back() -> None:
    bank = torch.randn(3, 1 << 24)  # 64 MiB per slot, every page touched
    before = bank.clone()
    rss = psutil.Process().memory_info().rss
    zero_and_release(bank[1])
    assert rss - psutil.Process().memory_info().rss > 48 << 20
    assert bool((bank[1] == 0).all())
    assert_close(bank[0], before[0]) and assert_close(bank[2], before[2])
    bank[1, 5] = 7.0  # the slot is writable again
    assert bank[1, 5].item() == 7.0
