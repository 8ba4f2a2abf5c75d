"""One API request while vLLM's OpenAI layer serves it, and the engine client that layer runs on.

A handler opens a `RequestScope` (resolved target, set-version lease, lifecycle record) and calls vLLM's
serving classes inside `scope.active()`. Those classes reach the engine only through
`RoutedEngineClient.generate`, which takes the calling request's scope from a context variable and
- routes the engine request to the scope's target: the workers' routing entry in
  `SamplingParams.extra_args`, the prefix-cache salt of the set version and task, and no reading of
  cached KV for BADIT. A generate call outside any scope is refused, so a request never falls back to
  the base model silently;
- reports each engine output to the request's lifecycle record (tokens, first token, vLLM's stats).
The handler ends the scope once, with the request's outcome; that releases the lease.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from router.resident import Lease
from server.engine.adapter_backend import EngineRouting
from server.engine.vllm import engine as vllm_engine
from server.error_handlers import is_client_error
from server.errors import ClientDisconnected
from server.lifecycle import Outcome, RequestLifecycle, RequestRecord

_CURRENT: ContextVar[RequestScope | None] = ContextVar("orthoserve_request_scope", default=None)

VERSION_HEADER = "x-orthoserve-adapter-set"


def current_tag() -> str | None:
    """The `model` tag of the request being served in this context, if any."""
    scope = _CURRENT.get()
    return None if scope is None else scope.model


class OutsideRequestScope(RuntimeError):
    """The engine was asked to generate for no resolved request (a bug, never a client's mistake)."""


@dataclass(eq=False)
class RequestScope:
    model: str  # the tag as the client sent it; echoed as the response's `model`
    lease: Lease  # holds the target's adapter-set version until the scope ends
    routing: EngineRouting
    record: RequestRecord
    lifecycle: RequestLifecycle
    engine_error: BaseException | None = None  # the first error an engine stream ended with
    _stats: dict[int, vllm_engine.RequestStateStats] = field(default_factory=dict, init=False)
    _engine_requests: int = field(default=0, init=False)

    @property
    def headers(self) -> dict[str, str]:
        header = self.lease.target.version_header
        return {VERSION_HEADER: header} if header else {}

    @contextmanager
    def active(self) -> Iterator[None]:
        token = _CURRENT.set(self)
        try:
            yield
        finally:
            _CURRENT.reset(token)

    def route(self, prompt: Any, params: vllm_engine.SamplingParams) -> Any:
        """The engine prompt of one engine request, salted; `params` gain the routing in place."""
        return self.routing.attach(prompt, params)

    async def observe(self, outputs: AsyncIterator[vllm_engine.RequestOutput]) -> AsyncGenerator[vllm_engine.RequestOutput, None]:
        """Pass one engine request's outputs through, reporting them to the request's record."""
        index = self._engine_requests
        self._engine_requests += 1
        record = self.record
        counted_prompt = False
        try:
            async for output in outputs:
                if not counted_prompt and output.prompt_token_ids is not None:
                    record.prompt_tokens += len(output.prompt_token_ids)
                    counted_prompt = True
                if output.metrics is not None:
                    self._stats[index] = output.metrics
                new_tokens = sum(len(completion.token_ids) for completion in output.outputs)
                record.generated_tokens += new_tokens
                self.lifecycle.tokens_arrived(record, new_tokens)
                yield output
        except (asyncio.CancelledError, GeneratorExit):
            raise
        except Exception as exc:
            self.engine_error = self.engine_error or exc
            raise

    def finish(self, outcome: Outcome, error: BaseException | None = None) -> None:
        """End the request (once; later calls do nothing) and release its lease."""
        try:
            self.record.engine_stats = [self._stats[index] for index in sorted(self._stats)]
            self.lifecycle.finish(self.record, outcome, error)
        finally:
            self.lease.release()

    def fail(self, error: BaseException) -> None:
        """End the request with the outcome `error` stands for."""
        self.finish(outcome_of(error), error)

    def end_stream(self) -> None:
        """End a stream that ran to its end: ok, unless an engine request failed inside it."""
        if self.engine_error is None:
            self.finish("ok")
        else:
            self.fail(self.engine_error)


class RoutedEngineClient:
    """The engine client vLLM's serving classes run on: AsyncLLM, with every request routed by its scope."""

    def __init__(self, engine: vllm_engine.AsyncLLM) -> None:
        self._engine = engine

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)

    def generate(
        self, prompt: Any, sampling_params: vllm_engine.SamplingParams, request_id: str, **kwargs: Any
    ) -> AsyncGenerator[vllm_engine.RequestOutput, None]:
        scope = _CURRENT.get()
        if scope is None:
            raise OutsideRequestScope(f"engine request {request_id} was made outside any API request")
        routed = scope.route(prompt, sampling_params)
        return scope.observe(self._engine.generate(routed, sampling_params, request_id, **kwargs))


def outcome_of(error: BaseException) -> Outcome:
    """The outcome of a request that ended with `error`."""
    if isinstance(error, (ClientDisconnected, asyncio.CancelledError, GeneratorExit)):
        return "cancelled"
    return "client_error" if is_client_error(error) else "server_error"
