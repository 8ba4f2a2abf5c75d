"""The OpenAI surface users' tools send, through the official `openai` client, for the base model and
for a task tag of every adapter kind: structured outputs, tool calls, logit_bias, echo with prompt
logprobs, streaming usage, vLLM's sampling extras, the Responses API and tokenization.

The tiny random model likes to emit whitespace forever inside a JSON grammar, so JSON-shaped requests
forbid whitespace tokens with `logit_bias` (a feature under test too).
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import openai
import pytest
from transformers import AutoTokenizer

PROMPT = "The quick brown fox"
MESSAGES = [{"role": "user", "content": "Is Paris in France?"}]
VERSION_HEADER = "x-orthoserve-adapter-set"
ANSWER_SCHEMA = {
    "type": "object",
    "properties": {"answer": {"type": "string", "enum": ["yes", "no"]}},
    "required": ["answer"],
    "additionalProperties": False,
}
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "strict": True,
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "enum": ["Paris", "Rome"]}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}
SETS = {
    "surf-moore": dict(kind="moore", tasks=("alpha", "beta"), seed=21),
    "surf-lora": dict(kind="lora", tasks=("chat",), seed=22),
    "surf-badit": dict(kind="badit", tasks=("default",), seed=23),
}
TAGS = ["base", "surf-moore/beta", "surf-lora", "surf-badit"]


@pytest.fixture(scope="module")
def loaded_sets(server, write_set) -> Iterator[dict[str, dict]]:
    headers = {"Authorization": f"Bearer {server.admin_token}"}
    with httpx.Client(base_url=server.base_url, headers=headers, timeout=300) as http:
        loaded = {}
        for name, spec in SETS.items():
            response = http.post("/v1/adapter-sets", json={"name": name, "path": str(write_set(name, **spec))})
            assert response.status_code == 201, response.text
            loaded[name] = response.json()
        yield loaded
        for name in loaded:
            http.delete(f"/v1/adapter-sets/{name}", params={"wait": True})


@pytest.fixture(params=TAGS)
def tag(request, server, loaded_sets) -> str:
    """A `model` tag: the base model, a MoORE task, a one-task LoRA set, an input-routed BADIT set."""
    return server.model if request.param == "base" else request.param


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0, timeout=300)


@pytest.fixture(scope="module")
def no_whitespace(tiny_model_dir) -> dict[str, int]:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    blanks = [i for i in range(len(tokenizer)) if (text := tokenizer.decode([i])) and not text.strip()]
    assert blanks
    return {str(token): -100 for token in blanks}


def expect_header(raw, server, tag: str, loaded_sets: dict[str, dict]) -> None:
    set_name = tag.partition("/")[0]
    expected = None if tag == server.model else f"{set_name}@{loaded_sets[set_name]['version']}"
    assert raw.headers.get(VERSION_HEADER) == expected


def test_json_schema_response_format_parses_for_every_tag(client, server, tag, loaded_sets, no_whitespace):
    raw = client.chat.completions.with_raw_response.create(
        model=tag, messages=MESSAGES, max_tokens=40, temperature=0, logit_bias=no_whitespace,
        response_format={"type": "json_schema", "json_schema": {"name": "answer", "schema": ANSWER_SCHEMA}},
    )  # fmt: skip
    expect_header(raw, server, tag, loaded_sets)
    reply = raw.parse()
    assert reply.model == tag
    assert json.loads(reply.choices[0].message.content)["answer"] in {"yes", "no"}


def test_vllm_structured_output_parameters(client, tag):
    choice = client.completions.create(
        model=tag, prompt=PROMPT, max_tokens=8, temperature=0, extra_body={"structured_outputs": {"choice": ["red", "blue"]}}
    )
    assert choice.choices[0].text in {"red", "blue"}
    regex = client.chat.completions.create(
        model=tag, messages=MESSAGES, max_tokens=12, temperature=0,
        extra_body={"structured_outputs": {"regex": "[0-9]{3}-[a-z]{2}"}},
    )  # fmt: skip
    text = regex.choices[0].message.content
    assert len(text) == 6 and text[:3].isdigit() and text[3] == "-" and text[4:].isalpha()


def test_named_tool_choice_returns_a_parseable_call(client, tag, no_whitespace):
    reply = client.chat.completions.create(
        model=tag, messages=MESSAGES, max_tokens=200, temperature=0, logit_bias=no_whitespace,
        tools=[WEATHER_TOOL], tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )  # fmt: skip
    (call,) = reply.choices[0].message.tool_calls
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments)["city"] in {"Paris", "Rome"}


def test_logit_bias_changes_the_greedy_token(client, tag):
    def first_token(**extra) -> tuple[str, list[str]]:
        result = client.completions.create(
            model=tag, prompt=PROMPT, max_tokens=1, temperature=0, logprobs=2,
            extra_body={"return_tokens_as_token_ids": True}, **extra,
        )  # fmt: skip
        logprobs = result.choices[0].logprobs
        return logprobs.tokens[0], sorted(logprobs.top_logprobs[0], key=logprobs.top_logprobs[0].get, reverse=True)

    greedy, ranked = first_token()
    runner_up = ranked[1].removeprefix("token_id:")
    assert greedy == ranked[0]
    biased, _ = first_token(logit_bias={runner_up: 100})
    assert biased == f"token_id:{runner_up}" != greedy


@pytest.mark.parametrize("max_tokens", [0, 1])
def test_echo_with_logprobs_returns_the_prompt_tokens(client, server, tag, max_tokens):
    """lm-evaluation-harness' loglikelihood request; an adapter's prompt logprobs are its own."""

    def echo(model: str):
        return client.completions.create(model=model, prompt=PROMPT, max_tokens=max_tokens, temperature=0, echo=True, logprobs=1)

    result = echo(tag)
    choice = result.choices[0]
    prompt_tokens = result.usage.prompt_tokens
    tokens, token_logprobs = choice.logprobs.tokens, choice.logprobs.token_logprobs
    assert len(tokens) == prompt_tokens + max_tokens == len(token_logprobs)
    assert "".join(tokens[:prompt_tokens]) == PROMPT and choice.text.startswith(PROMPT)
    assert token_logprobs[0] is None and all(lp <= 0 for lp in token_logprobs[1:])
    assert result.usage.completion_tokens == max(max_tokens, 1)  # vLLM runs (and counts) one step for max_tokens=0
    if tag != server.model:  # random adapter weights: the prompt was scored by the adapter, not the base
        assert echo(server.model).choices[0].logprobs.token_logprobs[1:] != token_logprobs[1:]


def test_streaming_with_usage_echoes_the_tag(client, server, tag, loaded_sets):
    with client.chat.completions.with_streaming_response.create(
        model=tag, messages=MESSAGES, max_tokens=6, temperature=0, stream=True, stream_options={"include_usage": True}
    ) as raw:
        expect_header(raw, server, tag, loaded_sets)
        chunks = list(raw.parse())
    assert {chunk.model for chunk in chunks} == {tag}
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 6
    assert all(chunk.usage is None for chunk in chunks[:-1])


def test_sampling_fields_and_vllm_extras(client, tag):
    exact = client.completions.create(
        model=tag, prompt=PROMPT, max_tokens=7, temperature=0, extra_body={"min_tokens": 7, "ignore_eos": True}
    )
    assert exact.usage.completion_tokens == 7
    greedy = exact.choices[0].text
    top_k_one = client.completions.create(
        model=tag, prompt=PROMPT, max_tokens=7, temperature=1.0, seed=3, extra_body={"top_k": 1, "ignore_eos": True}
    )
    assert top_k_one.choices[0].text == greedy
    sampled = client.completions.create(
        model=tag, prompt=PROMPT, max_tokens=6, n=2, best_of=3, seed=11, temperature=1.0,
        extra_body={"min_p": 0.05, "repetition_penalty": 1.2, "ignore_eos": True},
    )  # fmt: skip
    assert sorted(choice.index for choice in sampled.choices) == [0, 1]
    again = client.completions.create(
        model=tag, prompt=PROMPT, max_tokens=6, n=2, best_of=3, seed=11, temperature=1.0,
        extra_body={"min_p": 0.05, "repetition_penalty": 1.2, "ignore_eos": True},
    )  # fmt: skip
    assert [c.text for c in again.choices] == [c.text for c in sampled.choices]
    stop = greedy[2:4]
    cut = client.completions.create(model=tag, prompt=PROMPT, max_tokens=7, temperature=0, stop=[stop]).choices[0]
    assert cut.finish_reason == "stop" and cut.text == greedy[: greedy.find(stop)]
    chat = client.chat.completions.create(
        model=tag, messages=MESSAGES, max_tokens=3, temperature=0, logprobs=True, top_logprobs=3
    )
    assert all(len(entry.top_logprobs) == 3 for entry in chat.choices[0].logprobs.content)


def test_responses_api_serves_the_tag(client, server, tag, loaded_sets):
    raw = client.responses.with_raw_response.create(model=tag, input="Say hello.", max_output_tokens=8, temperature=0)
    expect_header(raw, server, tag, loaded_sets)
    response = raw.parse()
    assert response.model == tag and response.status in {"completed", "incomplete"}
    assert response.usage.output_tokens > 0


def test_tokenize_and_detokenize_accept_tags_and_refuse_unknown_ones(server, loaded_sets):
    def post(path: str, body: dict) -> httpx.Response:
        return httpx.post(f"{server.base_url}{path}", json=body, timeout=60)

    base = post("/tokenize", {"model": server.model, "prompt": PROMPT}).json()
    assert post("/tokenize", {"model": "surf-moore/alpha", "prompt": PROMPT}).json()["tokens"] == base["tokens"]
    text = post("/detokenize", {"model": "surf-lora", "tokens": base["tokens"]}).json()["prompt"]
    assert text == PROMPT
    unknown = post("/tokenize", {"model": "surf-moore/gamma", "prompt": PROMPT})
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "task_not_found"
