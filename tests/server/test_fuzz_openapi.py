"""schemathesis over /openapi.json of the real server, with the served model name and the admin token:
no request it generates gets a 5xx, and every status the server answers is declared for its route."""

from __future__ import annotations

import httpx
import hypothesis
import schemathesis
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import status_code_conformance



MAX_EXAMPLES_PER_OPERATION = 40


def _bounded(case, server) -> None:
    """Half the generated bodies name the real model (so they reach the engine); outputs stay short."""
    if not isinstance(case.body, dict):
        return
    if "model" in case.body and len(str(case.body.get("model"))) % 2 == 0:
        case.body["model"] = server.model
    if isinstance(case.body.get("max_tokens"), int):
        case.body["max_tokens"] = min(case.body["max_tokens"], 16)
    if isinstance(case.body.get("n"), int):
        case.body["n"] = min(case.body["n"], 4)


def test_no_5xx_and_every_status_is_declared(server):
    schema = schemathesis.openapi.from_url(f"{server.base_url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {operation.path for operation in operations} >= {"/v1/completions", "/v1/chat/completions", "/v1/adapter-sets"}
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


EXPECTED_ERRORS = {
    ("POST", "/v1/completions"): {400, 404, 413, 429, 500, 503, 504},
    ("POST", "/v1/chat/completions"): {400, 404, 413, 429, 500, 503, 504},
    ("POST", "/v1/responses"): {400, 404, 413, 429, 500, 503, 504},
    ("POST", "/tokenize"): {400, 404, 413, 500, 503},
    ("POST", "/detokenize"): {400, 404, 413, 500, 503},
    ("GET", "/v1/models"): {413, 500, 503},
    ("GET", "/health"): {413, 500, 503},
    ("GET", "/ready"): {413, 500, 503},
    ("GET", "/metrics"): {413, 500, 503},
    ("GET", "/metrics/vllm"): {413, 500, 503},
    ("GET", "/v1/adapter-sets"): {401, 413, 500, 503},
    ("POST", "/v1/adapter-sets"): {400, 401, 403, 409, 413, 422, 500, 503, 507},
    ("DELETE", "/v1/adapter-sets/{name}"): {400, 401, 404, 409, 413, 500, 503},
}


def test_each_route_declares_its_error_statuses_with_the_envelope(server):
    document = httpx.get(f"{server.base_url}/openapi.json", timeout=30).json()
    for (method, path), expected in EXPECTED_ERRORS.items():
        responses = document["paths"][path][method.lower()]["responses"]
        declared = {int(status) for status in responses if status != "200" and status != "201"}
        assert declared == expected, (method, path, declared)
        for status in expected:
            schema = responses[str(status)]["content"]["application/json"]["schema"]
            assert schema == {"$ref": "#/components/schemas/ErrorResponse"}, (method, path, status)
    assert "HTTPValidationError" not in document["components"]["schemas"]
    assert document["components"]["schemas"]["ErrorResponse"]["required"] == ["error"]
    assert "Retry-After" in document["paths"]["/v1/completions"]["post"]["responses"]["429"]["headers"]
