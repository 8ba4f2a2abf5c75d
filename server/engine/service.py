"""The engine service: runs vLLM's AsyncLLM in-process and opens every API request on it.

The OpenAI API itself is vLLM's serving layer (`server.engine.vllm.openai.build_openai_serving`), built on a
`RoutedEngineClient` over the engine. This service owns what stays orthoserve's: the engine's
arguments and lifetime, and `open_request`, which resolves a request's task tag into a `RequestScope`
(target, set-version lease, lifecycle record) before vLLM sees the request.
"""

from __future__ import annotations

import logging
import time
import uuid
from pathlib import Path

from server.engine.adapter_backend import request_routing
from server.startup import model_context_length
from server.engine.capacity import AdapterCapacity, capacity_from_settings
from server.engine.request_scope import RequestScope, RoutedEngineClient, current_tag, outcome_of
from server.engine.vllm import check_pinned_version
from server.engine.vllm import engine as vllm_engine
from server.engine.vllm import openai as vllm_openai
from server.errors import EngineUnavailable
from server.lifecycle import Endpoint, RequestLifecycle
from server.resolution import BaseModelResolver, TargetResolver
from server.settings import Settings, export_environment

logger = logging.getLogger(__name__)

GiB = 1 << 30


class EngineService:
    def __init__(self, settings: Settings, model_dir: Path, resolver: TargetResolver | None = None) -> None:
        self.settings = settings
        self.model_dir = model_dir
        self.served_model_name = settings.served_model_name or model_dir.name
        self.resolver: TargetResolver = resolver or BaseModelResolver(self.served_model_name)
        self.lifecycle = RequestLifecycle()
        self._engine: vllm_engine.AsyncLLM | None = None
        self._serving: vllm_openai.OpenAIServing | None = None
        self.capacity: AdapterCapacity = capacity_from_settings(settings)
        self.max_model_len = 0
        self.start_seconds: float | None = None

    # --- engine lifetime -------------------------------------------------------------------------

    def engine_args(self) -> vllm_engine.AsyncEngineArgs:
        settings = self.settings
        return vllm_engine.AsyncEngineArgs(
            model=str(self.model_dir),
            served_model_name=[self.served_model_name],
            dtype=settings.dtype,
            max_model_len=settings.max_model_len,
            kv_cache_memory_bytes=int(settings.kv_cache_gib * GiB),
            tensor_parallel_size=settings.tensor_parallel_size,
            pipeline_parallel_size=settings.pipeline_parallel_size,
            enforce_eager=settings.enforce_eager,
            # Stats on: vLLM then stamps each request's queue/prefill/decode times (request metrics).
            disable_log_stats=False,
            **self.capacity.engine_options(settings.max_model_len or model_context_length(self.model_dir)),
        )

    async def start(self) -> None:
        check_pinned_version()
        vllm_openai.verify_openai_serving()
        started = time.monotonic()
        if vllm_engine.is_cpu_platform():
            settings = self.settings
            threads = vllm_engine.cpu_worker_thread_env(settings.cpu_threads, settings.tensor_parallel_size, settings.cpu_threads_bind)
            export_environment(threads)
            if settings.tensor_parallel_size > 1 and settings.cpu_threads_bind is None:
                bind = threads["VLLM_CPU_OMP_THREADS_BIND"]
                logger.info("Tensor-parallel CPU workers bound to cores %s (set VLLM_CPU_OMP_THREADS_BIND to choose)", bind)
        self._engine = vllm_engine.AsyncLLM.from_engine_args(self.engine_args())
        self.max_model_len = self._engine.model_config.max_model_len
        client = RoutedEngineClient(self._engine)
        models = vllm_openai.TaggedServingModels(client, self.served_model_name, str(self.model_dir), current_tag)
        options = vllm_openai.ServingOptions(self.settings.tool_call_parser, self.settings.enable_auto_tool_choice)
        self._serving = vllm_openai.build_openai_serving(client, models, options)
        await self._warm_up()
        self.start_seconds = time.monotonic() - started
        logger.info("Engine ready in %.1f s: %s as `%s`", self.start_seconds, self.model_dir, self.served_model_name)

    async def _warm_up(self) -> None:
        """Run one token through the engine so the first client request does not pay for lazy setup."""
        params = vllm_engine.SamplingParams(max_tokens=1, output_kind=vllm_engine.RequestOutputKind.FINAL_ONLY)
        async for _ in self.engine.generate(vllm_engine.TokensPrompt(prompt_token_ids=[0]), params, "warmup"):
            pass

    def is_dead(self) -> bool:
        """True once the engine process has died (not when it was stopped on purpose)."""
        return self._engine is not None and self._engine.errored

    async def stop(self) -> None:
        if self._engine is not None:
            self._engine.shutdown()
            self._engine = None
            self._serving = None

    @property
    def engine(self) -> vllm_engine.AsyncLLM:
        if self._engine is None:
            raise EngineUnavailable("The engine is not running.")
        return self._engine

    @property
    def serving(self) -> vllm_openai.OpenAIServing:
        """vLLM's OpenAI serving classes on this engine."""
        if self._serving is None:
            raise EngineUnavailable("The engine is not running.")
        return self._serving

    async def check_health(self) -> None:
        try:
            await self.engine.check_health()
        except vllm_engine.EngineDeadError as exc:
            raise EngineUnavailable() from exc

    async def resident_bytes_per_rank(self) -> list[dict[str, int]]:
        """What each tensor-parallel rank's worker holds, in bytes: sets in slots, host copies, the
        method banks' capacity and the shared base factors."""
        try:
            return await self.engine.collective_rpc("orthoserve_resident_bytes")
        except vllm_engine.EngineDeadError as exc:
            raise EngineUnavailable() from exc

    # --- requests --------------------------------------------------------------------------------

    async def open_request(self, endpoint: Endpoint, model: str | None, task: str | None, stream: bool) -> RequestScope:
        """Resolve a request's tag and hold its target until the scope ends (waiting while its set is
        brought into an engine slot); a bad tag raises its domain error.

        A request without `model` is a base-model request, as in vLLM.
        """
        model = model or self.served_model_name
        record = self.lifecycle.arrive(f"{endpoint}-{uuid.uuid4().hex}", endpoint, model, stream)
        try:
            lease = await self.resolver.acquire(model, task)
        except BaseException as exc:
            self.lifecycle.finish(record, outcome_of(exc), exc)
            raise
        record.target = lease.target
        return RequestScope(model, lease, request_routing(lease.target), record, self.lifecycle)

    def check_model(self, model: str | None, task: str | None) -> None:
        """Raise the domain error of a tag that does not resolve (for requests that run no generation)."""
        self.resolver.resolve(model or self.served_model_name, task)
