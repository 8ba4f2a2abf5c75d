"""schemathesis over /openapi.json of the real server, with the served model name and the admin token:
no request it generates gets a 5xx, and every status the server answers is declared for its route.
The declared statuses are the product's own rules (`server/openapi_errors.py`), read back from the
served document."""

from __future__ import annotations

from typing import Any

import httpx
import hypothesis
import schemathesis
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import status_code_conformance

from server.openapi_errors import ADMIN_PREFIX, operation_error_statuses

MAX_EXAMPLES_PER_OPERATION = 40
MAX_TOKENS = 16
TOKEN_LIMITS = ("max_tokens", "max_completion_tokens", "max_output_tokens")
SUCCESS_STATUSES = ("200", "201")


def _bounded(case, server) -> None:
    """Half the generated bodies name the real model (so they reach the engine); outputs stay short."""
    if not isinstance(case.body, dict):
        return
    if "model" in case.body and len(str(case.body.get("model"))) % 2 == 0:
        case.body["model"] = server.model
    for field in TOKEN_LIMITS:
        if isinstance(case.body.get(field), int):
            case.body[field] = min(case.body[field], MAX_TOKENS)
    if isinstance(case.body.get("n"), int):
        case.body["n"] = min(case.body["n"], 4)


def test_no_5xx_and_every_status_is_declared(server):
    schema = schemathesis.openapi.from_url(f"{server.base_url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {operation.path for operation in operations} >= {"/v1/completions", "/v1/chat/completions", ADMIN_PREFIX}
    for operation in operations:

        @hypothesis.given(case=operation.as_strategy())
        @hypothesis.settings(
            max_examples=MAX_EXAMPLES_PER_OPERATION,
            deadline=None,
            suppress_health_check=list(hypothesis.HealthCheck),
            derandomize=True,
            database=None,
        )
        def fuzz(case) -> None:
            _bounded(case, server)
            case.call_and_validate(
                headers={"Authorization": f"Bearer {server.admin_token}"},
                checks=[not_a_server_error, status_code_conformance],
                timeout=120,
            )

        fuzz()


def _has_inputs(operation: dict[str, Any]) -> bool:
    return "requestBody" in operation or any(p["in"] in ("query", "path") for p in operation.get("parameters", ()))


def test_each_route_declares_its_error_statuses_with_the_envelope(server):
    document = httpx.get(f"{server.base_url}/openapi.json", timeout=30).json()
    checked = 0
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            responses = operation["responses"]
            declared = {int(status) for status in responses if status not in SUCCESS_STATUSES}
            expected = operation_error_statuses(method.upper(), path, _has_inputs(operation))
            assert declared == expected, (method, path, declared)
            for status in expected:
                schema = responses[str(status)]["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/ErrorResponse"}, (method, path, status)
            checked += 1
    assert checked >= 13
    assert "HTTPValidationError" not in document["components"]["schemas"]
    assert document["components"]["schemas"]["ErrorResponse"]["required"] == ["error"]
    assert "Retry-After" in document["paths"]["/v1/completions"]["post"]["responses"]["429"]["headers"]
