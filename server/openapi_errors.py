"""Declares in the OpenAPI document every error status each route can answer, with the error envelope.

Call `declare_error_responses(app)` after every router is mounted: it works from the routes that exist
(whatever serves the OpenAI endpoints), by rules on their method and path, and replaces FastAPI's
automatic `422 HTTPValidationError` (this server answers malformed requests with 400 in the envelope).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute

from errors.envelope import ErrorResponse
from server.asgi_support import GENERATION_PATHS

DESCRIPTIONS = {
    400: "Malformed request: invalid JSON, fields, task tag or `x-request-timeout`.",
    401: "Missing or wrong admin token.",
    403: "Adapter-set path outside the configured adapter roots.",
    404: "Unknown model, adapter set or task.",
    409: "The adapter set is already loaded, or being loaded or unloaded.",
    413: "Request body over `--max-request-bytes`.",
    422: "The adapter set failed validation (the code names the check).",
    429: "Too many requests waiting to start (`--max-queued-requests`); see `Retry-After`.",
    500: "Unexpected server error.",
    503: "The engine is not running (it died, or the server is starting or stopping).",
    504: "The request ran past its deadline (`--request-timeout`, `x-request-timeout`).",
    507: "The adapter set does not fit `--adapter-memory-budget`.",
}

ADMIN_PREFIX = "/v1/adapter-sets"
LOAD_LORA_PATH = "/v1/load_lora_adapter"  # vLLM's adapter endpoints, on the admin API
UNLOAD_LORA_PATH = "/v1/unload_lora_adapter"
_ADMIN_PATHS = (LOAD_LORA_PATH, UNLOAD_LORA_PATH)
TOKENIZER_PATHS = ("/tokenize", "/detokenize")  # they resolve the `model` tag too
_REF_PREFIX = "#/components/schemas/"

# Every route: the body limit, the dead-engine gate, and unexpected failures.
_EVERY_ROUTE = frozenset({413, 500, 503})
# (applies to the route?, statuses it adds); all matching rules apply.
_RULES: tuple[tuple[Callable[[str, str], bool], frozenset[int]], ...] = (
    (lambda method, path: method == "POST" and path in GENERATION_PATHS, frozenset({400, 404, 429, 504})),
    (lambda method, path: method == "POST" and path in TOKENIZER_PATHS, frozenset({404})),
    (lambda method, path: path.startswith(ADMIN_PREFIX) or path in _ADMIN_PATHS, frozenset({401})),
    (lambda method, path: method == "POST" and path == ADMIN_PREFIX, frozenset({403, 409, 422, 507})),
    (lambda method, path: method == "DELETE" and path.startswith(ADMIN_PREFIX), frozenset({404, 409})),
    (lambda method, path: method == "POST" and path == LOAD_LORA_PATH, frozenset({403, 404, 409, 422, 507})),
    (lambda method, path: method == "POST" and path == UNLOAD_LORA_PATH, frozenset({404, 409})),
)


def operation_error_statuses(method: str, path: str, has_inputs: bool) -> set[int]:
    """Error statuses one operation can answer; `has_inputs`: it takes a body, query or path parameters."""
    statuses = set(_EVERY_ROUTE)
    if has_inputs:
        statuses.add(400)  # request validation
    for applies, added in _RULES:
        if applies(method, path):
            statuses |= added
    return statuses


def error_statuses(route: APIRoute) -> set[int]:
    """Error statuses `route` can answer (over all its methods)."""
    has_inputs = route.body_field is not None or bool(route.dependant.query_params or route.dependant.path_params)
    return set().union(*(operation_error_statuses(method, route.path, has_inputs) for method in route.methods))


def declare_error_responses(app: FastAPI) -> None:
    for route in app.routes:
        if isinstance(route, APIRoute):
            for status in sorted(error_statuses(route)):
                route.responses.setdefault(status, _error_response(status))
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = _without_fastapi_validation_errors(generate())
        return app.openapi_schema

    app.openapi_schema = None
    app.openapi = openapi  # type: ignore[method-assign]


def _error_response(status: int) -> dict[str, Any]:
    # Given as a schema reference (the envelope is added to the components below): FastAPI reads a
    # `model` only while it builds a route, and the routes exist before this runs.
    response: dict[str, Any] = {
        "description": DESCRIPTIONS[status],
        "content": {"application/json": {"schema": {"$ref": f"{_REF_PREFIX}{ErrorResponse.__name__}"}}},
    }
    if status == 429:
        response["headers"] = {"Retry-After": {"description": "Seconds to wait.", "schema": {"type": "integer"}}}
    return response


def _without_fastapi_validation_errors(schema: dict[str, Any]) -> dict[str, Any]:
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            response = operation.get("responses", {}).get("422")
            if response is not None and "HTTPValidationError" in str(response):
                del operation["responses"]["422"]
    schemas = schema.setdefault("components", {}).setdefault("schemas", {})
    envelope = ErrorResponse.model_json_schema(ref_template=f"{_REF_PREFIX}{{model}}")
    schemas.update(envelope.pop("$defs", {}))
    schemas[ErrorResponse.__name__] = envelope
    if "HTTPValidationError" not in str(schema.get("paths")):
        schemas.pop("HTTPValidationError", None)
        schemas.pop("ValidationError", None)
    return schema
