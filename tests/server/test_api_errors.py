"""Client mistakes come back as 4xx in OpenAI's error envelope, over raw HTTP."""

from __future__ import annotations

import httpx
import pytest

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
MESSAGES = [{"role": "user", "content": "hello"}]


def post(server, path: str, body: dict | None = None, content: bytes | None = None) -> httpx.Response:
    headers = {"content-type": "application/json"}
    return httpx.post(f"{server.base_url}{path}", json=body, content=content, headers=headers, timeout=120)


def error_of(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"]
    return body["error"]


@pytest.mark.parametrize("path", [CHAT, COMPLETIONS])
def test_malformed_json_is_400(server, path):
    error = error_of(post(server, path, content=b'{"model": "x", "messages": ['), 400)
    assert error["type"] == "invalid_request_error"
    assert "JSON" in error["message"]


@pytest.mark.parametrize(
    ("path", "fields", "param"),
    [
        (CHAT, {"messages": "hello"}, "messages"),
        (CHAT, {"messages": MESSAGES, "temperature": "hot"}, "temperature"),
        (CHAT, {"messages": MESSAGES, "n": 0}, "n"),
        (CHAT, {"messages": MESSAGES, "max_tokens": -3}, "max_tokens"),
        (CHAT, {"messages": [{"role": "wizard", "content": "hi"}]}, "messages.0.role"),
        (CHAT, {"messages": MESSAGES, "top_logprobs": 2}, None),
        (CHAT, {"messages": MESSAGES, "unknown_field": 1}, "unknown_field"),
        (COMPLETIONS, {"prompt": 42}, "prompt"),
        (COMPLETIONS, {"prompt": "hi", "stop": 3}, "stop"),
        (COMPLETIONS, {"prompt": "hi", "logprobs": 50}, "logprobs"),
    ],
)
def test_bad_fields_are_400_naming_the_field(server, path, fields, param):
    error = error_of(post(server, path, {"model": server.model, **fields}), 400)
    assert error["type"] == "invalid_request_error"
    if param is not None:
        assert error["param"] == param


def test_body_that_is_not_an_object_is_400(server):
    error_of(post(server, CHAT, content=b"[1, 2]"), 400)


@pytest.mark.parametrize(("path", "fields"), [(CHAT, {"messages": MESSAGES}), (COMPLETIONS, {"prompt": "hi"})])
@pytest.mark.parametrize("stream", [False, True])
def test_unknown_model_is_404_model_not_found(server, path, fields, stream):
    error = error_of(post(server, path, {"model": "no-such-model", "stream": stream, **fields}), 404)
    assert error["code"] == "model_not_found"
    assert error["param"] == "model"


def test_task_on_the_base_model_is_400(server):
    error = error_of(post(server, CHAT, {"model": server.model, "messages": MESSAGES, "task": "boolq"}), 400)
    assert error["param"] == "task"


@pytest.mark.parametrize("stream", [False, True])
def test_prompt_longer_than_context_is_400(server, stream):
    long_text = "word " * 3000
    error = error_of(post(server, COMPLETIONS, {"model": server.model, "prompt": long_text, "stream": stream}), 400)
    assert error["code"] == "context_length_exceeded"
    chat = [{"role": "user", "content": long_text}]
    error = error_of(post(server, CHAT, {"model": server.model, "messages": chat, "stream": stream}), 400)
    assert error["code"] == "context_length_exceeded"


def test_max_tokens_beyond_context_is_400(server):
    error = error_of(post(server, COMPLETIONS, {"model": server.model, "prompt": "hi", "max_tokens": 100000}), 400)
    assert error["param"] == "max_tokens"
    assert error["code"] == "context_length_exceeded"


def test_greedy_sampling_with_several_choices_is_400(server):
    body = {"model": server.model, "prompt": "hi", "n": 2, "temperature": 0}
    assert error_of(post(server, COMPLETIONS, body), 400)["type"] == "invalid_request_error"


def test_token_ids_outside_the_vocabulary_are_400(server):
    error = error_of(post(server, COMPLETIONS, {"model": server.model, "prompt": [10**7]}), 400)
    assert error["param"] == "prompt"


def test_unknown_route_is_404_in_the_envelope(server):
    error_of(httpx.get(f"{server.base_url}/v1/nothing-here"), 404)
