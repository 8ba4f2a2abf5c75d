"""Hot replace and unload on the real server while requests run."""

from __future__ import annotations

import threading

import httpx

from server_process import engine_core, engine_frozen, requests_in_flight, wait_until

PROMPT = "The capital of France is"
VERSION_HEADER = "x-orthoserve-adapter-set"
CONCURRENCY = 8
MIN_REQUESTS = 200
REPLACEMENTS = 5


def complete(base_url: str, model: str, *, max_tokens: int = 8, prompt: str = PROMPT) -> httpx.Response:
    return httpx.post(
        f"{base_url}/v1/completions",
        json={"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0},
        timeout=120,
    )


def test_replace_under_continuous_traffic(server, admin, write_set):
    # Six different random sets; every version published under "swap" is one of them.
    paths = [write_set(f"swap-{index}", seed=200 + index) for index in range(REPLACEMENTS + 1)]
    alone: dict[int, str] = {}  # path index → greedy text of that set queried alone
    source: dict[int, int] = {}  # version → path index
    for index, path in enumerate(paths):
        version = admin.load("swap", path, replace=True)["version"]
        source[version] = index
        response = complete(server.base_url, "swap/boolq")
        assert response.headers[VERSION_HEADER] == f"swap@{version}"
        alone[index] = response.json()["choices"][0]["text"]
    assert len(set(alone.values())) >= 4, "the random sets must be told apart by their output"

    results: list[tuple[int, str | None, str]] = []
    lock, stop = threading.Lock(), threading.Event()

    def traffic() -> None:
        with httpx.Client(base_url=server.base_url, timeout=120) as http:
            while not stop.is_set():
                response = http.post(
                    "/v1/completions",
                    json={"model": "swap/boolq", "prompt": PROMPT, "max_tokens": 8, "temperature": 0},
                )
                text = response.json()["choices"][0]["text"] if response.status_code == 200 else response.text
                with lock:
                    results.append((response.status_code, response.headers.get(VERSION_HEADER), text))

    workers = [threading.Thread(target=traffic) for _ in range(CONCURRENCY)]
    for worker in workers:
        worker.start()
    try:
        for round_index in range(REPLACEMENTS):
            wait_until(lambda: len(results) >= (round_index + 1) * MIN_REQUESTS // (REPLACEMENTS + 1))
            last_version = admin.load("swap", paths[round_index], replace=True)["version"]
            source[last_version] = round_index
        wait_until(lambda: len(results) >= MIN_REQUESTS)
    finally:
        stop.set()
        for worker in workers:
            worker.join()

    failures = [result for result in results if result[0] != 200]
    assert not failures, failures[:5]
    seen_versions = set()
    for _, header, text in results:
        name, _, served_version = header.partition("@")
        assert name == "swap"
        seen_versions.add(int(served_version))
        assert text == alone[source[int(served_version)]], f"{header} did not answer like its own set"
    assert len(seen_versions) >= REPLACEMENTS, f"traffic saw only versions {sorted(seen_versions)}"
    # Every replaced version is freed once its last request has ended.
    wait_until(lambda: [item["version"] for item in admin.listing()["data"] if item["name"] == "swap"] == [last_version])


def test_unload_while_requests_run(server, admin, write_set):
    name, model, max_tokens = "drain", "drain/piqa", 480
    admin.load(name, write_set(name, seed=300))
    body = {"model": model, "prompt": PROMPT, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True}
    responses: list[httpx.Response] = []
    workers = [
        threading.Thread(target=lambda: responses.append(httpx.post(f"{server.base_url}/v1/completions", json=body, timeout=120)))
        for _ in range(CONCURRENCY)
    ]
    # The engine is frozen while the requests come in and the unload lands: all of them are in flight
    # then, however fast the machine.
    with engine_frozen(engine_core(server)):
        for worker in workers:
            worker.start()
        wait_until(lambda: requests_in_flight(server) == CONCURRENCY, interval=0.01)
        draining = admin.unload(name, wait=False)
        refused = complete(server.base_url, model)
        assert refused.status_code == 404 and refused.json()["error"]["code"] == "model_not_found"
    for worker in workers:
        worker.join()
    assert (draining["state"], draining["in_flight"]) == ("draining", CONCURRENCY)
    # Every request that got in finishes whole on the draining version, then its memory is freed.
    assert [response.status_code for response in responses] == [200] * CONCURRENCY
    assert {response.headers[VERSION_HEADER] for response in responses} == {f"{name}@{draining['version']}"}
    assert all(response.json()["usage"]["completion_tokens"] == max_tokens for response in responses)
    wait_until(lambda: all(item["name"] != name for item in admin.listing()["data"]))
