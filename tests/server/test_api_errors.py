"""Client mistakes come back as 4xx in OpenAI's error envelope, over raw HTTP; informational fields pass."""

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
        (CHAT, {"messages": MESSAGES, "top_logprobs": 2}, None),
        (CHAT, {"messages": MESSAGES, "response_format": {"type": "xml"}}, "response_format"),
        (CHAT, {"messages": MESSAGES, "logit_bias": {"99999": 5}}, "logit_bias"),
        (CHAT, {"messages": MESSAGES, "task": 3}, "task"),
        (CHAT, {"messages": MESSAGES, "vllm_xargs": {"orthoserve": 1}}, "vllm_xargs"),
        (COMPLETIONS, {"prompt": 42}, "prompt"),
        (COMPLETIONS, {"prompt": "hi", "stop": 3}, "stop"),
        (COMPLETIONS, {"prompt": "hi", "logprobs": 50}, "logprobs"),
        (COMPLETIONS, {"prompt": "hi", "min_p": 3}, "min_p"),
    ],
)
def test_bad_fields_are_400_naming_the_field(server, path, fields, param):
    error = error_of(post(server, path, {"model": server.model, **fields}), 400)
    assert error["type"] == "invalid_request_error"
    if param is not None:  # vLLM names some fields only in its message ("n must be at least 1, got 0.")
        assert error["param"] == param or error["message"].startswith(f"{param} ")


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


@pytest.mark.parametrize("stream", [False, True])
def test_max_tokens_beyond_context_is_400(server, stream):
    body = {"model": server.model, "prompt": "hi", "max_tokens": 100000, "stream": stream}
    assert error_of(post(server, COMPLETIONS, body), 400)["param"] == "max_tokens"


@pytest.mark.parametrize("stream", [False, True])
def test_a_value_the_engine_refuses_is_400_even_when_streaming(server, stream):
    body = {"model": server.model, "messages": MESSAGES, "logit_bias": {"99999": 5}, "stream": stream}
    assert error_of(post(server, CHAT, body), 400)["param"] == "logit_bias"


def test_unknown_and_informational_fields_are_accepted(server):
    body = {
        "model": server.model, "messages": MESSAGES, "max_tokens": 2, "user": "u-1", "metadata": {"team": "a"},
        "store": False, "service_tier": "auto", "parallel_tool_calls": True, "an_unknown_field": 1,
    }  # fmt: skip
    response = post(server, CHAT, body)
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] <= 2


def test_token_ids_outside_the_vocabulary_are_400(server):
    error_of(post(server, COMPLETIONS, {"model": server.model, "prompt": [10**7]}), 400)


def test_unknown_route_is_404_in_the_envelope(server):
    error_of(httpx.get(f"{server.base_url}/v1/nothing-here"), 404)
