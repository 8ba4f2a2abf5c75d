"""No adapter request is served by a captured graph that ignored its adapter.

An engine with adapter capacity compiles with `orthoserve::adapted_linear` among vLLM's splitting ops
and piecewise CUDA graphs only (`AdapterCapacity.engine_options`). This file checks that through
vLLM's own compilation config and graph splitter, then replays it: the pieces vLLM would capture are
recorded once, under the warm-up's routing (no adapter rows), by tracing through every op, ours
included, as CUDA-graph capture records every kernel launched; the pieces vLLM runs eagerly run live.
Under a later step's routing the replay must equal eager. With vLLM's default splitting ops the same
emulation serves the base model to adapter rows, so the check can fail.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from worker_support import EmulatedWorker, worker_on
from torch.fx.experimental.proxy_tensor import make_fx
from vllm.compilation.backends import split_graph
from vllm.config import CompilationConfig, CompilationMode, CUDAGraphMode

from adapters.serving.grouped import TORCH_GROUPED_MM
from server.engine.capacity import AdapterCapacity
from server.engine.worker.adapted_linear import ADAPTED_LINEAR_OP, _LAYERS
from server.engine.worker.step_routing import RequestRoute


CPU = torch.device("cpu")
SETS = {1: "moore-random", 2: "badit-random", 3: "lora-random"}
CAPACITIES = {"moore": {"max_sets": 2}, "badit": {"max_sets": 2}, "lora": {"max_sets": 2}}
STEPS = {
    "moore": [(1, 1, 5), (None, 0, 3)],
    "badit": [(None, 0, 2), (2, 0, 6)],
    "lora": [(3, 0, 8)],
    "mixed": [(1, 0, 2), (None, 0, 1), (2, 0, 3), (3, 0, 1), (1, 1, 1)],
}
NUM_TOKENS = 8  # every step above schedules 8 tokens: one captured batch size


def engine_splitting_ops() -> list[str]:
    """The splitting ops an engine with adapter capacity compiles with, as vLLM resolves them."""
    options = AdapterCapacity.build({kind: {} for kind in CAPACITIES}).engine_options(max_model_len=256)
    config = CompilationConfig(mode=CompilationMode.VLLM_COMPILE, **options["compilation_config"])
    config.set_splitting_ops_for_v1(all2all_backend="allgather_reducescatter")
    assert config.cudagraph_mode == CUDAGraphMode.PIECEWISE and not config.cudagraph_mode.has_full_cudagraphs()
    return config.splitting_ops


def vllm_default_splitting_ops() -> list[str]:
    config = CompilationConfig(mode=CompilationMode.VLLM_COMPILE)
    config.set_splitting_ops_for_v1(all2all_backend="allgather_reducescatter")
    return config.splitting_ops


class DecoderSlice(nn.Module):
    """The adapted projections of one decoder layer with model code between them."""

    def __init__(self, worker: EmulatedWorker) -> None:
        super().__init__()
        self.qkv, self.o, self.gate_up = worker.layers

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.o(x) + x
        g = self.gate_up(torch.nn.functional.silu(h))
        return torch.cat([self.qkv(h), g * 0.5], dim=1)


# Capture records what the op launches under the routing of the moment, not the op itself.
_RECORD_THROUGH_ADAPTER_OP = {torch.ops.orthoserve.adapted_linear.default: lambda x, layer_id: _LAYERS[layer_id].compute(x)}


class CapturedPiece(nn.Module):
    """A piece vLLM captures as a CUDA graph: recorded on its first call, replayed as recorded after."""

    def __init__(self, piece: torch.fx.GraphModule) -> None:
        super().__init__()
        self.piece = piece
        self.replay: torch.fx.GraphModule | None = None

    def forward(self, *args: torch.Tensor):
        if self.replay is None:
            self.replay = make_fx(self.piece, decomposition_table=_RECORD_THROUGH_ADAPTER_OP)(*args)
        return self.replay(*args)


def adapter_ops(graph: torch.fx.GraphModule) -> int:
    return sum(1 for node in graph.graph.nodes if node.op == "call_function" and str(node.target).startswith("orthoserve."))


def piecewise(model: nn.Module, x: torch.Tensor, splitting_ops: list[str]) -> tuple[torch.fx.GraphModule, list]:
    """The model split by vLLM's splitter, each piece vLLM would capture wrapped in `CapturedPiece`."""
    split, items = split_graph(make_fx(model)(x), splitting_ops)
    for item in items:
        if not item.is_splitting_graph:
            setattr(split, item.submod_name, CapturedPiece(item.graph))
    return split, items


def step(worker: EmulatedWorker, batch) -> None:
    routes = [RequestRoute(slot, task) if slot is not None else None for slot, task, _ in batch]
    worker.adapters.begin_step(routes, np.array([n for _, _, n in batch]))


@pytest.fixture(scope="module")
def worker(base, set_dirs, factors_dir) -> EmulatedWorker:
    worker = worker_on(CPU, torch.float32, base, TORCH_GROUPED_MM, CAPACITIES)
    for slot, name in SETS.items():
        worker.adapters.load(slot, set_dirs[name], factors_dir)
    return worker


def test_adapter_op_is_never_inside_a_captured_piece(worker: EmulatedWorker) -> None:
    model = DecoderSlice(worker)
    x = torch.randn(NUM_TOKENS, worker.in_features)
    _, items = split_graph(make_fx(model)(x), engine_splitting_ops())
    assert all(adapter_ops(item.graph) == 0 for item in items if not item.is_splitting_graph)
    assert sum(adapter_ops(item.graph) for item in items if item.is_splitting_graph) == 3

    _, default_items = split_graph(make_fx(model)(x), vllm_default_splitting_ops())
    assert sum(adapter_ops(item.graph) for item in default_items if not item.is_splitting_graph) == 3


@pytest.mark.parametrize("batch", STEPS, ids=str)
def test_replayed_pieces_serve_the_step_routing(worker: EmulatedWorker, batch: str) -> None:
    model = DecoderSlice(worker)
    x = torch.randn(NUM_TOKENS, worker.in_features)
    worker.adapters.end_step()  # warm-up and capture run without routing
    base_output = model(x)
    captured, _ = piecewise(model, x, engine_splitting_ops())
    captured(x)
    uncovered, _ = piecewise(model, x, vllm_default_splitting_ops())
    uncovered(x)

    step(worker, STEPS[batch])
    try:
        eager = model(x)
        replayed = captured(x)
        replayed_without_split = uncovered(x)
    finally:
        worker.adapters.end_step()
    assert not torch.equal(eager, base_output)  # the step's adapters change the output
    torch.testing.assert_close(replayed, eager, rtol=0, atol=0)
    # The emulation can fail: with the adapter op captured, the replay is the warm-up's base model.
    torch.testing.assert_close(replayed_without_split, base_output, rtol=0, atol=0)
