"""The OpenAI-compatible endpoints, exercised through the official `openai` client against a real server."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

PROMPT = "The quick brown fox"
MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0, timeout=120)


def test_models_lists_the_served_model(client, server):
    models = client.models.list()
    assert models.data[0].id == server.model  # adapter sets and their tasks follow the base model
    assert models.data[0].object == "model"


def test_health_reports_ok(server):
    response = httpx.get(f"{server.base_url}/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_completion_returns_text_and_usage(client, server):
    result = client.completions.create(model=server.model, prompt=PROMPT, max_tokens=6, temperature=0)
    assert result.object == "text_completion"
    assert result.model == server.model
    assert len(result.choices) == 1
    choice = result.choices[0]
    assert choice.index == 0 and choice.finish_reason == "length" and choice.text
    assert result.usage.completion_tokens == 6
    assert result.usage.prompt_tokens > 0
    assert result.usage.total_tokens == result.usage.prompt_tokens + 6


def test_completion_stream_matches_non_streaming(client, server):
    whole = client.completions.create(model=server.model, prompt=PROMPT, max_tokens=8, temperature=0)
    chunks = list(
        client.completions.create(
            model=server.model, prompt=PROMPT, max_tokens=8, temperature=0,
            stream=True, stream_options={"include_usage": True},
        )
    )  # fmt: skip
    text_chunks = [chunk for chunk in chunks if chunk.choices]
    assert len(text_chunks) > 1
    assert "".join(chunk.choices[0].text for chunk in text_chunks) == whole.choices[0].text
    assert text_chunks[-1].choices[0].finish_reason == "length"
    assert all(chunk.usage is None for chunk in text_chunks)
    assert chunks[-1].choices == [] and chunks[-1].usage.model_dump() == whole.usage.model_dump()


def test_chat_completion_returns_assistant_message(client, server):
    result = client.chat.completions.create(model=server.model, messages=MESSAGES, max_tokens=6, temperature=0)
    assert result.object == "chat.completion"
    choice = result.choices[0]
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason in {"length", "stop"}
    assert result.usage.completion_tokens <= 6
    assert result.usage.total_tokens == result.usage.prompt_tokens + result.usage.completion_tokens


def test_chat_stream_matches_non_streaming(client, server):
    whole = client.chat.completions.create(model=server.model, messages=MESSAGES, max_tokens=8, temperature=0)
    chunks = list(
        client.chat.completions.create(
            model=server.model, messages=MESSAGES, max_tokens=8, temperature=0,
            stream=True, stream_options={"include_usage": True},
        )
    )  # fmt: skip
    text_chunks = [chunk for chunk in chunks if chunk.choices]
    assert text_chunks[0].object == "chat.completion.chunk"
    assert text_chunks[0].choices[0].delta.role == "assistant"
    assert all(chunk.choices[0].delta.role is None for chunk in text_chunks[1:])
    assert "".join(chunk.choices[0].delta.content for chunk in text_chunks) == whole.choices[0].message.content
    assert text_chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_stream_ends_with_done_and_no_usage_unless_asked(server):
    body = {"model": server.model, "prompt": PROMPT, "max_tokens": 4, "stream": True}
    with httpx.stream("POST", f"{server.base_url}/v1/completions", json=body, timeout=120) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line.removeprefix("data: ") for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    payloads = [json.loads(event) for event in events[:-1]]
    assert payloads and all(payload.get("usage") is None for payload in payloads)
    assert sum(len(payload["choices"]) for payload in payloads) >= 1


def test_n_choices_are_indexed_and_counted(client, server):
    result = client.completions.create(
        model=server.model, prompt=PROMPT, max_tokens=5, temperature=1.0, seed=7, n=3
    )
    assert sorted(choice.index for choice in result.choices) == [0, 1, 2]
    assert result.usage.completion_tokens == 15
    chat = client.chat.completions.create(model=server.model, messages=MESSAGES, max_tokens=4, temperature=1.0, n=2)
    assert sorted(choice.index for choice in chat.choices) == [0, 1]


def test_batched_and_token_prompts(client, server):
    batched = client.completions.create(model=server.model, prompt=["one", "two"], max_tokens=3, temperature=1, n=2)
    assert sorted(choice.index for choice in batched.choices) == [0, 1, 2, 3]
    assert batched.usage.completion_tokens == 12
    tokens = client.completions.create(model=server.model, prompt=[5, 6, 7], max_tokens=3, temperature=0)
    assert tokens.usage.prompt_tokens == 3


def test_completion_logprobs(client, server):
    result = client.completions.create(model=server.model, prompt=PROMPT, max_tokens=5, temperature=0, logprobs=3)
    logprobs = result.choices[0].logprobs
    assert len(logprobs.tokens) == len(logprobs.token_logprobs) == len(logprobs.top_logprobs) == 5
    assert "".join(logprobs.tokens) == result.choices[0].text
    assert logprobs.text_offset[0] == 0
    for chosen, top in zip(logprobs.token_logprobs, logprobs.top_logprobs):
        assert 1 <= len(top) <= 3
        assert chosen <= 0 and chosen == pytest.approx(max(top.values()))  # greedy picks the top token


def test_chat_logprobs_with_top_alternatives(client, server):
    result = client.chat.completions.create(
        model=server.model, messages=MESSAGES, max_tokens=4, temperature=0, logprobs=True, top_logprobs=2
    )
    content = result.choices[0].logprobs.content
    assert len(content) == result.usage.completion_tokens
    for entry in content:
        assert len(entry.top_logprobs) == 2
        assert entry.top_logprobs[0].logprob >= entry.top_logprobs[1].logprob
        assert entry.logprob == pytest.approx(entry.top_logprobs[0].logprob)
        assert entry.bytes == list(entry.token.encode())


def test_stop_sequence_cuts_the_output(client, server):
    free = client.completions.create(model=server.model, prompt=PROMPT, max_tokens=24, temperature=0).choices[0].text
    cut = next(
        i for i in range(1, len(free) - 1) if free[i : i + 2].isalnum() and free.find(free[i : i + 2]) == i
    )
    stopped = client.completions.create(
        model=server.model, prompt=PROMPT, max_tokens=24, temperature=0, stop=[free[cut : cut + 2]]
    ).choices[0]
    assert stopped.finish_reason == "stop"
    assert stopped.text == free[:cut]


def test_seed_makes_sampling_reproducible(client, server):
    def sample(seed: int) -> str:
        result = client.completions.create(
            model=server.model, prompt=PROMPT, max_tokens=16, temperature=1.0, top_p=0.95, seed=seed
        )
        return result.choices[0].text

    assert sample(1234) == sample(1234)
    assert sample(1234) != sample(4321)


def test_server_survives_a_client_that_leaves_mid_stream(client, server):
    body = {"model": server.model, "prompt": PROMPT, "max_tokens": 400, "stream": True}
    with httpx.stream("POST", f"{server.base_url}/v1/completions", json=body, timeout=120) as response:
        first = next(response.iter_lines())
        assert first.startswith("data: ")
    result = client.completions.create(model=server.model, prompt=PROMPT, max_tokens=2, temperature=0)
    assert result.usage.completion_tokens == 2
