"""orthoserve on Ray Serve, end to end on a local Ray cluster: 2 replicas of the tiny model, 6 sets.

Each replica has 2 LoRA, 1 MoORE and 1 BADIT engine slot, so 6 sets do not fit one replica's slots.
Skipped without the `ray` package (the `ray` extra; the `dev` extra installs it) or without the memory
(MIN_AVAILABLE_BYTES). On a 2-core machine shared with other work, the module took 12 minutes, most of
it the replicas' engine starts.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import psutil
import pytest

from adapters.base_model import BaseModelInfo
from server_process import ADMIN_TOKEN, TINY_MODEL_NAME, free_port
from tests.router.adapter_sets import make_set
from tests.scaleout.protocol_support import scrape

ray = pytest.importorskip("ray", reason="the `ray` extra (ray[serve]) is not installed")
serve = pytest.importorskip("ray.serve")

# Two replicas with their engines, Ray's own processes and a replacement replica after the kill take
# about 9 GiB at the peak; below that Ray's memory monitor kills workers mid-test (seen on a machine
# shared with training jobs), so the module runs only where the memory is there at its start.
MIN_AVAILABLE_BYTES = 10 * 1024**3

pytestmark = [
    pytest.mark.first,
    pytest.mark.timeout(1800),
    pytest.mark.skipif(
        psutil.virtual_memory().available < MIN_AVAILABLE_BYTES,
        reason=f"needs {MIN_AVAILABLE_BYTES / 1024**3:.0f} GiB of available memory for 2 replicas on Ray",
    ),
]

SETS = {
    "ray-lora-a": ("lora", ("chat",)),
    "ray-lora-b": ("lora", ("chat",)),
    "ray-moore-a": ("moore", ("boolq", "piqa")),
    "ray-moore-b": ("moore", ("boolq",)),
    "ray-badit-a": ("badit", ("arc",)),
    "ray-badit-b": ("badit", ("arc",)),
}
AFFINITY_SET = "ray-lora-c"  # asked for by no other test, so no replica holds it before its test


@pytest.fixture(scope="module")
def ray_root(tmp_path_factory: pytest.TempPathFactory, tiny_base: BaseModelInfo, test_svd_cache: Path) -> Path:
    root = tmp_path_factory.mktemp("ray-root")
    for name, (kind, tasks) in SETS.items():
        make_set(root / name, tiny_base, kind=kind, tasks=tasks, seed=len(name), svd_cache_dir=test_svd_cache)
    make_set(root / "ray-moore-a-v2", tiny_base, kind="moore", tasks=("boolq", "piqa"), seed=99, svd_cache_dir=test_svd_cache)
    make_set(root / AFFINITY_SET, tiny_base, kind="lora", tasks=("chat",), seed=77, svd_cache_dir=test_svd_cache)
    return root


@pytest.fixture(scope="module")
def ray_app(tiny_model_dir: Path, ray_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from server.ray_serve import build_app

    port = free_port()
    ray.init(
        num_cpus=4, include_dashboard=False, namespace="orthoserve-test", object_store_memory=150 * 1024 * 1024,
        _temp_dir=str(tmp_path_factory.mktemp("ray")),
    )  # fmt: skip
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        app = build_app({
            "model": str(tiny_model_dir), "served_model_name": TINY_MODEL_NAME, "replicas": "2", "replica_cpus": "1",
            "admin_token": ADMIN_TOKEN, "adapter_root": str(ray_root), "dtype": "float32", "kv_cache_gib": "0.25",
            "max_model_len": "512", "cache_dir": str(tmp_path_factory.mktemp("ray-cache")),
            "max_lora_sets": "2", "max_moore_sets": "1", "max_badit_sets": "1",
        })  # fmt: skip
        serve.run(app, name="orthoserve", route_prefix="/")
        yield f"http://127.0.0.1:{port}"
    finally:
        with contextlib.suppress(Exception):
            serve.shutdown()
        ray.shutdown()


@pytest.fixture(scope="module")
def admin(ray_app: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=ray_app, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=600) as http:
        yield http


@pytest.fixture(scope="module")
def client(ray_app: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{ray_app}/v1", api_key="unused", max_retries=0, timeout=300)


@pytest.fixture(scope="module")
def loaded(admin: httpx.Client, ray_root: Path) -> dict[str, str]:
    for name in SETS:
        response = admin.post("/v1/adapter-sets", json={"name": name, "path": str(ray_root / name)})
        assert response.status_code == 201, response.text
        assert response.headers["x-orthoserve-replicas"] == "2"
    return SETS


def replica_urls(ray_app: str) -> list[str]:
    return [entry["url"] for entry in httpx.get(f"{ray_app}/replicas", timeout=30).json()["data"]]


def ok_requests(url: str, set_name: str) -> float:
    samples = scrape(url).family("orthoserve_requests_total")
    return sum(s.value for s in samples if s.labels.get("set") == set_name and s.labels.get("outcome") == "ok")


def complete(client: openai.OpenAI, model: str) -> str:
    return client.completions.create(model=model, prompt="one two", max_tokens=2, temperature=0).model


def test_every_request_for_every_set_succeeds(ray_app, client, loaded) -> None:
    assert len(replica_urls(ray_app)) == 2
    models = [TINY_MODEL_NAME, *(f"{name}/{tasks[0]}" for name, (_, tasks) in loaded.items())]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        answered = list(pool.map(lambda model: complete(client, model), models * 2))
    assert answered == models * 2


def test_repeated_requests_for_one_set_land_on_the_replica_that_holds_it(ray_app, admin, client, loaded, ray_root) -> None:
    response = admin.post("/v1/adapter-sets", json={"name": AFFINITY_SET, "path": str(ray_root / AFFINITY_SET)})
    assert response.status_code == 201, response.text
    urls = replica_urls(ray_app)
    model = f"{AFFINITY_SET}/chat"
    complete(client, model)  # one replica's multiplexed loader brings the set in
    time.sleep(2)  # Serve's routers learn which replica holds it
    before = {url: ok_requests(url, AFFINITY_SET) for url in urls}
    for _ in range(6):
        assert complete(client, model) == model
    delta = {url: ok_requests(url, AFFINITY_SET) - before[url] for url in urls}
    assert sorted(delta.values()) == [0, 6], f"requests per replica: {delta}"
    holder = next(url for url, count in delta.items() if count == 6)
    assert model in scrape(holder).running


def test_a_hot_replace_reaches_both_replicas(ray_app, admin, client, loaded, ray_root) -> None:
    response = admin.post(
        "/v1/adapter-sets", json={"name": "ray-moore-a", "path": str(ray_root / "ray-moore-a-v2"), "replace": True}
    )
    assert response.status_code == 201 and response.headers["x-orthoserve-replicas"] == "2", response.text
    version = response.json()["version"]
    for url in replica_urls(ray_app):
        listing = httpx.get(f"{url}/v1/adapter-sets", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=30)
        ready = [e["version"] for e in listing.json()["data"] if e["name"] == "ray-moore-a" and e["state"] == "ready"]
        assert ready == [version]
    reply = client.completions.with_raw_response.create(model="ray-moore-a/piqa", prompt="one", max_tokens=2)
    assert reply.headers["x-orthoserve-adapter-set"] == f"ray-moore-a@{version}"


def test_killing_a_replica_loses_no_request_that_had_not_started(ray_app, client, loaded) -> None:
    victim = _replica_pids(ray_app)[0]
    engine_processes = psutil.Process(victim).children(recursive=True)
    models = [f"{name}/{tasks[0]}" for name, (_, tasks) in loaded.items()] * 3

    def send(model: str) -> tuple[str, int | None]:
        try:
            return complete(client, model), None
        except openai.APIStatusError as error:
            body = error.response.json()
            assert set(body["error"]) >= {"message", "type", "code"}, body  # answered cleanly
            return model, error.status_code

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        pending = [pool.submit(send, model) for model in models]
        time.sleep(0.5)
        os.kill(victim, signal.SIGKILL)
        results = [future.result(timeout=900) for future in pending]
    for process in engine_processes:  # the killed replica's engine processes have no parent to stop them
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    assert all(model == sent for (model, _), sent in zip(results, models))
    failed = [status for _, status in results if status is not None]
    assert all(status == 503 for status in failed), failed
    assert complete(client, "ray-lora-a/chat") == "ray-lora-a/chat"


def _replica_pids(ray_app: str) -> list[int]:
    pids = []
    for url in replica_urls(ray_app):
        port = int(url.rsplit(":", 1)[1])
        owners = [c.pid for c in psutil.net_connections("tcp") if c.laddr and c.laddr.port == port and c.status == "LISTEN"]
        pids.extend(owners[:1])
    assert len(pids) == 2
    return pids
