"""Small ASGI helpers shared by the request guards (body limit, admission, deadlines, engine gate).

The guards are plain ASGI middleware so they wrap whatever routes the app mounts; they answer in
OpenAI's error envelope themselves, before or instead of the route.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from starlette.responses import JSONResponse
from starlette.types import Message, Receive, Scope, Send

GENERATION_PATHS = ("/v1/completions", "/v1/chat/completions", "/v1/responses")
"""Routes that start engine work: admission and deadlines apply to these."""


def error_response(
    status: int, message: str, *, code: str, type: str = "invalid_request_error", headers: dict[str, str] | None = None
) -> JSONResponse:
    body = {"error": {"message": message, "type": type, "param": None, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


def sse_error_event(message: str, *, code: str, type: str = "server_error") -> bytes:
    """The last events of a stream that ends in an error: the envelope, then `[DONE]`."""
    body = {"error": {"message": message, "type": type, "param": None, "code": code}}
    return f"data: {json.dumps(body)}\n\ndata: [DONE]\n\n".encode()


def is_generation_request(scope: Scope, paths: Iterable[str] = GENERATION_PATHS) -> bool:
    return scope["type"] == "http" and scope["method"] == "POST" and scope["path"] in paths


def header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def replaying(body: bytes, receive: Receive) -> Receive:
    """A `receive` that hands out `body` once, then defers to the real one (to hear disconnects)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


class ResponseTracker:
    """Wraps `send` to remember whether the response has started, is a stream, and has ended."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self.started = False
        self.event_stream = False
        self.ended = False

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.started = True
            content_type = dict(message.get("headers", ())).get(b"content-type", b"")
            self.event_stream = content_type.startswith(b"text/event-stream")
        elif message["type"] == "http.response.body" and not message.get("more_body", False):
            self.ended = True
        await self._send(message)

    async def end_stream_with_error(self, message: str, *, code: str) -> None:
        """After the headers went out: close an event stream with an error event, or cut the body."""
        body = sse_error_event(message, code=code) if self.event_stream else b""
        await self._send({"type": "http.response.body", "body": body, "more_body": False})
        self.ended = True
