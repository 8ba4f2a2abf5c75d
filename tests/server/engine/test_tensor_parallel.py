"""Adapter sets on a tensor-parallel server: `orthoserve serve --tensor-parallel-size 2` on the CPU.

One TP=2 server for the module. The model has 8 attention heads and 2 KV heads (head_dim 64), so vLLM
can split it over 2 ranks; the server binds each worker to a core of its own by itself.
- Exactness: sets adapt column-parallel layers (qkv, gate_up: output rows split) and row-parallel ones
  (o, down: input columns split, partial products summed over ranks), served in one mixed batch with
  base rows, equal to the fp32 PyTorch reference (which TP=1 equals too: tests/server/engine/
  test_adapter_exactness.py).
- Each rank holds its share of the sets and of the shared MoORE factors.
- Hot loading: sets of every kind load, answer, are replaced while requests run (each request finishes
  on its version), are unloaded with their memory given back on both ranks, and a bad set changes nothing.
- More LoRA sets than slots are evicted and brought back on both ranks, serving the same tokens.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil
import pytest
from openai import OpenAI
from server_process import RunningServer, start_server

from adapters.badit.config import BaditConfig
from adapters.base_model import describe_base_model
from adapters.format import check_structure
from adapters.initialise import init_adapter_set
from adapters.lora.config import LoraConfig
from adapters.reference import reference_greedy
from tests.router.adapter_sets import make_broken_set, make_set
from tests.tiny_model import build_tiny_llama

VERSION_HEADER = "x-orthoserve-adapter-set"
PROMPT = "The capital of France is"
LORA_SLOTS = 2  # fewer LoRA slots than the sets the eviction test registers
MAX_LORA_RANK = 8
pytestmark = pytest.mark.first

MAX_TOKENS = 6
# name → (kind, tasks, target modules, config)
SETS = {
    "moore": ("moore", ["arc-e", "boolq"], None, None),
    "badit": ("badit", ["default"], ["gate_proj", "down_proj"], None),
    "badit-task": ("badit", ["summarise", "classify"], None, BaditConfig(routing="task")),
    "lora": ("lora", ["chat"], ["q_proj", "v_proj", "o_proj", "down_proj"], None),
}
PROMPTS = [[5, 17, 33, 40, 2, 9], [100, 7, 64, 3], [11, 12, 13, 14, 15, 16, 17, 18, 19]]
MIXED = [
    (PROMPTS[0], None, None),
    (PROMPTS[1], "moore", "boolq"),
    (PROMPTS[2], "moore", "arc-e"),
    (PROMPTS[0], "badit", None),
    (PROMPTS[1], "badit-task", "classify"),
    (PROMPTS[2], "lora", None),
    (PROMPTS[1], None, None),
]


@pytest.fixture(scope="module")
def tp_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningServer, Path, Path]]:
    work = tmp_path_factory.mktemp("tp-server")
    model = build_tiny_llama(work / "model", hidden_size=512, num_heads=8, num_kv_heads=2, intermediate_size=1024)
    root, cache = work / "sets", work / "cache"
    root.mkdir()
    # fp32: answers are compared with the fp32 reference and across batches.
    extra = [
        "--tensor-parallel-size", "2", "--dtype", "float32", "--adapter-root", str(root), "--cache-dir", str(cache),
        "--max-lora-sets", str(LORA_SLOTS), "--max-lora-rank", str(MAX_LORA_RANK),
    ]  # fmt: skip
    with start_server(model, "tp-llama", work / "server.log", extra) as server:
        yield server, model, root


@pytest.fixture(scope="module")
def admin(tp_server) -> Iterator[httpx.Client]:
    server, _, _ = tp_server
    headers = {"Authorization": f"Bearer {server.admin_token}"}
    with httpx.Client(base_url=server.base_url, headers=headers, timeout=300) as client:
        yield client


def svd_cache(root: Path) -> Path:
    return root.parent / "cache" / "svd"


def tree_rss(process: psutil.Process) -> int:
    return sum(member.memory_info().rss for member in [process, *process.children(recursive=True)])


def complete(http: httpx.Client, model: str) -> httpx.Response:
    return http.post("/v1/completions", json={"model": model, "prompt": PROMPT, "max_tokens": 8, "temperature": 0})


def listing(admin: httpx.Client) -> dict:
    response = admin.get("/v1/adapter-sets")
    assert response.status_code == 200, response.text
    return response.json()


def test_server_binds_tensor_parallel_workers_itself(tp_server) -> None:
    server, _, _ = tp_server
    assert "bound to cores 0|1" in server.log_path.read_text(errors="replace")


@pytest.fixture(scope="module")
def exact_sets(tp_server, admin: httpx.Client) -> Iterator[dict[str, Path]]:
    """The sets of SETS, loaded; unloaded after the module's exactness tests."""
    _, model, root = tp_server
    base = describe_base_model(model)
    paths = {}
    for seed, (name, (kind, tasks, targets, config)) in enumerate(SETS.items(), start=1):
        paths[name] = root / f"exact-{name}"
        init_adapter_set(
            paths[name], kind=kind, base=base, tasks=tasks, mode="random", config=config,
            target_modules=targets, cache_dir=svd_cache(root), seed=seed,
        )  # fmt: skip
    for name, path in paths.items():
        loaded = admin.post("/v1/adapter-sets", json={"name": name, "path": str(path)})
        assert loaded.status_code == 201, loaded.text
    yield paths
    for name in paths:
        assert admin.delete(f"/v1/adapter-sets/{name}", params={"wait": True}).status_code == 200


@pytest.fixture(scope="module")
def served_mixed(tp_server, exact_sets) -> list[tuple[list[int], list[float]]]:
    """(token ids, logprobs) of every MIXED request, all sent at once so that they share batches."""
    server, _, _ = tp_server
    client = OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", timeout=300, max_retries=0)

    def one(row: tuple[list[int], str | None, str | None]) -> tuple[list[int], list[float]]:
        prompt, name, task = row
        model = server.model if name is None else (f"{name}/{task}" if task else name)
        reply = client.completions.create(
            model=model, prompt=prompt, max_tokens=MAX_TOKENS, temperature=0, logprobs=0,
            extra_body={"return_token_ids": True, "ignore_eos": True},  # the reference decodes past EOS
        )  # fmt: skip
        choice = reply.choices[0]
        return list(choice.token_ids), list(choice.logprobs.token_logprobs)

    with ThreadPoolExecutor(len(MIXED)) as pool:
        return list(pool.map(one, MIXED))


def test_tp2_mixed_batch_equals_the_reference(tp_server, exact_sets, served_mixed) -> None:
    _, model, root = tp_server
    reference = reference_greedy(
        model,
        exact_sets,
        [(prompt, name, task or (SETS[name][1][0] if name else None)) for prompt, name, task in MIXED],
        MAX_TOKENS,
        cache_dir=svd_cache(root),
    )
    for row, (tokens, logprobs), (ref_tokens, ref_logprobs) in zip(MIXED, served_mixed, reference):
        assert tokens == ref_tokens, row
        assert max(abs(a - b) for a, b in zip(logprobs, ref_logprobs)) <= 1e-4, row


def test_adapters_change_tp2_output(served_mixed) -> None:
    base_tokens = served_mixed[0][0]
    assert served_mixed[3][0] != base_tokens, "BADIT on the base prompt"


def test_each_rank_holds_its_share(tp_server, admin: httpx.Client, exact_sets) -> None:
    """Both ranks hold the same, and less than one engine holding everything: the shared factors (U, S
    and V of every projection) and the LoRA set (its A and B in fp32) are split over the ranks."""
    _, model, _ = tp_server
    base = describe_base_model(model)
    listed = listing(admin)
    ranks = listed["engine_bytes_per_rank"]
    assert len(ranks) == 2 and ranks[0] == ranks[1]
    held = {entry["name"]: entry["bytes"] for entry in listed["data"]}  # what one rank holds of each set
    assert ranks[0]["slots"] == sum(held[name] for name in exact_sets)
    assert 0 < held["lora"] < 4 * check_structure(exact_sets["lora"], base).num_elements
    whole_factors = 4 * sum((out + 1 + in_) * base.rank(proj) for _, proj in base.targets() for out, in_ in [base.shape(proj)])
    assert 0 < ranks[0]["base_factors"] < whole_factors


def test_a_set_the_workers_cannot_hold_is_refused_and_changes_nothing(tp_server, admin: httpx.Client, exact_sets) -> None:
    _, model, root = tp_server
    too_big = root / "lora-rank-16"
    init_adapter_set(
        too_big, kind="lora", base=describe_base_model(model), tasks=["chat"], mode="random",
        config=LoraConfig(rank=2 * MAX_LORA_RANK), target_modules=["q_proj", "o_proj"], cache_dir=svd_cache(root),
    )  # fmt: skip
    before = listing(admin)
    refused = admin.post("/v1/adapter-sets", json={"name": "too-big", "path": str(too_big)})
    assert refused.status_code == 507 and refused.json()["error"]["code"] == "adapter_capacity_exceeded", refused.text
    assert listing(admin) == before


def test_load_replace_under_traffic_unload_and_bad_set(tp_server, admin: httpx.Client) -> None:
    server, model, root = tp_server
    base = describe_base_model(model)
    cache = svd_cache(root)
    sets = {
        "v1": make_set(root / "v1", base, seed=1, svd_cache_dir=cache),
        "v2": make_set(root / "v2", base, seed=2, svd_cache_dir=cache),
        "hot-lora": make_set(root / "hot-lora", base, kind="lora", tasks=["chat"], seed=3, svd_cache_dir=cache),
        "hot-badit": make_set(root / "hot-badit", base, kind="badit", tasks=["default"], seed=4, svd_cache_dir=cache),
    }
    http = httpx.Client(base_url=server.base_url, timeout=120)
    process = psutil.Process(server.process.pid)
    assert complete(http, server.model).status_code == 200
    before = tree_rss(process)

    for name in ("hot-lora", "hot-badit"):
        assert admin.post("/v1/adapter-sets", json={"name": name, "path": str(sets[name])}).status_code == 201
        assert complete(http, name).status_code == 200
    answers = {}
    for version in ("v1", "v2"):
        loaded = admin.post("/v1/adapter-sets", json={"name": "mtl", "path": str(sets[version]), "replace": True})
        assert loaded.status_code == 201, loaded.text
        response = complete(http, "mtl/boolq")
        answers[loaded.json()["version"]] = response.json()["choices"][0]["text"]
    assert len(set(answers.values())) == 2, "the two versions must be told apart by their output"

    results: list[httpx.Response] = []
    stop = threading.Event()

    def traffic() -> None:
        with httpx.Client(base_url=server.base_url, timeout=120) as client:
            while not stop.is_set():
                results.append(complete(client, "mtl/boolq"))

    workers = [threading.Thread(target=traffic) for _ in range(4)]
    for worker in workers:
        worker.start()
    try:
        for version in ("v1", "v2", "v1"):
            time.sleep(1.0)
            replaced = admin.post("/v1/adapter-sets", json={"name": "mtl", "path": str(sets[version]), "replace": True})
            assert replaced.status_code == 201, replaced.text
            answers[replaced.json()["version"]] = answers[1 if version == "v1" else 2]
        time.sleep(1.0)
    finally:
        stop.set()
        for worker in workers:
            worker.join()
    assert results and all(response.status_code == 200 for response in results)
    for response in results:
        version = int(response.headers[VERSION_HEADER].partition("@")[2])
        assert response.json()["choices"][0]["text"] == answers[version], "a request answered unlike its version"

    bad = make_broken_set(sets["v1"], root / "bad", "nan")
    refused = admin.post("/v1/adapter-sets", json={"name": "bad", "path": str(bad)})
    assert refused.status_code == 422 and refused.json()["error"]["code"] == "non_finite_tensor"
    assert complete(http, "mtl/boolq").json()["choices"][0]["text"] == answers[max(answers)]

    for name in ("mtl", "hot-lora", "hot-badit"):
        assert admin.delete(f"/v1/adapter-sets/{name}", params={"wait": True}).status_code == 200
    deadline = time.monotonic() + 30
    while abs(tree_rss(process) - before) > 0.05 * before:
        assert time.monotonic() < deadline, f"RSS {tree_rss(process)} did not return to {before} ± 5%"
        time.sleep(0.5)
    assert complete(http, server.model).status_code == 200


def test_more_sets_than_slots_on_both_ranks(tp_server, admin: httpx.Client) -> None:
    server, model, root = tp_server
    base = describe_base_model(model)
    names = [f"tp-lora-{i}" for i in range(5)]
    http = httpx.Client(base_url=server.base_url, timeout=120)
    for i, name in enumerate(names):
        path = make_set(root / name, base, kind="lora", tasks=["chat"], seed=40 + i, svd_cache_dir=svd_cache(root))
        assert admin.post("/v1/adapter-sets", json={"name": name, "path": str(path)}).status_code == 201
    first = [complete(http, name).json()["choices"][0]["text"] for name in names]
    again = [complete(http, name).json()["choices"][0]["text"] for name in names]
    assert again == first and len(set(first)) >= 3
    # Every LoRA set counts, the exactness tests' one too.
    tiers = [entry["tier"] for entry in listing(admin)["data"] if entry["kind"] == "lora"]
    assert tiers.count("slot") == LORA_SLOTS and tiers.count("host") == len(tiers) - LORA_SLOTS
    for name in names:
        assert admin.delete(f"/v1/adapter-sets/{name}", params={"wait": True}).status_code == 200
