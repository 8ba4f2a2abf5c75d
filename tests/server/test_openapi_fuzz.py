"""schemathesis over the served `/openapi.json`: no request it can build makes a server error.

Bodies that name a `model` name the served model, so requests get past the tag check into vLLM's
serving layer and the engine.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings


@pytest.fixture(scope="module")
def api_schema(server):
    return schemathesis.openapi.from_url(f"{server.base_url}/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_request_makes_a_server_error(case, server):
    if isinstance(case.body, dict) and "model" in case.body:
        case.body["model"] = server.model
    response = case.call(timeout=300)
    assert response.status_code < 500, f"{case.method} {case.formatted_path}: {response.status_code} {response.text[:1000]}"
