"""The one place that turns the exceptions of a request into HTTP responses, all in OpenAI's envelope
(`errors.envelope`):
- orthoserve's domain errors (`errors.domain.DomainError`, raised in adapters/, router/ and server/)
  carry their own stable code, param and status;
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
from starlette.exceptions import HTTPException as StarletteHTTPException

from errors.domain import DomainError
from errors.envelope import domain_error_response, error_response
from server.engine.vllm import engine as vllm_engine
from server.engine.vllm import openai as vllm_openai

logger = logging.getLogger(__name__)

# vLLM's params for a prompt that does not fit the context; they get OpenAI's code for it.
_CONTEXT_LENGTH_PARAMS = ("input_tokens", "input_text")
_CONTEXT_LENGTH_EXCEEDED = "context_length_exceeded"


def is_client_error(exc: BaseException) -> bool:
    """Whether the request, not the server, is at fault: our own status, or vLLM's classification."""
    if isinstance(exc, DomainError):
        return 400 <= exc.status < 500
    return isinstance(exc, Exception) and vllm_openai.create_error_response(exc).error.code < 500


def vllm_error_response(error: vllm_openai.VllmErrorResponse) -> JSONResponse:
    """One of vLLM's error responses (its `code` is the HTTP status) in our envelope."""
    info = error.error
    code = _CONTEXT_LENGTH_EXCEEDED if info.param in _CONTEXT_LENGTH_PARAMS else None
    return error_response(int(info.code), info.message, param=info.param, code=code)


async def _domain_error(_: Request, exc: DomainError) -> JSONResponse:
    return domain_error_response(exc)


async def _vllm_error(_: Request, exc: Exception) -> JSONResponse:
    """vLLM errors raised while a request body is validated (its request models raise them)."""
    return vllm_error_response(vllm_openai.create_error_response(exc))


async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    first = exc.errors()[0] if exc.errors() else {"msg": "Invalid request.", "loc": (), "type": ""}
    if not isinstance(first, dict):  # vLLM raises RequestValidationError with plain strings
        return error_response(400, str(first))
    if first.get("type") == "json_invalid":
        return error_response(400, f"Request body is not valid JSON: {first.get('ctx', {}).get('error', first.get('msg'))}")
    param = _param_path(exc.body, first)
    return error_response(400, f"{param}: {first.get('msg')}" if param else str(first.get("msg")), param=param)


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
    return error_response(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))


async def _unexpected_error(_: Request, exc: Exception) -> JSONResponse:
    logger.exception("Unhandled error while serving a request", exc_info=exc)
    return error_response(500, "Internal server error.")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(DomainError, _domain_error)
    app.add_exception_handler(vllm_engine.VLLMError, _vllm_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)
