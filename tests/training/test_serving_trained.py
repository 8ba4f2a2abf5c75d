"""Trained sets load into the real server and serve the reference's greedy tokens; `orthoserve eval`'s
HTTP scoring gives the same answers as its reference scoring."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from openai import OpenAI
from transformers import AutoTokenizer

from adapters.evaluation.http_client import score_over_http
from adapters.evaluation.reference_scoring import score_with_reference
from adapters.reference import ReferenceModel, RowRoute, reference_greedy
from adapters.training.csr import CsrItem
from server_process import RunningServer
from tests.training.conftest import WORDS, train_toy

PROMPTS = ["Is river listed?\nAnswer:", "The capital of France is", "Is table listed?\nAnswer: no. Is"]
MAX_TOKENS = 6


@pytest.fixture(scope="module")
def trained_sets(adapter_root: Path, tiny_model_dir: Path, test_svd_cache: Path) -> dict[str, Path]:
    """kind → a set trained on the toy tasks, named trained-<kind>, under the shared server's adapter root."""
    sets = {}
    for kind in ("moore", "badit", "lora"):
        sets[kind] = adapter_root / f"trained-{kind}"
        train_toy(kind, tiny_model_dir, sets[kind], test_svd_cache, epochs=6, loss="completion")
    return sets


@pytest.fixture(scope="module")
def fp32_server(server: RunningServer, trained_sets: dict[str, Path]) -> Iterator[RunningServer]:
    """The shared fp32 server (the reference is fp32), with the trained sets loaded through the admin API."""
    headers = {"Authorization": f"Bearer {server.admin_token}"}
    with httpx.Client(base_url=server.base_url, headers=headers, timeout=300) as admin:
        for path in trained_sets.values():
            loaded = admin.post("/v1/adapter-sets", json={"name": path.name, "path": str(path)})
            assert loaded.status_code == 201, loaded.text
        yield server
        for path in trained_sets.values():
            admin.delete(f"/v1/adapter-sets/{path.name}", params={"wait": True})


@pytest.mark.parametrize("kind", ["moore", "badit", "lora"])
def test_trained_set_serves_the_reference_greedy_tokens(kind, fp32_server, trained_sets, tiny_model_dir, test_svd_cache):
    name = f"trained-{kind}"
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    client = OpenAI(base_url=f"{fp32_server.base_url}/v1", api_key="unused")
    tags = [(f"{name}/same", "same"), (f"{name}/flip", "flip")] if kind == "moore" else [(name, None)]
    requests = [(tokenizer(p)["input_ids"], name, task) for p in PROMPTS for _, task in tags]
    expected = reference_greedy(tiny_model_dir, {name: trained_sets[kind]}, requests, MAX_TOKENS, cache_dir=test_svd_cache)
    base = reference_greedy(tiny_model_dir, {}, [(ids, None, None) for ids, _, _ in requests], MAX_TOKENS)
    assert [tokens for tokens, _ in expected] != [tokens for tokens, _ in base]
    for (ids, _, task), (tokens, _) in zip(requests, expected):
        model = f"{name}/{task}" if task else name
        reply = client.completions.create(model=model, prompt=ids, max_tokens=MAX_TOKENS, temperature=0)
        if tokenizer.eos_token_id in tokens:  # the server stops at EOS (the sets learnt to end their answers)
            tokens = tokens[: tokens.index(tokenizer.eos_token_id)]
        assert reply.choices[0].text == tokenizer.decode(tokens), (model, tokenizer.decode(ids))


def test_eval_scores_the_same_answers_through_the_server_and_the_reference(
    fp32_server, trained_sets, tiny_model_dir, test_svd_cache
):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    items = [
        CsrItem(task, f"Is {word} listed?\nAnswer:", ("yes", "no"), (index + 1 + (task == "flip")) % 2)
        for task in ("same", "flip")
        for index, word in enumerate(WORDS)
    ]
    served = score_over_http(items, tokenizer, f"{fp32_server.base_url}/v1", lambda item: f"trained-moore/{item.task}", batch_size=5)
    reference = ReferenceModel.from_pretrained(tiny_model_dir, {"s": trained_sets["moore"]}, test_svd_cache)
    expected = score_with_reference(items, tokenizer, reference, lambda item: RowRoute("s", item.task))
    assert [s.prediction for s in served] == [s.prediction for s in expected]
    assert [s.greedy for s in served] == [s.greedy for s in expected]
    assert [(s.task, s.index) for s in served] == [(s.task, s.index) for s in expected]
    assert sum(s.correct for s in served) >= 12  # the trained set answers most of its two tasks right
