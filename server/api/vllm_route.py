"""The route class of the endpoints vLLM's OpenAI layer serves.

FastAPI validates the body with vLLM's request models before the handler runs; their validators raise
pydantic errors, vLLM's own errors or plain Python ones (TypeError, ValueError, ...). This route
- reports a request refused there to the request lifecycle (and so to the metrics), since it never
  reaches the engine service;
- answers a plain exception as vLLM's server does (`server.engine.vllm.openai.create_error_response`: bad values
  are 400s) in our envelope, instead of a generic 500.
Handlers turn exceptions out of vLLM's serving calls into responses themselves.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException

from errors.domain import DomainError
from server.engine.vllm import engine as vllm_engine
from server.engine.vllm import openai as vllm_openai
from server.error_handlers import vllm_error_response
from server.lifecycle import Endpoint


def vllm_route(endpoint: Endpoint | None = None) -> type[APIRoute]:
    """A route class; `endpoint` names the lifecycle endpoint of generation routes (None: not metered)."""

    class VllmRoute(APIRoute):
        def get_route_handler(self) -> Callable[[Request], Awaitable[Response]]:
            handler = super().get_route_handler()

            async def served(request: Request) -> Response:
                try:
                    return await handler(request)
                except (DomainError, StarletteHTTPException):
                    raise
                except (RequestValidationError, vllm_engine.VLLMError) as exc:
                    _reject(request, exc)
                    raise
                except Exception as exc:  # noqa: BLE001 - vLLM's request models raise plain errors for bad values
                    _reject(request, exc)
                    return vllm_error_response(vllm_openai.create_error_response(exc))

            return served

    def _reject(request: Request, exc: Exception) -> None:
        if endpoint is not None:
            request.app.state.engine.lifecycle.reject(endpoint, exc)

    return VllmRoute
