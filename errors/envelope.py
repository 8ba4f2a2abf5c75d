"""OpenAI's error envelope `{"error": {"message", "type", "param", "code"}}`, built in one place for
every error the server sends: route and middleware responses, and the error event that ends a stream."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel
from starlette.responses import JSONResponse

from errors.domain import DomainError


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    error: ErrorDetail


def envelope(message: str, *, type: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return ErrorResponse(error=ErrorDetail(message=message, type=type, param=param, code=code)).model_dump()


def status_type(status: int) -> str:
    """The envelope `type` of a status whose error names none of its own."""
    return "invalid_request_error" if status < 500 else "server_error"


def error_response(
    status: int,
    message: str,
    *,
    param: str | None = None,
    code: str | None = None,
    type: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = envelope(message, type=type or status_type(status), param=param, code=code)
    return JSONResponse(body, status_code=status, headers=headers)


def domain_error_response(error: DomainError, *, headers: dict[str, str] | None = None) -> JSONResponse:
    return error_response(
        error.status, error.message, param=error.param, code=error.code, type=error.type, headers=headers
    )


def error_event(error: DomainError) -> str:
    """One server-sent event carrying `error`'s envelope."""
    body = envelope(error.message, type=error.type, param=error.param, code=error.code)
    return f"data: {json.dumps(body)}\n\n"
