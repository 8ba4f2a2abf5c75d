"""Hot loading on a tensor-parallel server: `orthoserve serve --tensor-parallel-size 2` on the CPU.

The server binds each engine worker to a core of its own by itself (no environment variable set).
Sets of every kind load, answer, are replaced while requests run (each request finishes on its
version), are unloaded with their memory given back on both ranks, and a bad set changes nothing.
More LoRA sets than slots are evicted and brought back on both ranks, serving the same tokens.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
from server_process import RunningServer, start_server

from adapters.base_model import describe_base_model
from tests.router.adapter_sets import make_broken_set, make_set
from tests.tiny_model import build_tiny_llama

VERSION_HEADER = "x-orthoserve-adapter-set"
PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def tp_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningServer, Path, Path]]:
    work = tmp_path_factory.mktemp("tp-server")
    model = build_tiny_llama(work / "model", hidden_size=512, num_heads=8, num_kv_heads=2, intermediate_size=1024)
    root, cache = work / "sets", work / "cache"
    root.mkdir()
    # fp32: answers are compared across batches, and bf16 GEMMs may round a row differently in another batch.
    extra = [
        "--tensor-parallel-size", "2", "--dtype", "float32", "--adapter-root", str(root), "--cache-dir", str(cache),
        "--max-lora-sets", "2",  # fewer LoRA slots than the sets the eviction test registers
    ]  # fmt: skip
    with start_server(model, "tp-llama", work / "server.log", extra) as server:
        yield server, model, root


def tree_rss(process: psutil.Process) -> int:
    return sum(member.memory_info().rss for member in [process, *process.children(recursive=True)])


def complete(http: httpx.Client, model: str) -> httpx.Response:
    return http.post("/v1/completions", json={"model": model, "prompt": PROMPT, "max_tokens": 8, "temperature": 0})


def test_server_binds_tensor_parallel_workers_itself(tp_server) -> None:
    server, _, _ = tp_server
    assert "bound to cores 0|1" in server.log_path.read_text(errors="replace")


def test_load_replace_under_traffic_unload_and_bad_set(tp_server) -> None:
    server, model, root = tp_server
    base = describe_base_model(model)
    cache = root.parent / "cache" / "svd"
    sets = {
        "v1": make_set(root / "v1", base, seed=1, svd_cache_dir=cache),
        "v2": make_set(root / "v2", base, seed=2, svd_cache_dir=cache),
        "lora": make_set(root / "lora", base, kind="lora", tasks=["chat"], seed=3, svd_cache_dir=cache),
        "badit": make_set(root / "badit", base, kind="badit", tasks=["default"], seed=4, svd_cache_dir=cache),
    }
    admin = httpx.Client(base_url=server.base_url, headers={"Authorization": f"Bearer {server.admin_token}"}, timeout=300)
    http = httpx.Client(base_url=server.base_url, timeout=120)
    process = psutil.Process(server.process.pid)
    assert complete(http, server.model).status_code == 200
    before = tree_rss(process)

    for name in ("lora", "badit"):
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

    for name in ("mtl", "lora", "badit"):
        assert admin.delete(f"/v1/adapter-sets/{name}", params={"wait": True}).status_code == 200
    deadline = time.monotonic() + 30
    while abs(tree_rss(process) - before) > 0.05 * before:
        assert time.monotonic() < deadline, f"RSS {tree_rss(process)} did not return to {before} ± 5%"
        time.sleep(0.5)
    assert complete(http, server.model).status_code == 200


def test_more_sets_than_slots_on_both_ranks(tp_server) -> None:
    server, model, root = tp_server
    base = describe_base_model(model)
    names = [f"tp-lora-{i}" for i in range(5)]
    admin = httpx.Client(base_url=server.base_url, headers={"Authorization": f"Bearer {server.admin_token}"}, timeout=300)
    http = httpx.Client(base_url=server.base_url, timeout=120)
    for i, name in enumerate(names):
        path = make_set(root / name, base, kind="lora", tasks=["chat"], seed=40 + i, svd_cache_dir=root.parent / "cache" / "svd")
        assert admin.post("/v1/adapter-sets", json={"name": name, "path": str(path)}).status_code == 201
    first = [complete(http, name).json()["choices"][0]["text"] for name in names]
    again = [complete(http, name).json()["choices"][0]["text"] for name in names]
    assert again == first and len(set(first)) >= 3
    tiers = [entry["tier"] for entry in admin.get("/v1/adapter-sets").json()["data"] if entry["name"] in names]
    assert tiers.count("slot") == 2 and tiers.count("host") == 3
    for name in names:
        assert admin.delete(f"/v1/adapter-sets/{name}", params={"wait": True}).status_code == 200
