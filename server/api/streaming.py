"""Server-sent events and client-disconnect handling shared by the generation endpoints."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable
from typing import TypeVar

from fastapi import Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from server.errors import ClientDisconnected, error_response_body

T = TypeVar("T")


def sse_response(events: AsyncIterator[BaseModel], headers: dict[str, str]) -> StreamingResponse:
    return StreamingResponse(_sse(events), media_type="text/event-stream", headers=headers)


async def _sse(events: AsyncIterator[BaseModel]) -> AsyncIterator[str]:
    try:
        async for event in events:
            yield f"data: {event.model_dump_json(exclude_none=False)}\n\n"
    except Exception as exc:
        # Headers are already sent: report the failure as a final error event.
        _, body = error_response_body(exc)
        yield f"data: {body.model_dump_json()}\n\n"
    yield "data: [DONE]\n\n"


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
