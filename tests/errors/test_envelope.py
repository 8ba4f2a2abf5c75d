"""The one envelope builder: every domain error's response, a plain error's, and a stream's error event."""

from __future__ import annotations

import asyncio
import json

import pytest
from starlette.types import Message

from adapters.errors import ShapeMismatch
from errors.domain import DomainError
from errors.envelope import domain_error_response, error_event, error_response
from router.errors import AdapterSetExists, MemoryBudgetExceeded, ModelNotFound, PathNotAllowed, TaskRequired
from server.asgi_support import ResponseTracker
from server.errors import (
    ClientDisconnected,
    EngineUnavailable,
    RequestTimeout,
    RequestTooLarge,
    ServerOverloaded,
)


def _body(response) -> dict:
    return json.loads(response.body)


@pytest.mark.parametrize(
    ("error", "status", "type", "code", "param"),
    [
        (ModelNotFound("nope"), 404, "invalid_request_error", "model_not_found", "model"),
        (TaskRequired("mtl", ["a", "b"]), 400, "invalid_request_error", "task_required", "task"),
        (AdapterSetExists("mtl"), 409, "invalid_request_error", "adapter_set_exists", "name"),
        (PathNotAllowed("outside"), 403, "invalid_request_error", "path_not_allowed", "path"),
        (MemoryBudgetExceeded("mtl", 3, 2, 4), 507, "insufficient_storage", "adapter_memory_budget_exceeded", None),
        (ShapeMismatch("wrong", field="layers.0.q_proj.A"), 422, "invalid_request_error", "shape_mismatch", "layers.0.q_proj.A"),
        (ClientDisconnected(), 499, "invalid_request_error", "client_closed_request", None),
        (RequestTooLarge("big"), 413, "invalid_request_error", "request_too_large", None),
        (ServerOverloaded("busy"), 429, "server_error", "server_overloaded", None),
        (EngineUnavailable(), 503, "server_error", "engine_unavailable", None),
        (RequestTimeout("late"), 504, "server_error", "request_timeout", None),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, DomainError) else None,
)
def test_each_domain_error_maps_to_its_status_and_envelope(error, status, type, code, param):
    response = domain_error_response(error)
    assert response.status_code == status
    assert _body(response) == {"error": {"message": error.message, "type": type, "param": param, "code": code}}


def test_a_plain_error_takes_its_type_from_the_status_and_keeps_headers():
    client = error_response(400, "bad", param="max_tokens")
    assert _body(client) == {"error": {"message": "bad", "type": "invalid_request_error", "param": "max_tokens", "code": None}}
    server = error_response(500, "Internal server error.", headers={"Retry-After": "1"})
    assert _body(server)["error"]["type"] == "server_error" and server.headers["retry-after"] == "1"


def test_the_error_event_is_one_sse_event_with_the_envelope():
    assert error_event(EngineUnavailable()) == (
        'data: {"error": {"message": "The engine has stopped.", "type": "server_error", "param": null, '
        '"code": "engine_unavailable"}}\n\n'
    )


@pytest.mark.parametrize("content_type", [b"text/event-stream", b"application/json"])
def test_a_started_response_ends_with_the_error_event_or_is_cut(content_type: bytes):
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    async def run() -> None:
        tracker = ResponseTracker(send)
        await tracker({"type": "http.response.start", "status": 200, "headers": [(b"content-type", content_type)]})
        await tracker.end_stream_with_error(RequestTimeout("late"))
        assert tracker.ended

    asyncio.run(run())
    expected = f"{error_event(RequestTimeout('late'))}data: [DONE]\n\n".encode() if content_type == b"text/event-stream" else b""
    assert sent[-1] == {"type": "http.response.body", "body": expected, "more_body": False}
