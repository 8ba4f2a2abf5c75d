"""The model-server protocol on a real server: vLLM's series on `/metrics` (the API's port), the LoRA
residency series for every adapter kind, and vLLM's runtime adapter endpoints.

One server for the module, with few engine slots (2 LoRA, 1 MoORE, 1 BADIT) so that sets are evicted
to host copies and requests wait for a slot.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from adapters.base_model import BaseModelInfo
from server_process import TINY_MODEL_NAME, RunningServer, engine_core, engine_frozen, start_server
from tests.router.adapter_sets import make_broken_set, make_set
from tests.scaleout.protocol_support import Scrape, promtool_problems, scrape, without_vllm, write_peft_lora

SLOTS = {"lora": 2, "moore": 1, "badit": 1}
POLL_S = 0.05
WAIT_LIMIT_S = 60


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("protocol-root")


@pytest.fixture(scope="module")
def protocol_server(tiny_model_dir: Path, root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    log = tmp_path_factory.mktemp("protocol-server") / "server.log"
    args = [
        "--dtype", "float32", "--adapter-root", str(root), "--cache-dir", str(tmp_path_factory.mktemp("cache")),
        "--max-lora-sets", str(SLOTS["lora"]), "--max-moore-sets", str(SLOTS["moore"]),
        "--max-badit-sets", str(SLOTS["badit"]),
    ]  # fmt: skip
    with start_server(tiny_model_dir, TINY_MODEL_NAME, log, args) as running:
        yield running


@pytest.fixture(scope="module")
def write(root: Path, tiny_base: BaseModelInfo, test_svd_cache: Path) -> Callable[..., Path]:
    def make(name: str, kind: str, tasks: tuple[str, ...], seed: int = 0) -> Path:
        return make_set(root / name, tiny_base, kind=kind, tasks=tasks, seed=seed, svd_cache_dir=test_svd_cache)

    return make


@pytest.fixture(scope="module")
def admin_http(protocol_server: RunningServer) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {protocol_server.admin_token}"}
    with httpx.Client(base_url=protocol_server.base_url, headers=headers, timeout=300) as http:
        yield http


@pytest.fixture(scope="module")
def client(protocol_server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{protocol_server.base_url}/v1", api_key="unused", max_retries=0, timeout=120)


def load(http: httpx.Client, name: str, path: Path, *, inplace: bool = False) -> httpx.Response:
    return http.post("/v1/load_lora_adapter", json={"lora_name": name, "lora_path": str(path), "load_inplace": inplace})


def unload(http: httpx.Client, name: str) -> httpx.Response:
    return http.post("/v1/unload_lora_adapter", json={"lora_name": name})


def complete(client: openai.OpenAI, model: str, **extra: Any) -> str:
    return client.completions.create(model=model, prompt="one two three", max_tokens=2, temperature=0, **extra).model


def wait_for(server: RunningServer, condition: Callable[[Scrape], bool], what: str) -> Scrape:
    deadline = time.monotonic() + WAIT_LIMIT_S
    while True:
        current = scrape(server.base_url)
        if condition(current):
            return current
        assert time.monotonic() < deadline, f"{what}: not seen within {WAIT_LIMIT_S}s; last scrape:\n{current.text[-3000:]}"
        time.sleep(POLL_S)


def names(set_name: str, tasks: tuple[str, ...]) -> set[str]:
    return {set_name, *(f"{set_name}/{task}" for task in tasks)}


# -- vLLM's engine series ---------------------------------------------------------------------------


def test_vllm_engine_series_are_on_the_api_metrics_under_their_types(protocol_server, client) -> None:
    complete(client, TINY_MODEL_NAME)
    metrics = scrape(protocol_server.base_url)
    expected = {
        "vllm:num_requests_waiting": "gauge",
        "vllm:num_requests_running": "gauge",
        "vllm:kv_cache_usage_perc": "gauge",
        "vllm:cache_config_info": "gauge",
        "vllm:time_to_first_token_seconds": "histogram",
        "vllm:e2e_request_latency_seconds": "histogram",
        "vllm:lora_requests_info": "gauge",
        "vllm:lora_adapter_loaded": "gauge",
        "vllm:num_gpu_loaded_lora_adapters": "gauge",
        "orthoserve_requests": "counter",
    }
    assert {name: metrics.types.get(name) for name in expected} == expected
    assert 0 <= metrics.value("vllm:kv_cache_usage_perc") <= 1
    (cache,) = metrics.family("vllm:cache_config_info")
    assert {"block_size", "num_gpu_blocks"} <= cache.labels.keys()
    assert metrics.family("vllm:time_to_first_token_seconds_count")[0].value >= 1
    declared = [line.split()[2] for line in metrics.text.splitlines() if line.startswith("# TYPE ")]
    assert len(declared) == len(set(declared)), "a family is declared twice"


def test_promtool_flags_only_vllm_names_and_the_vllm_endpoint_serves_them_alone(protocol_server) -> None:
    metrics = scrape(protocol_server.base_url)
    problems = promtool_problems(metrics.text)
    vllm_families = {name for name in metrics.types if name.startswith("vllm:")}
    assert "vllm:lora_requests_info metric names should not contain ':'" in problems
    assert all(line.startswith("vllm:") for line in problems), problems
    assert promtool_problems(without_vllm(metrics.text)) == []
    vllm_only = scrape(protocol_server.base_url, "/metrics/vllm")
    assert set(vllm_only.types) == vllm_families


# -- LoRA residency series, every kind ------------------------------------------------------------


def test_every_kind_is_a_running_lora_adapter_with_a_timestamp(protocol_server, admin_http, write) -> None:
    sets = {
        "pl-lora": ("lora", ("chat",)),
        "pl-moore": ("moore", ("boolq", "piqa")),
        "pl-badit": ("badit", ("arc",)),
    }
    for name, (kind, tasks) in sets.items():
        assert load(admin_http, name, write(name, kind, tasks)).status_code == 200
    before = time.time()
    metrics = scrape(protocol_server.base_url)
    after = time.time()
    info = metrics.lora_info
    assert before - 1 <= info.value <= after + 1, "the value is the unix time of the update"
    assert info.labels["max_lora"] == str(sum(SLOTS.values()))
    expected = set().union(*(names(name, tasks) for name, (_, tasks) in sets.items()))
    assert expected <= set(metrics.running)
    assert len(metrics.running) == len(set(metrics.running))
    assert not expected & set(metrics.waiting)
    loaded = metrics.loaded()
    assert {name: loaded[name] for name in expected} == {name: ("gpu", "false") for name in expected}
    assert metrics.value("vllm:num_gpu_loaded_lora_adapters") == len(sets)
    assert metrics.value("vllm:num_cpu_loaded_lora_adapters") == 0
    later = scrape(protocol_server.base_url).lora_info.value
    assert later >= info.value


def test_lists_follow_eviction_swap_in_replace_and_unload(protocol_server, admin_http, client, write) -> None:
    # pl-lora (loaded above) and pl-lora-2 fill both LoRA slots; pl-lora-3 stays on disk until asked for.
    assert load(admin_http, "pl-lora-2", write("pl-lora-2", "lora", ("chat",), seed=2)).status_code == 200
    assert load(admin_http, "pl-lora-3", write("pl-lora-3", "lora", ("chat",), seed=3)).status_code == 200
    metrics = scrape(protocol_server.base_url)
    assert {"pl-lora", "pl-lora-2"} <= set(metrics.running) and "pl-lora-3" not in metrics.running
    assert "pl-lora-3" not in metrics.loaded()

    complete(client, "pl-lora-2")  # pl-lora is now the least recently used LoRA set
    complete(client, "pl-lora-3")  # brought in; pl-lora evicted to a host copy
    metrics = scrape(protocol_server.base_url)
    assert "pl-lora-3" in metrics.running and "pl-lora" not in metrics.running and "pl-lora/chat" not in metrics.running
    assert metrics.loaded()["pl-lora"] == ("cpu", "false") and metrics.loaded()["pl-lora/chat"] == ("cpu", "false")
    assert metrics.value("vllm:num_cpu_loaded_lora_adapters") == 1

    version = _version(admin_http, "pl-moore")
    replacement = write("pl-moore-v2", "moore", ("boolq", "piqa"), seed=5)
    assert load(admin_http, "pl-moore", replacement, inplace=True).status_code == 200
    assert _version(admin_http, "pl-moore") == version + 1
    complete(client, "pl-moore/boolq")
    metrics = scrape(protocol_server.base_url)
    assert metrics.running.count("pl-moore/boolq") == 1 and metrics.loaded()["pl-moore"] == ("gpu", "false")

    assert unload(admin_http, "pl-lora-3").status_code == 200
    metrics = wait_for(protocol_server, lambda m: "pl-lora-3" not in m.loaded(), "the unloaded set gone")
    assert not names("pl-lora-3", ("chat",)) & set(metrics.running + metrics.waiting)


def test_a_set_waiting_for_a_busy_slot_is_listed_as_waiting(protocol_server, admin_http, client, write) -> None:
    # One MoORE slot: while a stream holds pl-moore, a request for pl-moore-b waits for the slot.
    assert load(admin_http, "pl-moore-b", write("pl-moore-b", "moore", ("boolq",), seed=9)).status_code == 200
    complete(client, "pl-moore/boolq")  # pl-moore in the slot, pl-moore-b a host copy
    seen = _waiting_while_a_stream_holds("pl-moore/boolq", "pl-moore-b/boolq", protocol_server, client)
    assert "pl-moore-b/boolq" in seen.waiting and "pl-moore-b" not in seen.running
    metrics = wait_for(protocol_server, lambda m: "pl-moore-b" in m.running, "pl-moore-b brought in")
    assert "pl-moore-b" not in metrics.waiting and "pl-moore" not in metrics.running
    assert metrics.loaded()["pl-moore"] == ("cpu", "false")


def _waiting_while_a_stream_holds(holder: str, waiter: str, server: RunningServer, client: openai.OpenAI) -> Scrape:
    """The first scrape listing `waiter` as waiting while a stream for `holder` runs (seen running
    first); the waiting request is then answered with its own model once the stream ends. The engine is
    frozen while the scrapes look for the waiter, so the stream cannot end first however fast or loaded
    the machine."""
    stream = client.completions.create(
        model=holder, prompt="one", max_tokens=400, temperature=0, stream=True, extra_body={"ignore_eos": True}
    )
    next(iter(stream))
    wait_for(server, lambda current: holder.split("/")[0] in current.running, f"{holder} running")
    answered: list[str] = []
    thread = threading.Thread(target=lambda: answered.append(complete(client, waiter)))
    try:
        with engine_frozen(engine_core(server)):
            thread.start()
            seen = wait_for(server, lambda current: waiter.split("/")[0] in current.waiting, f"{waiter} waiting")
    finally:
        stream.close()
        thread.join(timeout=WAIT_LIMIT_S)
    assert answered == [waiter]
    return seen


def _version(http: httpx.Client, name: str) -> int:
    listing = http.get("/v1/adapter-sets").json()["data"]
    return max(entry["version"] for entry in listing if entry["name"] == name and entry["state"] == "ready")


# -- vLLM's runtime adapter endpoints ---------------------------------------------------------------


def test_load_and_unload_answer_with_vllms_texts_and_codes(protocol_server, admin_http, client, write, root) -> None:
    path = write("ep-moore", "moore", ("boolq", "piqa"), seed=21)
    response = load(admin_http, "ep-moore", path)
    assert (response.status_code, response.text) == (200, "Success: LoRA adapter 'ep-moore' added successfully.")
    assert complete(client, "ep-moore/piqa") == "ep-moore/piqa"

    again = load(admin_http, "ep-moore", path)
    assert again.status_code == 400
    assert again.json()["error"]["message"] == (
        "The lora adapter 'ep-moore' has already been loaded. If you want to load the adapter in place, "
        "set 'load_inplace' to True."
    )

    missing = load(admin_http, "ep-none", root / "no-such-folder")
    assert missing.status_code == 404
    assert missing.json()["error"]["message"] == f"Loading lora ep-none failed: No adapter found for {root / 'no-such-folder'}"
    assert load(admin_http, "ep-out", Path("/etc")).status_code == 403
    assert admin_http.post("/v1/load_lora_adapter", json={"lora_name": "x"}).status_code == 400
    empty = admin_http.post("/v1/load_lora_adapter", json={"lora_name": "", "lora_path": ""})
    assert (empty.status_code, empty.json()["error"]["message"]) == (400, "Both 'lora_name' and 'lora_path' must be provided.")
    base = load(admin_http, TINY_MODEL_NAME, path)
    assert base.status_code == 400 and "conflicts with a served base model" in base.json()["error"]["message"]
    broken = make_broken_set(write("ep-good", "badit", ("arc",), seed=22), root / "ep-nan", "nan")
    bad = load(admin_http, "ep-nan", broken)
    assert (bad.status_code, bad.json()["error"]["code"]) == (422, "non_finite_tensor")

    removed = unload(admin_http, "ep-moore")
    assert (removed.status_code, removed.text) == (200, "Success: LoRA adapter 'ep-moore' removed successfully.")
    gone = unload(admin_http, "ep-moore")
    assert gone.status_code == 404
    assert gone.json()["error"] == {
        "message": "The lora adapter 'ep-moore' cannot be found.", "type": "invalid_request_error",
        "param": "lora_name", "code": "model_not_found",
    }  # fmt: skip
    with pytest.raises(openai.NotFoundError):
        complete(client, "ep-moore/piqa")


def test_endpoints_need_the_admin_token(protocol_server, write) -> None:
    path = write("ep-token", "lora", ("chat",), seed=23)
    body = {"lora_name": "ep-token", "lora_path": str(path)}
    assert httpx.post(f"{protocol_server.base_url}/v1/load_lora_adapter", json=body, timeout=30).status_code == 401
    wrong = {"Authorization": "Bearer wrong"}
    response = httpx.post(f"{protocol_server.base_url}/v1/unload_lora_adapter", json=body, headers=wrong, timeout=30)
    assert response.status_code == 401


def test_a_peft_lora_folder_is_imported_on_the_fly(protocol_server, admin_http, client, tiny_base, root) -> None:
    lora_set = make_set(root.parent / "peft-source-set", tiny_base, kind="lora", tasks=("default",), seed=31)
    folder = write_peft_lora(root / "peft-chat", lora_set, tiny_base)
    response = load(admin_http, "ep-peft", folder)
    assert (response.status_code, response.text) == (200, "Success: LoRA adapter 'ep-peft' added successfully.")
    (entry,) = [e for e in admin_http.get("/v1/adapter-sets").json()["data"] if e["name"] == "ep-peft"]
    assert entry["kind"] == "lora"
    assert complete(client, "ep-peft") == "ep-peft"
    assert "ep-peft" in scrape(protocol_server.base_url).running
    replaced = load(admin_http, "ep-peft", folder, inplace=True)
    assert replaced.status_code == 200 and _version(admin_http, "ep-peft") == entry["version"] + 1
