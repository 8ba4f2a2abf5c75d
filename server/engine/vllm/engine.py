"""vLLM's public engine API, as orthoserve uses it: engines, sampling parameters, outputs, errors,
and the engine options orthoserve sets (compilation, CPU core binding)."""

from __future__ import annotations

import os

from vllm import LLM
from vllm.config import CompilationConfig
from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.exceptions import VLLMClientError, VLLMError, VLLMValidationError
from vllm.inputs import TokensPrompt
from vllm.logprobs import Logprob
from vllm.lora.request import LoRARequest
from vllm.outputs import CompletionOutput, RequestOutput
from vllm.platforms import current_platform
from vllm.sampling_params import RequestOutputKind, SamplingParams
from vllm.utils.async_utils import merge_async_iterators
from vllm.v1.engine.async_llm import AsyncLLM
from vllm.v1.engine.exceptions import EngineDeadError, EngineGenerateError
from vllm.v1.metrics.stats import RequestStateStats

__all__ = [
    "AsyncEngineArgs",
    "AsyncLLM",
    "CompletionOutput",
    "EngineDeadError",
    "EngineGenerateError",
    "IN_PROCESS_ENGINE_CORE_ENV",
    "LLM",
    "LoRARequest",
    "Logprob",
    "RequestOutput",
    "RequestOutputKind",
    "RequestStateStats",
    "SamplingParams",
    "TokensPrompt",
    "VLLMClientError",
    "VLLMError",
    "VLLMValidationError",
    "compilation_outside_graphs",
    "cpu_core_binding",
    "cpu_worker_thread_env",
    "is_cpu_platform",
    "merge_async_iterators",
]


# vLLM's own splitting ops when none are given (attention, and the KV-cache update it splits out).
_VLLM_SPLITTING_OPS = (*CompilationConfig._attention_ops, "vllm::unified_kv_cache_update", "vllm::unified_mla_kv_cache_update")


def compilation_outside_graphs(ops: list[str]) -> dict[str, object]:
    """vLLM compilation settings under which `ops` never run inside a captured CUDA graph: piecewise
    graphs only (a full graph would capture every op), split at `ops` as well as at vLLM's own
    splitting ops, so each call of `ops` runs eagerly between the captured pieces. CPU engines capture
    no graphs; the settings change nothing there."""
    return {"cudagraph_mode": "PIECEWISE", "splitting_ops": [*_VLLM_SPLITTING_OPS, *ops]}


def is_cpu_platform() -> bool:
    return current_platform.is_cpu()


# While set, `LLM` runs vLLM's engine core in the calling process (its in-process client) instead of
# spawning a process for it; the workers stay processes of their own under the "mp" executor.
IN_PROCESS_ENGINE_CORE_ENV = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}


def cpu_worker_thread_env(num_threads: int, tensor_parallel_size: int = 1, bind: str | None = None) -> dict[str, str]:
    """Environment giving each CPU engine worker `num_threads` OpenMP/torch threads.

    One worker runs unpinned: vLLM's default pins it to fixed cores, which makes several servers on one
    small machine fight over the same core. Tensor-parallel workers each need cores of their own
    (`VLLM_CPU_OMP_THREADS_BIND`, e.g. "0|1"): taken from the cores this process may use, unless
    `bind` gives them. Spawned engine processes inherit the environment: export it before the engine
    is created.
    """
    if bind is None:
        bind = "nobind" if tensor_parallel_size == 1 else cpu_core_binding(tensor_parallel_size, num_threads)
    return {"VLLM_CPU_OMP_THREADS_BIND": bind, "OMP_NUM_THREADS": str(num_threads)}


def cpu_core_binding(workers: int, threads_per_worker: int) -> str:
    """vLLM's per-worker core lists ("0|1", "0-3|4-7"), from the cores this process may run on."""
    cores = sorted(os.sched_getaffinity(0))
    needed = workers * threads_per_worker
    if len(cores) < needed:
        raise ValueError(f"{workers} tensor-parallel workers × {threads_per_worker} threads need {needed} cores; {len(cores)} are available")
    groups = [cores[i * threads_per_worker : (i + 1) * threads_per_worker] for i in range(workers)]
    return "|".join(",".join(str(core) for core in group) for group in groups)
