"""More adapter sets than engine slots, on the real server (8 slots per method): every set serves the
reference's tokens, a set evicted and brought back serves the same tokens, a set with a running
request keeps its slot, pinned sets stay, and a resolver root serves new folders on first request."""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from openai import OpenAI
from prometheus_client.parser import text_string_to_metric_families

from adapters.reference import reference_greedy
from tests.router.adapter_sets import make_broken_set, make_set

SLOTS = 8
SETS_PER_KIND = SLOTS + 3
PROMPT_IDS = [5, 17, 33, 40, 2, 9, 71]
MAX_TOKENS = 6
TASKS = {"lora": ("chat",), "moore": ("boolq", "piqa"), "badit": ("default",)}


def tag(name: str, kind: str) -> str:
    return f"{name}/{TASKS[kind][0]}"


def texts(server, tags: list[str], concurrency: int) -> list[list[int]]:
    """The greedy token ids each tag generates, requests sent `concurrency` at a time."""
    client = OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", timeout=300, max_retries=0)

    def one(model: str) -> list[int]:
        reply = client.completions.create(
            model=model, prompt=PROMPT_IDS, max_tokens=MAX_TOKENS, temperature=0, extra_body={"return_token_ids": True}
        )
        return reply.choices[0].token_ids

    with ThreadPoolExecutor(concurrency) as pool:
        return list(pool.map(one, tags))


def counter(server, name: str, **labels: str) -> float:
    text = httpx.get(f"{server.base_url}/metrics", timeout=30).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )


@pytest.mark.parametrize("kind", ["lora", "moore", "badit"])
def test_every_set_serves_through_fewer_slots(kind, server, admin, write_set, tiny_model_dir, test_svd_cache):
    names = [f"many-{kind}-{i}" for i in range(SETS_PER_KIND)]
    paths = {name: write_set(name, kind=kind, tasks=TASKS[kind], seed=500 + i) for i, name in enumerate(names)}
    for name in names:
        admin.load(name, paths[name])
    tiers = {e["name"]: e["tier"] for e in admin.listing()["data"] if e["name"] in paths}
    assert sum(tier == "slot" for tier in tiers.values()) <= SLOTS and "disk" in tiers.values()
    swap_ins_before = counter(server, "orthoserve_adapter_swap_ins_total", kind=kind)

    first = texts(server, [tag(n, kind) for n in names], concurrency=SETS_PER_KIND)
    again = texts(server, [tag(n, kind) for n in reversed(names)], concurrency=1)[::-1]
    assert again == first, "a set evicted and brought back serves the same tokens"

    requests = [(PROMPT_IDS, name, TASKS[kind][0]) for name in names]
    expected = reference_greedy(tiny_model_dir, paths, requests, MAX_TOKENS, cache_dir=test_svd_cache)
    assert first == [tokens for tokens, _ in expected]
    assert len({tuple(tokens) for tokens in first}) >= SETS_PER_KIND // 2, "the random sets must be told apart"
    assert counter(server, "orthoserve_adapter_swap_ins_total", kind=kind) - swap_ins_before >= SETS_PER_KIND - SLOTS
    assert counter(server, "orthoserve_adapter_evictions_total", kind=kind) > 0
    assert counter(server, "orthoserve_adapter_swap_in_seconds_count", kind=kind) > 0


def _held_while_others_churn(server, admin, names: list[str]) -> list[tuple[int, str]]:
    """(in_flight, tier) of names[0], sampled while three long requests in a row run on it and the other
    sets churn through the slots."""
    done = threading.Event()
    seen: list[tuple[int, str]] = []

    def long_requests() -> None:
        try:
            body = {"model": f"{names[0]}/chat", "prompt": PROMPT_IDS, "max_tokens": 480, "temperature": 0, "ignore_eos": True}
            for _ in range(3):
                response = httpx.post(f"{server.base_url}/v1/completions", json=body, timeout=300)
                assert response.status_code == 200, response.text
        finally:
            done.set()

    def watch() -> None:
        while not done.is_set():
            entry = next(e for e in admin.listing()["data"] if e["name"] == names[0])
            seen.append((entry["in_flight"], entry["tier"]))

    threads = [threading.Thread(target=long_requests), threading.Thread(target=watch)]
    for thread in threads:
        thread.start()
    try:
        while not done.is_set():
            texts(server, [f"{name}/chat" for name in names[1:]], concurrency=4)
    finally:
        for thread in threads:
            thread.join()
    return seen


def test_a_set_with_a_running_request_keeps_its_slot(server, admin, write_set):
    names = [f"held-{i}" for i in range(SETS_PER_KIND)]
    for i, name in enumerate(names):
        admin.load(name, write_set(name, kind="lora", tasks=("chat",), seed=700 + i))
    evictions_before = counter(server, "orthoserve_adapter_evictions_total", kind="lora")
    # The listing answers slowly under load: play the scene again until it has been seen in flight.
    held: list[str] = []
    for _ in range(3):
        held += [tier for in_flight, tier in _held_while_others_churn(server, admin, names) if in_flight > 0]
        if held:
            break
    assert held and set(held) == {"slot"}
    assert counter(server, "orthoserve_adapter_evictions_total", kind="lora") > evictions_before


def test_pinned_set_stays_in_its_slot(server, admin, write_set):
    pinned = admin.load("pinned-lora", write_set("pinned-lora", kind="lora", tasks=("chat",), seed=800), pin=True)
    assert pinned["pinned"] and pinned["tier"] == "slot"
    names = [f"churn-{i}" for i in range(SETS_PER_KIND)]
    for i, name in enumerate(names):
        admin.load(name, write_set(name, kind="lora", tasks=("chat",), seed=810 + i))
    texts(server, [f"{name}/chat" for name in names], concurrency=4)
    listed = {e["name"]: e for e in admin.listing()["data"]}
    assert listed["pinned-lora"]["tier"] == "slot"
    assert texts(server, ["pinned-lora/chat"], concurrency=1)


def test_resolver_root_serves_new_folders_on_first_request(server, admin, resolver_root: Path, tiny_base, test_svd_cache):
    make_set(resolver_root / "found", tiny_base, kind="lora", tasks=("chat",), seed=900, svd_cache_dir=test_svd_cache)
    make_broken_set(resolver_root / "found", resolver_root / "found-nan", "nan")
    outside = resolver_root.parent / "outside-resolver"
    make_set(outside, tiny_base, kind="lora", tasks=("chat",), seed=901, svd_cache_dir=test_svd_cache)
    os.symlink(outside, resolver_root / "escape")
    client = OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0)

    reply = client.completions.create(model="found/chat", prompt=PROMPT_IDS, max_tokens=MAX_TOKENS, temperature=0)
    assert reply.model == "found/chat" and reply.choices[0].text is not None
    admin.loaded.add("found")
    assert "found" in {e["name"] for e in admin.listing()["data"]}

    def status(model: str) -> tuple[int, str]:
        body = {"model": model, "prompt": PROMPT_IDS, "max_tokens": 2}
        response = httpx.post(f"{server.base_url}/v1/completions", json=body, timeout=120)
        return response.status_code, response.json()["error"]["code"]

    assert status("found-nan/chat") == (422, "non_finite_tensor")
    assert status("escape/chat") == (403, "path_not_allowed")
    assert status("absent/chat") == (404, "model_not_found")
    assert not {"found-nan", "escape", "absent"} & {e["name"] for e in admin.listing()["data"]}


def test_waiting_for_a_slot_is_bounded_by_the_deadline(server, admin, write_set):
    """Every LoRA slot pinned: a request for another LoRA set waits, and its deadline ends the wait
    with 504; once a slot is free again, the set serves."""
    for i in range(SLOTS):
        admin.load(f"wall-{i}", write_set(f"wall-{i}", kind="lora", tasks=("chat",), seed=950 + i), pin=True)
    admin.load("waiting", write_set("waiting", kind="lora", tasks=("chat",), seed=990))
    body = {"model": "waiting/chat", "prompt": PROMPT_IDS, "max_tokens": 2}
    timed_out = httpx.post(f"{server.base_url}/v1/completions", json=body, headers={"x-request-timeout": "2"}, timeout=60)
    assert timed_out.status_code == 504 and timed_out.json()["error"]["code"] == "request_timeout"
    assert next(e for e in admin.listing()["data"] if e["name"] == "waiting")["tier"] == "disk"
    admin.unload("wall-0")
    served = httpx.post(f"{server.base_url}/v1/completions", json=body, timeout=120)
    assert served.status_code == 200, served.text
