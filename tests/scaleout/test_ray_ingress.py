"""The Ray Serve ingress's forwarding, against replicas that die part-way through an answer.

The replicas are stand-ins for Serve's deployment handle: each call yields what a replica's
`forward` would (status and headers, then body chunks) and may die after any item.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest
from starlette.requests import Request
from starlette.responses import StreamingResponse

pytest.importorskip("ray.serve", reason="the `ray` extra (ray[serve]) is not installed")
from ray.exceptions import ActorDiedError  # noqa: E402

from server.ray_serve import OrthoserveIngress  # noqa: E402

JSON_HEAD = {"status": 200, "headers": [("content-type", "application/json"), ("content-length", "11")]}
STREAM_HEAD = {"status": 200, "headers": [("content-type", "text/event-stream; charset=utf-8")]}
DIED = object()  # in a script: the replica dies here


class ScriptedReplicas:
    """A deployment handle whose n-th call plays the n-th script."""

    def __init__(self, *scripts: list[object]) -> None:
        self.scripts = list(scripts)
        self.calls = 0
        self.forward = self

    def options(self, **_: object) -> ScriptedReplicas:
        return self

    def remote(self, *_: object) -> AsyncIterator[object]:
        script = self.scripts[self.calls]
        self.calls += 1
        return _play(script)


async def _play(script: list[object]) -> AsyncIterator[object]:
    for item in script:
        if item is DIED:
            raise ActorDiedError()
        yield item


def _forward(replicas: ScriptedReplicas) -> object:
    scope = {
        "type": "http", "method": "POST", "scheme": "http", "path": "/v1/completions", "query_string": b"",
        "headers": [(b"content-type", b"application/json")], "server": ("127.0.0.1", 8000),
    }  # fmt: skip
    ingress = OrthoserveIngress(replicas, base_model="base", app_id="test")  # type: ignore[arg-type]
    body = json.dumps({"model": "some-set/task", "prompt": "hi"}).encode()
    return asyncio.run(ingress._forward(Request(scope), "/v1/completions", body))


def test_a_replica_dying_between_status_and_body_is_retried_not_answered_empty() -> None:
    replicas = ScriptedReplicas([JSON_HEAD, DIED], [JSON_HEAD, b'{"ok": true}'])
    response = _forward(replicas)
    assert replicas.calls == 2
    assert (response.status_code, response.body) == (200, b'{"ok": true}')
    assert response.headers["content-length"] == str(len(b'{"ok": true}'))


def test_two_replicas_dying_mid_answer_give_503_replica_unavailable() -> None:
    response = _forward(ScriptedReplicas([JSON_HEAD, b'{"ok"', DIED], [JSON_HEAD, DIED]))
    assert response.status_code == 503
    assert json.loads(response.body)["error"]["code"] == "replica_unavailable"


def test_an_event_stream_is_passed_on_as_it_comes() -> None:
    response = _forward(ScriptedReplicas([STREAM_HEAD, b"data: 1\n\n", DIED]))
    assert isinstance(response, StreamingResponse) and response.status_code == 200
