"""A route class for the generation endpoints whose malformed requests still reach the lifecycle.

FastAPI validates the body (with vLLM's request models, whose validators may raise vLLM's own errors)
before the handler runs, so a request rejected there never reaches the
engine service; this route reports it to the request lifecycle (and so to the metrics) first.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute

from server.engine import vllm_compat as vc
from server.lifecycle import Endpoint


def observed_route(endpoint: Endpoint) -> type[APIRoute]:
    class ObservedRoute(APIRoute):
        def get_route_handler(self) -> Callable[[Request], Awaitable[Response]]:
            handler = super().get_route_handler()

            async def observed(request: Request) -> Response:
                try:
                    return await handler(request)
                except (RequestValidationError, vc.VLLMError) as exc:
                    request.app.state.engine.lifecycle.reject(endpoint, exc)
                    raise

            return observed

    return ObservedRoute
