"""Task tags through the real server and the official `openai` client: every form and every refusal."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import openai
import pytest

from adapters.badit.config import BaditConfig

PROMPT = "The capital of France is"
VERSION_HEADER = "x-orthoserve-adapter-set"


@pytest.fixture(scope="module")
def tagged_sets(server, write_set) -> Iterator[dict[str, dict]]:
    """mtl: MoORE with two tasks; solo: one-task LoRA; abilities: input-routed BADIT; mix: task-routed BADIT."""
    specs = {
        "mtl": dict(kind="moore", tasks=("boolq", "piqa"), seed=1),
        "solo": dict(kind="lora", tasks=("chat",), seed=2),
        "abilities": dict(kind="badit", tasks=("default",), seed=3),
        "mix": dict(kind="badit", tasks=("summarise", "classify"), seed=4, config=BaditConfig(routing="task")),
    }
    headers = {"Authorization": f"Bearer {server.admin_token}"}
    with httpx.Client(base_url=server.base_url, headers=headers, timeout=300) as http:
        loaded = {}
        for name, spec in specs.items():
            response = http.post("/v1/adapter-sets", json={"name": name, "path": str(write_set(f"tags-{name}", **spec))})
            assert response.status_code == 201, response.text
            loaded[name] = response.json()
        yield loaded
        for name in loaded:
            http.delete(f"/v1/adapter-sets/{name}", params={"wait": True})


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0, timeout=120)


def complete(client: openai.OpenAI, model: str, task: str | None = None) -> tuple[str, str | None]:
    """Greedy text and version header of one completion."""
    extra_body = {"task": task} if task is not None else None
    raw = client.completions.with_raw_response.create(
        model=model, prompt=PROMPT, max_tokens=8, temperature=0, extra_body=extra_body
    )
    return raw.parse().choices[0].text, raw.headers.get(VERSION_HEADER)


def test_every_accepted_form(server, client, tagged_sets):
    base_text, base_header = complete(client, server.model)
    assert base_header is None
    version = tagged_sets["mtl"]["version"]
    boolq = complete(client, "mtl/boolq")
    assert boolq == complete(client, "mtl", task="boolq") == complete(client, "mtl/boolq", task="boolq")
    assert boolq[1] == f"mtl@{version}"
    piqa = complete(client, "mtl/piqa")
    assert piqa[1] == f"mtl@{version}"
    assert complete(client, "solo") == complete(client, "solo/chat")
    assert complete(client, "abilities")[1] == f"abilities@{tagged_sets['abilities']['version']}"
    assert complete(client, "mix", task="classify")[1].startswith("mix@")
    # Random adapters change the greedy text: the tag reached the engine and nothing fell back to the base.
    assert len({base_text, boolq[0], complete(client, "solo")[0], complete(client, "abilities")[0]}) == 4


def test_chat_and_streaming_carry_the_version(client, tagged_sets):
    raw = client.chat.completions.with_raw_response.create(
        model="mtl", messages=[{"role": "user", "content": "Hi"}], max_tokens=4, extra_body={"task": "piqa"}
    )
    assert raw.headers[VERSION_HEADER] == f"mtl@{tagged_sets['mtl']['version']}"
    assert raw.parse().choices[0].message.content is not None
    with client.completions.with_streaming_response.create(
        model="solo/chat", prompt=PROMPT, max_tokens=4, stream=True
    ) as stream:
        assert stream.headers[VERSION_HEADER] == f"solo@{tagged_sets['solo']['version']}"
        assert any(line.startswith("data:") for line in stream.iter_lines())


@pytest.mark.parametrize(
    ("model", "task", "error", "code"),
    [
        ("nope", None, openai.NotFoundError, "model_not_found"),
        ("nope/boolq", None, openai.NotFoundError, "model_not_found"),
        ("mtl/siqa", None, openai.NotFoundError, "task_not_found"),
        ("mtl", "siqa", openai.NotFoundError, "task_not_found"),
        ("mtl", None, openai.BadRequestError, "task_required"),
        ("mtl/boolq", "piqa", openai.BadRequestError, "invalid_task_tag"),
        ("mtl/", None, openai.BadRequestError, "invalid_task_tag"),
    ],
)
def test_refusals(client, tagged_sets, model, task, error, code):
    with pytest.raises(error) as refused:
        complete(client, model, task)
    assert refused.value.code == code
    if code in ("task_not_found", "task_required"):
        assert "boolq, piqa" in refused.value.message


def test_base_model_takes_no_task(server, client):
    with pytest.raises(openai.BadRequestError) as refused:
        complete(client, server.model, task="boolq")
    assert refused.value.param == "task"


def test_models_list_sets_and_tasks(server, client, tagged_sets):
    cards = {card.id: card for card in client.models.list().data}
    assert server.model in cards
    mtl = cards["mtl"].model_dump()
    assert mtl["parent"] == server.model
    assert mtl["orthoserve"] == {"kind": "moore", "version": tagged_sets["mtl"]["version"], "tasks": ["boolq", "piqa"]}
    task_card = cards["mtl/piqa"].model_dump()
    assert task_card["parent"] == "mtl" and task_card["orthoserve"]["kind"] == "moore"
    assert {"solo", "solo/chat", "abilities", "abilities/default", "mix/summarise", "mix/classify"} <= set(cards)
