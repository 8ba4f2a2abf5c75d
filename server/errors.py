"""Errors of a request and the one place that turns them into HTTP responses.

Every error ends in OpenAI's envelope `{"error": {"message", "type", "param", "code"}}`:
- orthoserve's domain errors (`adapters.errors.DomainError`: here, in router/ and adapters/) carry
  their own stable code, param and status;
- vLLM's OpenAI layer reports client mistakes (unsupported values, prompts too long, ...) as its own
  error responses or exceptions: their status, message and param are vLLM's wording, put in our envelope;
- malformed JSON or fields name the offending field; anything else is a generic 500.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from adapters.errors import DomainError
from server.engine import vllm_compat as vc
from server.engine import vllm_internals as vi

logger = logging.getLogger(__name__)

# vLLM's params for a prompt that does not fit the context; they get OpenAI's code for it.
_CONTEXT_LENGTH_PARAMS = ("input_tokens", "input_text")


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    error: ErrorDetail


class InvalidRequest(DomainError):
    """The request is well-formed JSON but cannot be served as asked."""


class ClientDisconnected(DomainError):
    code = "client_closed_request"
    status = 499

    def __init__(self) -> None:
        super().__init__("The client closed the connection before the response was ready.")


class EngineUnavailable(DomainError):
    """The engine is not running (starting, stopped or dead)."""

    code = "engine_unavailable"
    status = 503
    type = "server_error"


def is_client_error(exc: BaseException) -> bool:
    """Whether the request, not the server, is at fault: our own status, or vLLM's classification."""
    if isinstance(exc, DomainError):
        return 400 <= exc.status < 500
    return isinstance(exc, Exception) and vi.create_error_response(exc).error.code < 500


def error_response(status: int, message: str, param: str | None = None, code: str | None = None) -> JSONResponse:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return _json(status, ErrorDetail(message=message, type=kind, param=param, code=code))


def domain_error_response(exc: DomainError) -> JSONResponse:
    return _json(exc.status, ErrorDetail(message=exc.message, type=exc.type, param=exc.param, code=exc.code))


def vllm_error_response(error: vi.VllmErrorResponse) -> JSONResponse:
    """One of vLLM's error responses (its `code` is the HTTP status) in our envelope."""
    info = error.error
    code = "context_length_exceeded" if info.param in _CONTEXT_LENGTH_PARAMS else None
    return error_response(int(info.code), info.message, info.param, code)


def _json(status: int, detail: ErrorDetail) -> JSONResponse:
    return JSONResponse(status_code=status, content=ErrorResponse(error=detail).model_dump())


async def _domain_error(_: Request, exc: DomainError) -> JSONResponse:
    return domain_error_response(exc)


async def _vllm_error(_: Request, exc: Exception) -> JSONResponse:
    """vLLM errors raised while a request body is validated (its request models raise them)."""
    return vllm_error_response(vi.create_error_response(exc))


async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    first = exc.errors()[0] if exc.errors() else {"msg": "Invalid request.", "loc": (), "type": ""}
    if not isinstance(first, dict):  # vLLM raises RequestValidationError with plain strings
        return error_response(400, str(first))
    if first.get("type") == "json_invalid":
        return error_response(400, f"Request body is not valid JSON: {first.get('ctx', {}).get('error', first.get('msg'))}")
    param = _param_path(exc.body, first)
    return error_response(400, f"{param}: {first.get('msg')}" if param else str(first.get("msg")), param)


def _param_path(body: Any, error: dict[str, Any]) -> str | None:
    """Dotted path of the offending field, following the error location only as far as the body goes.

    Pydantic appends union-member names ("str", "list[str]", ...) to locations; they are not fields.
    """
    location = list(error.get("loc", ()))[1:]  # drop the leading "body"
    path: list[str] = []
    node = body
    for index, part in enumerate(location):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
        elif error.get("type") == "missing" and index == len(location) - 1:
            pass  # the missing field itself
        else:
            break
        path.append(str(part))
    return ".".join(path) or None


async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
    response = error_response(exc.status_code, str(exc.detail))
    response.headers.update(getattr(exc, "headers", None) or {})
    return response


async def _unexpected_error(_: Request, exc: Exception) -> JSONResponse:
    logger.exception("Unhandled error while serving a request", exc_info=exc)
    return error_response(500, "Internal server error.")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(DomainError, _domain_error)
    app.add_exception_handler(vc.VLLMError, _vllm_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)
