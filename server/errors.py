"""Domain errors of a request and the one place that maps them to HTTP statuses.

Errors are raised as exceptions (here, in adapters/ and in router/) and turned into OpenAI's error
envelope `{"error": {"message", "type", "param", "code"}}` only by the handlers installed here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from adapters.errors import AdapterError
from router.errors import (
    AdapterPathMissing,
    AdapterSetBusy,
    AdapterSetExists,
    AdapterSetNotFound,
    AdapterCapacityExceeded,
    AdapterEngineLoadFailed,
    MemoryBudgetExceeded,
    PathNotAllowed,
    RouterError,
    TaskNotFound,
)
from server.protocol import ErrorDetail, ErrorResponse

logger = logging.getLogger(__name__)


class OrthoserveError(Exception):
    """Base of every error a request can end with; `param` names the offending request field."""

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class InvalidRequest(OrthoserveError):
    """The request is well-formed JSON but cannot be served as asked."""


class ContextLengthExceeded(InvalidRequest):
    """Prompt (plus requested output) does not fit the model's context."""


class ModelNotFound(OrthoserveError):
    def __init__(self, model: str) -> None:
        super().__init__(f"The model `{model}` does not exist.", param="model")
        self.model = model


class ClientDisconnected(OrthoserveError):
    def __init__(self) -> None:
        super().__init__("The client closed the connection before the response was ready.")


class EngineUnavailable(OrthoserveError):
    """The engine is not running (starting, stopped or dead)."""


DomainError = OrthoserveError | RouterError | AdapterError
_DOMAIN_ERRORS = (OrthoserveError, RouterError, AdapterError)


@dataclass(frozen=True)
class ErrorStatus:
    exception: type[Exception]
    status: int
    type: str
    code: str | None  # None: the exception's own stable `code` (router and adapter-set errors), if any


ERROR_STATUSES: tuple[ErrorStatus, ...] = (
    # First match wins: list subclasses before their bases.
    ErrorStatus(ContextLengthExceeded, 400, "invalid_request_error", "context_length_exceeded"),
    ErrorStatus(InvalidRequest, 400, "invalid_request_error", None),
    ErrorStatus(ModelNotFound, 404, "invalid_request_error", "model_not_found"),
    ErrorStatus(ClientDisconnected, 499, "invalid_request_error", "client_closed_request"),
    ErrorStatus(EngineUnavailable, 503, "server_error", "engine_unavailable"),
    ErrorStatus(AdapterSetNotFound, 404, "invalid_request_error", None),
    ErrorStatus(TaskNotFound, 404, "invalid_request_error", None),
    ErrorStatus(PathNotAllowed, 403, "invalid_request_error", None),
    ErrorStatus(AdapterSetExists, 409, "invalid_request_error", None),
    ErrorStatus(AdapterSetBusy, 409, "invalid_request_error", None),
    ErrorStatus(AdapterPathMissing, 422, "invalid_request_error", None),
    ErrorStatus(MemoryBudgetExceeded, 507, "insufficient_storage", None),
    ErrorStatus(AdapterCapacityExceeded, 507, "insufficient_storage", None),
    ErrorStatus(AdapterEngineLoadFailed, 422, "invalid_request_error", None),
    ErrorStatus(RouterError, 400, "invalid_request_error", None),  # ambiguous or malformed tags, bad names
    ErrorStatus(AdapterError, 422, "invalid_request_error", None),  # every failed validation of a set
)
_FALLBACK = ErrorStatus(OrthoserveError, 500, "server_error", None)


def status_of(exc: DomainError) -> ErrorStatus:
    for entry in ERROR_STATUSES:
        if isinstance(exc, entry.exception):
            return entry
    return _FALLBACK


def is_client_error(exc: BaseException) -> bool:
    return isinstance(exc, _DOMAIN_ERRORS) and 400 <= status_of(exc).status < 500


def error_response_body(exc: BaseException) -> tuple[int, ErrorResponse]:
    """Status and envelope for any exception; unexpected ones become a generic 500."""
    if isinstance(exc, _DOMAIN_ERRORS):
        entry = status_of(exc)
        code = entry.code or getattr(exc, "code", None)
        detail = ErrorDetail(message=exc.message, type=entry.type, param=getattr(exc, "param", None), code=code)
        return entry.status, ErrorResponse(error=detail)
    detail = ErrorDetail(message="Internal server error.", type="server_error", param=None, code=None)
    return 500, ErrorResponse(error=detail)


def _json(status: int, body: ErrorResponse) -> JSONResponse:
    return JSONResponse(status_code=status, content=body.model_dump())


async def _domain_error(_: Request, exc: DomainError) -> JSONResponse:
    return _json(*error_response_body(exc))


async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    first = exc.errors()[0] if exc.errors() else {"msg": "Invalid request.", "loc": (), "type": ""}
    if first.get("type") == "json_invalid":
        param = None
        message = f"Request body is not valid JSON: {first.get('ctx', {}).get('error', first.get('msg'))}"
    else:
        param = _param_path(exc.body, first)
        message = f"{param}: {first.get('msg')}" if param else str(first.get("msg"))
    detail = ErrorDetail(message=message, type="invalid_request_error", param=param, code=None)
    return _json(400, ErrorResponse(error=detail))


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
    kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
    detail = ErrorDetail(message=str(exc.detail), type=kind, param=None, code=None)
    return JSONResponse(status_code=exc.status_code, content=ErrorResponse(error=detail).model_dump(),
                        headers=getattr(exc, "headers", None))


async def _unexpected_error(_: Request, exc: Exception) -> JSONResponse:
    logger.exception("Unhandled error while serving a request", exc_info=exc)
    return _json(*error_response_body(exc))


def install_error_handlers(app: FastAPI) -> None:
    for domain_error in _DOMAIN_ERRORS:
        app.add_exception_handler(domain_error, _domain_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)
