"""A synchronous, in-process engine with adapter serving, for benchmarks and exactness tests.

It runs the same engine configuration and worker extension as the server, without HTTP: every
request handed to `generate` in one call is scheduled together, so a call is one mixed batch. vLLM's
engine core (the scheduler) runs in the calling process; the workers, as in the server, run in
processes of their own.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

from adapters.base_model import describe_base_model
from adapters.registry import registered_methods
from router.ports import Arrival
from router.target import BASE_TARGET, RouteTarget
from server.engine.adapter_backend import FactorsFolder, MoveCall, request_routing
from server.engine.capacity import AdapterCapacity
from server.engine.vllm import check_pinned_version
from server.engine.vllm import engine as vllm_engine
from server.settings import export_environment, scoped_environment

GiB = 1 << 30


@dataclass(frozen=True)
class OfflineRequest:
    prompt_token_ids: list[int]
    target: RouteTarget = BASE_TARGET
    max_tokens: int = 16
    stock_lora: vllm_engine.LoRARequest | None = None  # vLLM's own LoRA path, for comparison runs


@dataclass(frozen=True)
class OfflineResult:
    token_ids: list[int]
    logprobs: list[float]  # of each generated token


class OfflineEngine:
    def __init__(
        self,
        model_dir: Path,
        svd_cache_dir: Path,
        *,
        dtype: str = "auto",
        max_model_len: int = 512,
        kv_cache_gib: float = 0.5,
        stock_lora_rank: int | None = None,
        max_stock_loras: int = 8,
        capacity: AdapterCapacity | None = None,
        enforce_eager: bool = True,
        tensor_parallel_size: int = 1,
        pipeline_parallel_size: int = 1,
    ) -> None:
        """`capacity`: adapter capacity of the engine (default: every method with its default limits)."""
        check_pinned_version()
        if vllm_engine.is_cpu_platform():
            export_environment(vllm_engine.cpu_worker_thread_env(1, tensor_parallel_size * pipeline_parallel_size))
        self.base = describe_base_model(model_dir)
        self.dtype = dtype
        capacity = capacity or AdapterCapacity.build({kind: {} for kind in registered_methods()})
        self._factors = FactorsFolder(self.base, svd_cache_dir)
        stock_lora = (
            {"enable_lora": True, "max_lora_rank": stock_lora_rank, "max_loras": max_stock_loras}
            if stock_lora_rank
            else {}
        )
        # The engine core runs in this process: one interpreter fewer to start (vLLM's imports take
        # 10 to 20 s of CPU on a small machine). The workers are processes of their own under the "mp"
        # executor, as in the server, so requests and their routing cross the same scheduler-to-worker
        # boundary the server's do.
        with scoped_environment(vllm_engine.IN_PROCESS_ENGINE_CORE_ENV):
            self.llm = vllm_engine.LLM(
                model=str(model_dir),
                dtype=dtype,
                max_model_len=max_model_len,
                kv_cache_memory_bytes=int(kv_cache_gib * GiB),
                enforce_eager=enforce_eager,
                tensor_parallel_size=tensor_parallel_size,
                pipeline_parallel_size=pipeline_parallel_size,
                seed=0,
                distributed_executor_backend="mp",
                **capacity.engine_options(max_model_len),
                **stock_lora,
            )

    def load(self, slot: int, set_dir: Path) -> int:
        """Bytes the set takes on the most loaded rank; the same worker call as the server's swap-ins."""
        call = MoveCall.prepare(self._factors, [], [Arrival(slot, set_dir, from_host=False)])
        outcome, failed = call.outcome(self.llm.collective_rpc("orthoserve_move", args=call.args))
        for failed_slot in failed:
            self.unload(failed_slot)
        result = outcome.arrived[slot]
        if isinstance(result, Exception):
            raise result
        return result

    def unload(self, slot: int) -> int:
        return max(self.llm.collective_rpc("orthoserve_unload_slot", args=(slot,)))

    def resident_bytes(self) -> dict[str, int]:
        return self.llm.collective_rpc("orthoserve_resident_bytes")[0]

    def placement(self) -> dict[str, str]:
        """The first worker's bank device, dtype and kernel, and the model's dtype."""
        return self.llm.collective_rpc("orthoserve_placement")[0]

    def compilation(self) -> dict[str, object]:
        """How vLLM compiled the first worker's model (see `server.engine.vllm.worker.runner_compilation`)."""
        return self.llm.collective_rpc("orthoserve_compilation")[0]

    def generate(self, requests: list[OfflineRequest]) -> list[OfflineResult]:
        prompts, params = [], []
        for request in requests:
            sampling = vllm_engine.SamplingParams(max_tokens=request.max_tokens, temperature=0.0, logprobs=0, ignore_eos=True)
            prompts.append(request_routing(request.target).attach({"prompt_token_ids": request.prompt_token_ids}, sampling))
            params.append(sampling)
        outputs = self.llm.generate(
            prompts, params, lora_request=[r.stock_lora for r in requests], use_tqdm=False
        )
        results = []
        for output in outputs:
            completion = output.outputs[0]
            logprobs = [entry[token].logprob for token, entry in zip(completion.token_ids, completion.logprobs)]
            results.append(OfflineResult(list(completion.token_ids), logprobs))
        return results

    def shutdown(self) -> None:
        self.llm.llm_engine.engine_core.shutdown()

    def shutdown_in_background(self) -> threading.Thread:
        """Start `shutdown` and return at once. The engine's processes take seconds to exit (the last
        garbage collection of interpreters holding vLLM), time the caller can spend on the next engine;
        join the thread before the program ends."""
        stopping = threading.Thread(target=self.shutdown, name="offline-engine-shutdown")
        stopping.start()
        return stopping
