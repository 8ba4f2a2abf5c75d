"""Serving one generation request through vLLM's OpenAI layer, inside its request scope.

`serve_generation` resolves the request's tag (our errors), runs vLLM's serving call inside the scope,
and turns what it returns into the HTTP response: vLLM's error responses in our envelope, a whole
response, or a server-sent-event stream. It ends the scope with the request's outcome exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from fastapi import Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel

from errors.domain import DomainError
from errors.envelope import error_event
from server.engine.request_scope import RequestScope
from server.engine.service import EngineService
from server.engine.vllm import openai as vllm_openai
from server.engine.worker.step_routing import ROUTING_KEY
from server.error_handlers import vllm_error_response
from server.errors import ClientDisconnected, EngineUnavailable, InvalidRequest
from server.lifecycle import Endpoint

T = TypeVar("T")
ServingCall = Callable[[Any, Request], Awaitable[Any]]
_ERROR_EVENT = 'data: {"error"'


async def serve_generation(http: Request, endpoint: Endpoint, body: Any, call: ServingCall) -> Response:
    engine: EngineService = http.app.state.engine
    try:
        task = _body_task(body)
        _check_engine_args(body)
    except InvalidRequest as exc:
        engine.lifecycle.reject(endpoint, exc)
        raise
    scope = await until_disconnected(http, engine.open_request(endpoint, body.model, task, bool(getattr(body, "stream", False))))
    try:
        with scope.active():
            result = await until_disconnected(http, call(body, http))
        if isinstance(result, vllm_openai.VllmErrorResponse):
            if result.error.code >= 500 and engine.is_dead():
                raise EngineUnavailable()
            scope.finish("client_error" if result.error.code < 500 else "server_error")
            return vllm_error_response(result)
        if isinstance(result, BaseModel):
            scope.finish("ok")
            return JSONResponse(result.model_dump(mode="json", by_alias=True), headers=scope.headers)
        events = _in_scope(scope, result)
        first = await until_disconnected(http, anext(events, None))
    except Exception as exc:
        scope.fail(exc)
        if isinstance(exc, DomainError):
            raise
        if engine.is_dead():
            raise EngineUnavailable() from exc
        return vllm_error_response(vllm_openai.create_error_response(exc))  # bad values vLLM raises as plain errors
    except BaseException as exc:
        scope.fail(exc)
        raise
    if isinstance(first, str) and first.startswith(_ERROR_EVENT):
        # The request failed before its first token (e.g. the engine refused a parameter): answer with
        # the error's status rather than a 200 stream holding one error event.
        await events.aclose()
        error = vllm_openai.VllmErrorResponse.model_validate(json.loads(first.removeprefix("data: ")))
        scope.finish("client_error" if error.error.code < 500 else "server_error")
        return vllm_error_response(error)
    stream = _sse(scope, first, events, engine)
    return StreamingResponse(stream, media_type="text/event-stream", headers=scope.headers)


def _body_task(body: Any) -> str | None:
    """The orthoserve body field `task` (an extra field to vLLM's request models)."""
    task = (body.model_extra or {}).get("task")
    if task is not None and not isinstance(task, str):
        raise InvalidRequest("The body field 'task' must be a string naming a task of the adapter set.", param="task")
    return task


def _check_engine_args(body: Any) -> None:
    if ROUTING_KEY in (getattr(body, "vllm_xargs", None) or {}):
        raise InvalidRequest(f"vllm_xargs: the key '{ROUTING_KEY}' is reserved for adapter routing.", param="vllm_xargs")


async def _in_scope(scope: RequestScope, events: AsyncIterator[Any]) -> AsyncGenerator[Any, None]:
    """Iterate vLLM's stream with the request's scope active at every step (some streams start their
    engine requests lazily, from inside the stream)."""
    async with contextlib.aclosing(events) as stream:
        while True:
            with scope.active():
                try:
                    event = await anext(stream)
                except StopAsyncIteration:
                    return
            yield event


async def _sse(
    scope: RequestScope, first: Any, events: AsyncGenerator[Any, None], engine: EngineService
) -> AsyncIterator[str]:
    try:
        async with contextlib.aclosing(events):
            if first is not None:
                yield _sse_text(first, engine)
                async for event in events:
                    yield _sse_text(event, engine)
    except BaseException as exc:
        scope.fail(exc)
        raise
    scope.end_stream()


def _sse_text(event: Any, engine: EngineService) -> str:
    """Chat and completion streams yield ready SSE text; Responses streams yield typed events.

    A stream cut by the engine's death ends with the same 503 `engine_unavailable` error as a whole
    response, rather than vLLM's generic 500 event.
    """
    if isinstance(event, str):
        if event.startswith(_ERROR_EVENT) and engine.is_dead():
            return error_event(EngineUnavailable())
        return event
    return f"event: {event.type}\ndata: {event.model_dump_json(indent=None, by_alias=True)}\n\n"


async def until_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await `work`, cancelling it (and raising ClientDisconnected) if the client goes away first."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_for_disconnect(request))
    try:
        done, _ = await asyncio.wait((task, watcher), return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        raise
    finally:
        watcher.cancel()
    if task in done:
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    raise ClientDisconnected()


async def _wait_for_disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass
