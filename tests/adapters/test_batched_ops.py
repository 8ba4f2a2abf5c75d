"""The grouped serving operators equal the per-request reference math, row by row.

Rows of several sets, tasks and request segments are interleaved in one batch, as the engine sees them.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.testing import assert_close

from adapters.badit.math import ability_weights, badit_forward, residual_weight
from adapters.base_model import BaseModelInfo
from adapters.batched.convert import serving_slot
from adapters.batched.ops import BaditGroup, MooreGroup, badit_delta, lora_delta, moore_output, segment_mean
from adapters.batched.weights import ServingFactors
from adapters.format import AdapterSet, load_adapter_set
from adapters.lora.math import lora_forward
from adapters.moore.math import moore_forward
from adapters.svd_cache import BaseFactors

LAYER = 1


def serving_factors(factors: BaseFactors, proj: str) -> ServingFactors:
    f = factors.get(LAYER, proj)
    return ServingFactors.build(f.U, f.S, f.V)


def load(set_dirs: dict[str, Path], name: str, base: BaseModelInfo) -> AdapterSet:
    return load_adapter_set(set_dirs[name], base)


def rows(*indices: int) -> torch.Tensor:
    return torch.tensor(indices, dtype=torch.long)


@pytest.mark.parametrize("proj", ["q_proj", "k_proj", "down_proj"])
def test_moore_output_matches_reference_per_row(set_dirs, base: BaseModelInfo, factors: BaseFactors, proj: str) -> None:
    sets = {name: load(set_dirs, name, base) for name in ("moore-random", "moore-paper")}
    slots = {name: serving_slot(s, factors.folder, torch.float32) for name, s in sets.items()}
    in_features = base.shape(proj)[1]
    x = torch.randn(9, in_features)
    groups = [
        MooreGroup(slots["moore-random"].projections[(LAYER, proj)], rows(0, 2, 3, 7), rows(0, 1, 1, 0)),
        MooreGroup(slots["moore-paper"].projections[(LAYER, proj)], rows(1, 4, 5, 6, 8), rows(0, 1, 0, 1, 1)),
    ]
    served = moore_output(x, serving_factors(factors, proj), groups)

    f = factors.get(LAYER, proj)
    for name, group in zip(sets, groups):
        module = sets[name].module(LAYER, proj)
        for row, task in zip(group.rows.tolist(), group.task_index.tolist()):
            expected = moore_forward(
                x[row : row + 1], f.U, f.S, f.V, module.Y, module.G, module.G_up, module.task_vectors()[task]
            )
            assert_close(served[row : row + 1], expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["badit-random", "badit-tasks"])
def test_badit_delta_matches_reference_per_segment(set_dirs, base: BaseModelInfo, factors: BaseFactors, name: str) -> None:
    proj = "gate_proj"
    adapter_set = load(set_dirs, name, base)
    weights = serving_slot(adapter_set, factors.folder, torch.float32).projections[(LAYER, proj)]
    module = adapter_set.module(LAYER, proj)
    W = base.read_weight(LAYER, proj)
    # Two requests of this set: a 4-token prefill and a 1-token decode step.
    x = torch.randn(5, W.shape[1])
    group = BaditGroup(weights, rows(1, 1, 1, 1, 0), rows(0, 0, 0, 0, 1), 2)
    out = x @ W.T + badit_delta(x, group)

    f = factors.get(LAYER, proj)
    k = module.num_experts * module.expert_rank
    W_res = residual_weight(W, f.U, f.S, f.V, k)
    for segment, task in ((rows(0, 1, 2, 3), 1), (rows(4), 0)):
        xs = x[segment]
        if module.task_mixture is not None:
            w = module.task_mixture[task]
        else:
            w = ability_weights(xs.mean(0), module.G)
        expected = badit_forward(xs, W_res, module.A, module.B, w, module.expert_rank, module.scale)
        assert_close(out[segment], expected, rtol=1e-4, atol=1e-4)


def test_lora_delta_matches_reference(set_dirs, base: BaseModelInfo, factors: BaseFactors) -> None:
    adapter_set = load(set_dirs, "lora-random", base)
    module = adapter_set.module(LAYER, "q_proj")
    weights = serving_slot(adapter_set, None, torch.float32).projections[(LAYER, "q_proj")]
    W = base.read_weight(LAYER, "q_proj")
    x = torch.randn(6, W.shape[1])
    out = x @ W.T + lora_delta(x, weights)
    assert_close(out, lora_forward(x, W, module.A, module.B, module.scaling), rtol=1e-5, atol=1e-5)


def test_segment_mean_averages_each_segment_alone() -> None:
    x = torch.arange(12, dtype=torch.float32).reshape(6, 2)
    means = segment_mean(x, rows(0, 0, 1, 1, 1, 2), 3)
    assert_close(means, torch.stack([x[:2].mean(0), x[2:5].mean(0), x[5]]))


def test_moore_all_rows_fast_path_equals_gathered_rows(set_dirs, base: BaseModelInfo, factors: BaseFactors) -> None:
    weights = serving_slot(load(set_dirs, "moore-random", base), factors.folder, torch.float32).projections[(LAYER, "q_proj")]
    x = torch.randn(5, base.shape("q_proj")[1])
    tasks = rows(0, 1, 0, 1, 1)
    every_row = moore_output(x, serving_factors(factors, "q_proj"), [MooreGroup(weights, None, tasks)])
    gathered = moore_output(x, serving_factors(factors, "q_proj"), [MooreGroup(weights, torch.arange(5), tasks)])
    assert_close(every_row, gathered)
