"""`--max-request-bytes`: a body over the limit gets 413 before anything parses it."""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from errors.envelope import domain_error_response
from server.asgi_support import header, replaying
from server.errors import RequestTooLarge


class BodyLimitMiddleware:
    """Refuses by `Content-Length` at once; otherwise reads the body (chunked ones too) up to the limit
    and hands it on, so nothing downstream ever holds more than `max_bytes` of a request."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._refuse(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        await self.app(scope, replaying(b"".join(chunks), receive), send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        message = f"The request body is larger than the server's limit of {self.max_bytes} bytes."
        await domain_error_response(RequestTooLarge(message))(scope, receive, send)
