"""The vLLM internals the adapted layers hook into inside each worker: the linear-layer classes of
Llama-family models and their fields, the model runner's per-step input preparation and per-request
state, and the punica kernels. `verify_internals` checks them when a worker starts.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from vllm import _custom_ops
from vllm.distributed import tensor_model_parallel_all_reduce
from vllm.model_executor.layers.linear import (
    ColumnParallelLinear,
    LinearBase,
    MergedColumnParallelLinear,
    QKVParallelLinear,
    RowParallelLinear,
)
from vllm.config import VllmConfig
from vllm.sampling_params import SamplingParams
from vllm.v1.worker.gpu_input_batch import CachedRequestState, InputBatch
from vllm.v1.worker.cpu_model_runner import CPUModelRunner
from vllm.v1.worker.gpu_model_runner import GPUModelRunner

from adapters.serving.bank import ProjectionShape
from adapters.serving.grouped import Groups, SegmentedKernel, default_kernel
from server.engine.vllm import UnsupportedEngineLayout, check_pinned_version
from server.engine.worker.step_routing import RequestRoute

# Fused vLLM modules of a Llama-family decoder layer and the HF projections packed in their outputs,
# in output-column order. First match wins; the suffixes are disjoint.
FUSED_PROJECTIONS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("self_attn.qkv_proj", ("q_proj", "k_proj", "v_proj")),
    ("self_attn.o_proj", ("o_proj",)),
    ("mlp.gate_up_proj", ("gate_proj", "up_proj")),
    ("mlp.down_proj", ("down_proj",)),
)


def verify_internals() -> None:
    """Fail loudly when this vLLM is not the release the hooks below were written against."""
    check_pinned_version()
    expectations = {
        "GPUModelRunner._prepare_inputs(self, scheduler_output, num_scheduled_tokens)": list(
            inspect.signature(GPUModelRunner._prepare_inputs).parameters
        )[:3]
        == ["self", "scheduler_output", "num_scheduled_tokens"],
        "GPUModelRunner.execute_model": callable(getattr(GPUModelRunner, "execute_model", None)),
        "CPUModelRunner.load_model / GPUModelRunner.load_model": all(
            callable(getattr(cls, "load_model", None)) for cls in (CPUModelRunner, GPUModelRunner)
        ),
        "GPUModelRunner.max_num_tokens": "self.max_num_tokens" in inspect.getsource(GPUModelRunner.__init__),
        "VllmConfig.additional_config": "additional_config" in inspect.signature(VllmConfig).parameters,
        "CachedRequestState.sampling_params": "sampling_params" in {f.name for f in dataclasses.fields(CachedRequestState)},
        "InputBatch.req_ids / num_reqs": all(hasattr(InputBatch, name) for name in ("req_ids", "num_reqs")),
        "SamplingParams.extra_args": "extra_args" in inspect.signature(SamplingParams).parameters,
        "LinearBase(skip_bias_add, return_bias)": {"skip_bias_add", "return_bias"}
        <= set(inspect.signature(LinearBase.__init__).parameters),
        "QKVParallelLinear / MergedColumnParallelLinear set output_sizes": all(
            "self.output_sizes" in inspect.getsource(cls.__init__) for cls in (QKVParallelLinear, MergedColumnParallelLinear)
        ),
    }
    moved = [name for name, holds in expectations.items() if not holds]
    if moved:
        raise UnsupportedEngineLayout(f"vLLM internals orthoserve hooks into have moved: {', '.join(moved)}")


@dataclass(frozen=True)
class AdaptableLinear:
    layer_index: int
    parent: nn.Module
    attribute: str
    layer: LinearBase
    projections: tuple[tuple[str, ProjectionShape], ...]  # (HF projection, this rank's part), in output order

    def replace(self, module: nn.Module) -> None:
        setattr(self.parent, self.attribute, module)


def adaptable_linears(model: nn.Module) -> Iterator[AdaptableLinear]:
    """The fused linears of every decoder layer, with the HF projections they pack."""
    for name, module in model.named_modules():
        parts = name.split(".")
        if "layers" not in parts or not isinstance(module, LinearBase):
            continue
        layer_index = int(parts[parts.index("layers") + 1])
        suffix = ".".join(parts[parts.index("layers") + 2 :])
        for fused, projections in FUSED_PROJECTIONS:
            if suffix != fused:
                continue
            if getattr(module, "bias", None) is not None:
                raise UnsupportedEngineLayout(f"{name} has a bias; adapter sets serve bias-free Llama-family layers")
            parent = model.get_submodule(".".join(parts[:-1]))
            yield AdaptableLinear(layer_index, parent, parts[-1], module, tuple(zip(projections, _rank_parts(module))))


def _rank_parts(layer: LinearBase) -> list[ProjectionShape]:
    """This rank's part of each projection a (possibly tensor-parallel) vLLM linear packs."""
    tp_size, tp_rank = getattr(layer, "tp_size", 1), getattr(layer, "tp_rank", 0)
    if isinstance(layer, RowParallelLinear):
        local_in = layer.input_size_per_partition
        reduce = tensor_model_parallel_all_reduce if tp_size > 1 else None
        return [ProjectionShape(local_in, layer.output_size, layer.input_size, layer.output_size, tp_rank * local_in, 0, reduce)]
    if not isinstance(layer, ColumnParallelLinear):
        raise UnsupportedEngineLayout(f"{type(layer).__name__} is neither column- nor row-parallel")
    full_sizes = list(getattr(layer, "output_sizes", [layer.output_size]))
    parts = []
    for index, full in enumerate(full_sizes):
        local = full // tp_size
        # QKV layers with fewer KV heads than ranks replicate each KV head on several ranks.
        replicas = getattr(layer, "num_kv_head_replicas", 1) if isinstance(layer, QKVParallelLinear) and index > 0 else 1
        parts.append(ProjectionShape(layer.input_size, local, layer.input_size, full, 0, (tp_rank // replicas) * local))
    return parts


def dense_product(matrix: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """`x ↦ x @ matrix` through the GEMM vLLM uses for its own CPU linears (oneDNN, weights prepacked),
    which is much faster than torch.matmul at decode-sized batches; torch.matmul elsewhere."""
    if matrix.device.type != "cpu" or not _custom_ops._supports_onednn:
        return functools.partial(torch.matmul, other=matrix)
    try:
        handler = _custom_ops.create_onednn_mm(matrix, 32)
    except RuntimeError:  # oneDNN has no kernel for this dtype on this CPU (bf16 without AVX-512)
        return functools.partial(torch.matmul, other=matrix)
    return functools.partial(_custom_ops.onednn_mm, handler, bias=None)


def segmented_kernel(device: torch.device, dtype: torch.dtype) -> SegmentedKernel:
    """The segmented-product kernel of banks on `device` in `dtype`: vLLM's punica LoRA kernels for
    fp16 and bf16 on CUDA (they take no fp32 weights), torch's elsewhere."""
    if device.type == "cuda" and dtype in (torch.float16, torch.bfloat16):
        return PUNICA
    return default_kernel(device, dtype)


def punica_product(x: torch.Tensor, storage: torch.Tensor, groups: Groups) -> torch.Tensor:
    """`x[rows of slot s] @ W[s]` with each W[s] stored (b, a), through vLLM's punica kernels: `lora_shrink`
    when the product narrows (b ≤ a), `lora_expand` when it widens. Rows are already sorted by slot,
    so the kernels' token order is the identity; group sizes and the launch grid come from the host."""
    from vllm.lora.ops.triton_ops import lora_expand, lora_shrink  # Triton: imported on GPU engines only

    n, b = x.shape[0], storage.shape[1]
    x = x.contiguous()
    zero = groups.ends.new_zeros(1)
    starts = torch.cat([zero, groups.ends])  # (g + 1,)
    counts = starts.diff()  # (g,)
    order = torch.arange(n, device=x.device, dtype=torch.int32)
    no_rows = torch.zeros(1, dtype=torch.bool)  # host tensors, as the kernels expect
    active = torch.tensor([groups.host_ends.shape[0]])
    metadata = (order, order, counts, starts, groups.slot_ids, no_rows, active)
    if b <= x.shape[1]:
        out = x.new_empty(1, n, b)
        lora_shrink(x, [storage], out, *metadata, 1.0)
        return out[0]
    out = x.new_empty(n, b)
    lora_expand(x.unsqueeze(0), [storage], out, *metadata, offset_start=0, add_inputs=False)
    return out


PUNICA = SegmentedKernel("vLLM punica (lora_shrink / lora_expand)", punica_product, transposed=True)


def base_forward(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    result = layer(x)
    return result[0] if isinstance(result, tuple) else result


def pack_output(layer: nn.Module, y: torch.Tensor) -> object:
    """What the base layer returns for output `y` (bias-free layers: `(y, None)` when asked for a bias)."""
    return (y, None) if layer.return_bias else y


def after_model_load(install: Callable[[object], None]) -> None:
    """Call `install(model_runner)` right after every model runner loads its model, before vLLM
    profiles, compiles or captures it. Idempotent (general plugins may be loaded several times)."""
    for cls in (CPUModelRunner, GPUModelRunner):
        load_model = cls.__dict__["load_model"]
        if getattr(load_model, "_orthoserve_hooked", False):
            continue

        @functools.wraps(load_model)
        def load_then_install(self, *args, _load_model=load_model, **kwargs):
            _load_model(self, *args, **kwargs)
            install(self)

        load_then_install._orthoserve_hooked = True
        setattr(cls, "load_model", load_then_install)


def runner_extra_config(model_runner: object) -> dict:
    """`additional_config` the engine was created with (how orthoserve's capacity reaches the workers)."""
    config = model_runner.vllm_config.additional_config
    return config if isinstance(config, dict) else {}


def runner_max_tokens(model_runner: object) -> int:
    """Most tokens one step can hold."""
    return model_runner.max_num_tokens


def runner_device(model_runner: object) -> torch.device:
    return torch.device(model_runner.device)


def install_step_hook(
    model_runner: object, on_step: Callable[[list[RequestRoute | None], np.ndarray], None], on_step_end: Callable[[], None]
) -> None:
    """Call `on_step(routes, num_scheduled_tokens)` once the runner has laid out a step's batch, and
    `on_step_end()` after the step, so dummy/profiling runs outside a step always see no routing."""
    prepare_inputs = model_runner._prepare_inputs
    execute_model = model_runner.execute_model

    @functools.wraps(prepare_inputs)
    def prepare_with_routing(scheduler_output, num_scheduled_tokens: np.ndarray, *args, **kwargs):
        result = prepare_inputs(scheduler_output, num_scheduled_tokens, *args, **kwargs)
        batch = model_runner.input_batch
        routes = [
            RequestRoute.from_extra_args(model_runner.requests[req_id].sampling_params.extra_args)
            for req_id in batch.req_ids[: batch.num_reqs]
        ]
        on_step(routes, num_scheduled_tokens)
        return result

    @functools.wraps(execute_model)
    def execute_with_routing(*args, **kwargs):
        try:
            return execute_model(*args, **kwargs)
        finally:
            on_step_end()

    model_runner._prepare_inputs = prepare_with_routing
    model_runner.execute_model = execute_with_routing


def worker_model_runner(worker: object) -> object:
    return worker.model_runner


def runner_model(model_runner: object) -> nn.Module:
    return model_runner.get_model()


def runner_model_dtype(model_runner: object) -> torch.dtype:
    return model_runner.model_config.dtype


def runner_compilation(model_runner: object) -> dict[str, object]:
    """How this worker's model was compiled: vLLM's compilation mode, CUDA-graph mode and splitting
    ops as the worker resolved them, and vLLM's compilation counters in this process."""
    from vllm.compilation.counter import compilation_counter

    config = model_runner.vllm_config.compilation_config
    return {
        "mode": config.mode.name,
        "cudagraph_mode": config.cudagraph_mode.name,
        "splitting_ops": list(config.splitting_ops or []),
        "counters": dataclasses.asdict(compilation_counter),
    }
