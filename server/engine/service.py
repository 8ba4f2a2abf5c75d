"""The engine service: runs vLLM's AsyncLLM in-process and turns API requests into engine requests.

Tokenization, the chat template, context-length checks and the one SamplingParams builder live here;
handlers only call `prepare_*`, `generate` and `open_stream`. Every request goes through
`RequestLifecycle` so observers see its arrival, first token and finish.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from transformers import AutoTokenizer, PreTrainedTokenizerBase

from router.resident import Lease
from router.target import RouteTarget
from server.engine import vllm_compat as vc
from server.engine.adapter_backend import EngineRouting, model_context_length, request_routing
from server.engine.capacity import AdapterCapacity, capacity_from_settings
from server.errors import (
    ContextLengthExceeded,
    EngineUnavailable,
    InvalidRequest,
    is_client_error,
)
from server.lifecycle import Outcome, RequestLifecycle, RequestRecord
from server.protocol import ChatCompletionRequest, CompletionRequest, SamplingFields, Usage
from server.resolution import BaseModelResolver, TargetResolver
from server.settings import Settings, export_environment

logger = logging.getLogger(__name__)

GiB = 1 << 30


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token with its logprob and the top alternatives (most likely first)."""

    token: str
    logprob: float
    top: list[tuple[str, float]]


@dataclass
class ChoiceDelta:
    """New output of one choice: text, tokens and logprobs since the previous delta."""

    index: int
    text: str
    num_tokens: int
    logprobs: list[TokenLogprob] | None
    finish_reason: str | None


@dataclass
class GenerationJob:
    """A validated request, resolved and tokenized, ready for the engine."""

    request_id: str
    model: str
    target: RouteTarget
    routing: EngineRouting  # how the engine routes and cache-isolates this target
    prompts: list[list[int]]
    params: vc.SamplingParams
    record: RequestRecord
    lease: Lease  # holds the target's adapter-set version until the request ends
    headers: dict[str, str] = field(default_factory=dict)
    completion_tokens: int = 0

    @property
    def usage(self) -> Usage:
        prompt_tokens = sum(len(prompt) for prompt in self.prompts)
        return Usage(
            prompt_tokens=prompt_tokens,
            completion_tokens=self.completion_tokens,
            total_tokens=prompt_tokens + self.completion_tokens,
        )


class EngineService:
    def __init__(self, settings: Settings, model_dir: Path, resolver: TargetResolver | None = None) -> None:
        self.settings = settings
        self.model_dir = model_dir
        self.served_model_name = settings.served_model_name or model_dir.name
        self.resolver: TargetResolver = resolver or BaseModelResolver(self.served_model_name)
        self.lifecycle = RequestLifecycle()
        self._engine: vc.AsyncLLM | None = None
        self._tokenizer: PreTrainedTokenizerBase | None = None
        self.capacity: AdapterCapacity = capacity_from_settings(settings)
        self.max_model_len = 0
        self.start_seconds: float | None = None

    # --- engine lifetime -------------------------------------------------------------------------

    def engine_args(self) -> vc.AsyncEngineArgs:
        settings = self.settings
        return vc.AsyncEngineArgs(
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
        vc.check_pinned_version()
        started = time.monotonic()
        if vc.is_cpu_platform():
            settings = self.settings
            threads = vc.cpu_worker_thread_env(settings.cpu_threads, settings.tensor_parallel_size, settings.cpu_threads_bind)
            export_environment(threads)
            if settings.tensor_parallel_size > 1 and settings.cpu_threads_bind is None:
                logger.info("Tensor-parallel CPU workers bound to cores %s (set VLLM_CPU_OMP_THREADS_BIND to choose)", threads["VLLM_CPU_OMP_THREADS_BIND"])
        self._tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        self._engine = vc.AsyncLLM.from_engine_args(self.engine_args())
        self.max_model_len = self._engine.model_config.max_model_len
        await self._warm_up()
        self.start_seconds = time.monotonic() - started
        logger.info("Engine ready in %.1f s: %s as `%s`", self.start_seconds, self.model_dir, self.served_model_name)

    async def _warm_up(self) -> None:
        """Run one token through the engine so the first client request does not pay for lazy setup."""
        token = self.tokenizer.eos_token_id or 0
        params = vc.SamplingParams(max_tokens=1, output_kind=vc.RequestOutputKind.FINAL_ONLY)
        async for _ in self.engine.generate(vc.TokensPrompt(prompt_token_ids=[token]), params, "warmup"):
            pass

    async def stop(self) -> None:
        if self._engine is not None:
            self._engine.shutdown()
            self._engine = None

    @property
    def engine(self) -> vc.AsyncLLM:
        if self._engine is None:
            raise EngineUnavailable("The engine is not running.")
        return self._engine

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        if self._tokenizer is None:
            raise EngineUnavailable("The engine is not running.")
        return self._tokenizer

    async def check_health(self) -> None:
        try:
            await self.engine.check_health()
        except vc.EngineDeadError as exc:
            raise EngineUnavailable("The engine has stopped.") from exc

    # --- request preparation ---------------------------------------------------------------------

    def prepare_completion(self, request: CompletionRequest) -> GenerationJob:
        record = self.lifecycle.arrive(_new_id("cmpl"), "completions", request.model, request.stream)
        with self._finishing_on_error(record):
            lease = self.resolver.acquire(request.model, request.task)
            with lease.released_on_error():
                prompts = [self._encode_completion_prompt(prompt) for prompt in request.prompts]
                default_limit = "max_tokens" not in request.model_fields_set
                return self._job(record, request, lease, prompts, request.max_tokens, request.logprobs, default_limit)

    def prepare_chat(self, request: ChatCompletionRequest) -> GenerationJob:
        record = self.lifecycle.arrive(_new_id("chatcmpl"), "chat", request.model, request.stream)
        with self._finishing_on_error(record):
            lease = self.resolver.acquire(request.model, request.task)
            with lease.released_on_error():
                messages = [{"role": message.role, "content": message.text} for message in request.messages]
                text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
                prompt = self.tokenizer.encode(text, add_special_tokens=False)
                limit = request.output_limit
                return self._job(record, request, lease, [prompt], limit, request.logprobs_count, limit is None)

    def _encode_completion_prompt(self, prompt: str | list[int]) -> list[int]:
        if isinstance(prompt, str):
            return self.tokenizer.encode(prompt)
        vocab_size = len(self.tokenizer)
        if max(prompt) >= vocab_size:
            raise InvalidRequest(f"Token ids must be below the vocabulary size {vocab_size}.", param="prompt")
        return prompt

    def _job(
        self,
        record: RequestRecord,
        request: SamplingFields,
        lease: Lease,
        prompts: list[list[int]],
        max_tokens: int | None,
        logprobs: int | None,
        limit_is_default: bool,
    ) -> GenerationJob:
        target = lease.target
        record.target = target
        record.prompt_tokens = sum(len(prompt) for prompt in prompts)
        room = self.max_model_len - max(len(prompt) for prompt in prompts)
        if room <= 0:
            raise ContextLengthExceeded(
                f"This model's maximum context length is {self.max_model_len} tokens, "
                f"but the prompt has {self.max_model_len - room} tokens.",
                param="messages" if record.endpoint == "chat" else "prompt",
            )
        if max_tokens is None or limit_is_default:
            max_tokens = min(max_tokens or room, room)
        elif max_tokens > room:
            raise ContextLengthExceeded(
                f"This model's maximum context length is {self.max_model_len} tokens; the prompt has "
                f"{self.max_model_len - room} tokens, leaving room for {room} tokens, not max_tokens={max_tokens}.",
                param="max_tokens",
            )
        routing = request_routing(target)
        params = self.build_sampling_params(request, routing, max_tokens=max_tokens, logprobs=logprobs)
        headers = {"x-orthoserve-adapter-set": target.version_header} if target.version_header else {}
        return GenerationJob(
            request_id=record.request_id,
            model=request.model,
            target=target,
            routing=routing,
            prompts=prompts,
            params=params,
            record=record,
            lease=lease,
            headers=headers,
        )

    def build_sampling_params(
        self, request: SamplingFields, routing: EngineRouting, *, max_tokens: int, logprobs: int | None
    ) -> vc.SamplingParams:
        """The only place engine sampling parameters are made; `routing` carries the request's target."""
        try:
            return vc.SamplingParams(
                n=request.n,
                max_tokens=max_tokens,
                temperature=request.temperature,
                top_p=request.top_p,
                stop=request.stop_sequences or None,
                seed=request.seed,
                presence_penalty=request.presence_penalty,
                frequency_penalty=request.frequency_penalty,
                logprobs=logprobs,
                output_kind=vc.RequestOutputKind.DELTA,
                **routing.sampling_fields(),
            )
        except vc.VLLMClientError as exc:
            raise InvalidRequest(str(exc), param=getattr(exc, "parameter", None)) from exc

    # --- generation ------------------------------------------------------------------------------

    async def generate(self, job: GenerationJob) -> list[ChoiceDelta]:
        """Run a job to the end and return one accumulated ChoiceDelta per choice, ordered by index."""
        choices: dict[int, ChoiceDelta] = {}
        async for delta in self._deltas(job):
            choice = choices.setdefault(delta.index, ChoiceDelta(delta.index, "", 0, None, None))
            choice.text += delta.text
            choice.num_tokens += delta.num_tokens
            if delta.logprobs is not None:
                choice.logprobs = (choice.logprobs or []) + delta.logprobs
            choice.finish_reason = delta.finish_reason or choice.finish_reason
        return [choices[index] for index in sorted(choices)]

    async def open_stream(self, job: GenerationJob) -> AsyncIterator[ChoiceDelta]:
        """Start a job and wait for its first output, so that a rejected request fails before streaming."""
        deltas = self._deltas(job)
        first = await anext(deltas, None)
        return deltas if first is None else _prepend(first, deltas)

    async def _deltas(self, job: GenerationJob) -> AsyncGenerator[ChoiceDelta, None]:
        record = job.record
        n = job.params.n
        streams = [
            self.engine.generate(job.routing.prompt(prompt), job.params, f"{job.request_id}-{i}")
            for i, prompt in enumerate(job.prompts)
        ]
        stats: dict[int, vc.RequestStateStats] = {}
        try:
            async with aclosing(vc.merge_async_iterators(*streams)) as outputs:
                async for prompt_index, output in outputs:
                    if output.metrics is not None:
                        stats[prompt_index] = output.metrics
                    self.lifecycle.tokens_arrived(record, sum(len(c.token_ids) for c in output.outputs))
                    for completion in output.outputs:
                        job.completion_tokens += len(completion.token_ids)
                        record.generated_tokens = job.completion_tokens
                        yield ChoiceDelta(
                            index=prompt_index * n + completion.index,
                            text=completion.text,
                            num_tokens=len(completion.token_ids),
                            logprobs=_token_logprobs(completion, job.params.logprobs, self.tokenizer),
                            finish_reason=completion.finish_reason,
                        )
        except (asyncio.CancelledError, GeneratorExit) as exc:
            self._finish(record, stats, "cancelled", exc)
            raise
        except vc.VLLMClientError as exc:
            error = InvalidRequest(str(exc), param=getattr(exc, "parameter", None))
            self._finish(record, stats, "client_error", error)
            raise error from exc
        except vc.EngineDeadError as exc:
            error = EngineUnavailable("The engine has stopped.")
            self._finish(record, stats, "server_error", error)
            raise error from exc
        except Exception as exc:
            self._finish(record, stats, "client_error" if is_client_error(exc) else "server_error", exc)
            raise
        finally:
            job.lease.release()
        self._finish(record, stats, "ok")

    def _finish(
        self,
        record: RequestRecord,
        stats: dict[int, vc.RequestStateStats],
        outcome: Outcome,
        error: BaseException | None = None,
    ) -> None:
        record.engine_stats = [stats[index] for index in sorted(stats)]
        self.lifecycle.finish(record, outcome, error)

    def _finishing_on_error(self, record: RequestRecord) -> _FinishOnError:
        return _FinishOnError(self.lifecycle, record)


class _FinishOnError:
    """Context manager: an exception while preparing a request finishes its record before propagating."""

    def __init__(self, lifecycle: RequestLifecycle, record: RequestRecord) -> None:
        self._lifecycle = lifecycle
        self._record = record

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> Literal[False]:
        if exc is not None:
            self._lifecycle.finish(self._record, "client_error" if is_client_error(exc) else "server_error", exc)
        return False


def _token_logprobs(
    completion: vc.CompletionOutput, top_count: int | None, tokenizer: PreTrainedTokenizerBase
) -> list[TokenLogprob] | None:
    """Logprobs of the new tokens of `completion`, with the `top_count` most likely alternatives each."""
    if completion.logprobs is None or top_count is None:
        return None
    entries = []
    for token_id, alternatives in zip(completion.token_ids, completion.logprobs):
        chosen = alternatives[token_id]
        ranked = sorted(
            (item for item in alternatives.items() if item[1].rank is not None and item[1].rank <= top_count),
            key=lambda item: item[1].rank,
        )
        top = [(_token_text(tid, logprob, tokenizer), logprob.logprob) for tid, logprob in ranked]
        entries.append(TokenLogprob(_token_text(token_id, chosen, tokenizer), chosen.logprob, top))
    return entries


def _token_text(token_id: int, logprob: vc.Logprob, tokenizer: PreTrainedTokenizerBase) -> str:
    if logprob.decoded_token is not None:
        return logprob.decoded_token
    return tokenizer.decode([token_id])


def _new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


async def _prepend(first: ChoiceDelta, rest: AsyncGenerator[ChoiceDelta, None]) -> AsyncIterator[ChoiceDelta]:
    async with aclosing(rest):
        yield first
        async for item in rest:
            yield item
