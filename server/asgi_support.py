"""Small ASGI helpers shared by the request guards (body limit, admission, deadlines, engine gate).

The guards are plain ASGI middleware so they wrap whatever routes the app mounts; they answer with
the server's domain errors in OpenAI's envelope (`errors.envelope`), before or instead of the route.
"""

from __future__ import annotations

from collections.abc import Iterable

from starlette.types import Message, Receive, Scope, Send

from errors.domain import DomainError
from errors.envelope import error_event

GENERATION_PATHS = ("/v1/completions", "/v1/chat/completions", "/v1/responses")
"""Routes that start engine work: admission and deadlines apply to these."""


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

    async def end_stream_with_error(self, error: DomainError) -> None:
        """After the headers went out: close an event stream with `error`'s event and `[DONE]`, or cut
        the body."""
        body = f"{error_event(error)}data: [DONE]\n\n".encode() if self.event_stream else b""
        await self._send({"type": "http.response.body", "body": body, "more_body": False})
        self.ended = True
