"""The one seam to vLLM: every vLLM symbol orthoserve uses is imported here and nowhere else.

vLLM is pinned exactly (see pyproject.toml); `check_pinned_version` fails fast on any other version
because several of these names are internal interfaces.
"""

from __future__ import annotations

import vllm
from vllm import LLM
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

PINNED_VLLM_VERSION = "0.32.0"

__all__ = [
    "AsyncEngineArgs",
    "AsyncLLM",
    "CompletionOutput",
    "EngineDeadError",
    "EngineGenerateError",
    "LLM",
    "LoRARequest",
    "Logprob",
    "PINNED_VLLM_VERSION",
    "RequestOutput",
    "RequestOutputKind",
    "RequestStateStats",
    "SamplingParams",
    "TokensPrompt",
    "VLLMClientError",
    "VLLMError",
    "VLLMValidationError",
    "check_pinned_version",
    "cpu_worker_thread_env",
    "is_cpu_platform",
    "merge_async_iterators",
]


def check_pinned_version() -> None:
    if vllm.__version__ != PINNED_VLLM_VERSION:
        raise RuntimeError(
            f"orthoserve needs vLLM {PINNED_VLLM_VERSION} (it uses internal interfaces); found {vllm.__version__}"
        )


def is_cpu_platform() -> bool:
    return current_platform.is_cpu()


def cpu_worker_thread_env(num_threads: int) -> dict[str, str]:
    """Environment giving the CPU engine worker `num_threads` OpenMP/torch threads, unpinned.

    vLLM's default pins the worker to fixed cores, which makes several servers on one small machine
    fight over the same core. Spawned engine processes inherit the environment, so export it before
    the engine is created.
    """
    return {"VLLM_CPU_OMP_THREADS_BIND": "nobind", "OMP_NUM_THREADS": str(num_threads)}
