"""`--request-timeout` and the `x-request-timeout` header: generation requests that run too long end.

At the deadline the route is cancelled, which cancels its engine work (vLLM aborts a request whose
output stream is closed), and the client gets 504 in the error envelope, or, if a stream had already
started, a last error event and `[DONE]`.
"""

from __future__ import annotations

import asyncio
import math

from starlette.types import ASGIApp, Receive, Scope, Send

from errors.envelope import domain_error_response
from server.asgi_support import ResponseTracker, header, is_generation_request
from server.errors import InvalidRequestTimeout, RequestTimeout

TIMEOUT_HEADER = b"x-request-timeout"
MAX_TIMEOUT_SECONDS = 24 * 3600


class DeadlineMiddleware:
    def __init__(self, app: ASGIApp, default_timeout: float | None) -> None:
        self.app = app
        self.default_timeout = default_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not is_generation_request(scope):
            await self.app(scope, receive, send)
            return
        raw = header(scope, TIMEOUT_HEADER)
        timeout = self.default_timeout if raw is None else _parse_timeout(raw)
        if timeout is None and raw is not None:
            message = f"x-request-timeout must be a number of seconds above 0 and at most {MAX_TIMEOUT_SECONDS}, not {raw!r}."
            await domain_error_response(InvalidRequestTimeout(message))(scope, receive, send)
            return
        if timeout is None:
            await self.app(scope, receive, send)
            return
        tracker = ResponseTracker(send)
        try:
            async with asyncio.timeout(timeout) as deadline:
                await self.app(scope, receive, tracker)
        except TimeoutError:
            if not deadline.expired():
                raise
            if tracker.ended:
                return
            error = RequestTimeout(
                f"The request did not finish within its {timeout:g}-second deadline; its work was stopped."
            )
            if tracker.started:
                await tracker.end_stream_with_error(error)
            else:
                await domain_error_response(error)(scope, receive, send)


def _parse_timeout(raw: str) -> float | None:
    try:
        value = float(raw)
    except ValueError:
        return None
    return value if math.isfinite(value) and 0 < value <= MAX_TIMEOUT_SECONDS else None
