"""The admin API on the real server: auth, load/list/unload, conflicts, budgets and bad sets."""

from __future__ import annotations

import concurrent.futures
import os

import httpx
import pytest

from tests.router.adapter_sets import CORRUPTIONS, make_broken_set, make_set
from tests.router.server_setup import ADAPTER_MEMORY_BUDGET, STARTUP_BROKEN_SET, STARTUP_SET
from tests.tiny_model import build_tiny_llama

PROMPT = "The quick brown fox"


def complete(server, model: str, max_tokens: int = 6) -> httpx.Response:
    return httpx.post(
        f"{server.base_url}/v1/completions",
        json={"model": model, "prompt": PROMPT, "max_tokens": max_tokens, "temperature": 0},
        timeout=120,
    )


def assert_error(response: httpx.Response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and error["message"] and error["type"]
    return error


@pytest.mark.parametrize("authorization", [None, "Bearer wrong-token", "Basic dGVzdA=="])
def test_admin_routes_need_the_token(server, authorization):
    headers = {"Authorization": authorization} if authorization else {}
    for method, path in (("GET", "/v1/adapter-sets"), ("POST", "/v1/adapter-sets"), ("DELETE", "/v1/adapter-sets/x")):
        response = httpx.request(method, f"{server.base_url}{path}", headers=headers, json={}, timeout=30)
        assert response.status_code == 401, (method, response.text)
        assert response.json()["error"]["message"]


def test_load_serve_list_unload(server, admin, write_set):
    path = write_set("admin-basic", tasks=("boolq", "piqa"), seed=11)
    info = admin.load("basic", path)
    assert info["name"] == "basic" and info["kind"] == "moore" and info["tasks"] == ["boolq", "piqa"]
    assert info["state"] == "ready" and info["bytes"] > 0 and info["load_seconds"] > 0
    assert info["path"] == str(path.resolve())
    served = complete(server, "basic/boolq")
    assert served.status_code == 200 and served.headers["x-orthoserve-adapter-set"] == f"basic@{info['version']}"
    listing = admin.listing()
    entry = next(item for item in listing["data"] if item["name"] == "basic")
    assert entry["version"] == info["version"] and listing["used_bytes"] >= info["bytes"]
    assert listing["budget_bytes"] == ADAPTER_MEMORY_BUDGET
    (rank,) = listing["engine_bytes_per_rank"]  # one rank: no tensor parallelism
    assert rank["slots"] == listing["used_bytes"] and rank["base_factors"] > 0 and rank["capacity"] > 0
    unloaded = admin.unload("basic")
    assert admin.listing()["engine_bytes_per_rank"][0]["slots"] == rank["slots"] - info["bytes"]
    assert unloaded["name"] == "basic"
    assert all(item["name"] != "basic" for item in admin.listing()["data"])
    assert_error(complete(server, "basic/boolq"), 404, "model_not_found")
    assert_error(admin.http.delete("/v1/adapter-sets/basic"), 404, "model_not_found")


def test_startup_directory_loads_good_sets_and_skips_bad(server, admin):
    names = {item["name"] for item in admin.listing()["data"]}
    assert STARTUP_SET in names and STARTUP_BROKEN_SET not in names and "not-a-set" not in names
    assert complete(server, f"{STARTUP_SET}/piqa").status_code == 200
    log = server.log_path.read_text(errors="replace")
    assert STARTUP_BROKEN_SET in log and "non_finite_tensor" in log


def test_existing_name_and_concurrent_loads_conflict(admin, write_set):
    path = write_set("admin-conflict", kind="lora", tasks=("chat",), seed=12)
    admin.load("taken", path)
    assert_error(admin.http.post("/v1/adapter-sets", json={"name": "taken", "path": str(path)}), 409, "adapter_set_exists")

    def load_race() -> httpx.Response:
        return admin.http.post("/v1/adapter-sets", json={"name": "raced", "path": str(path)})

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        responses = list(pool.map(lambda _: load_race(), range(4)))
    statuses = sorted(response.status_code for response in responses)
    assert statuses == [201, 409, 409, 409], [response.text for response in responses]
    admin.loaded.add("raced")
    # A loser that arrives while the winner loads is "busy"; one that arrives after it is "exists".
    assert {r.json()["error"]["code"] for r in responses if r.status_code == 409} <= {"adapter_set_busy", "adapter_set_exists"}
    assert [item["version"] for item in admin.listing()["data"] if item["name"] == "raced"] == [1]


@pytest.mark.parametrize("body", [{"name": "x"}, {"name": "x", "path": "p", "extra": 1}, {"name": "a/b", "path": "p"}])
def test_malformed_load_requests(admin, body):
    response = admin.http.post("/v1/adapter-sets", json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_bad_sets_are_refused_and_the_server_keeps_serving(server, admin, write_set, adapter_root, tmp_path, tiny_base):
    valid = write_set("admin-valid", tasks=("boolq", "piqa"), seed=13)
    admin.load("keeper", valid)
    before = complete(server, "keeper/boolq")
    assert before.status_code == 200
    for corruption, (_, code) in CORRUPTIONS.items():
        broken = make_broken_set(valid, adapter_root / f"broken-{corruption}", corruption)
        error = assert_error(admin.http.post("/v1/adapter-sets", json={"name": "bad", "path": str(broken)}), 422, code)
        assert error["message"]
    other_base = build_tiny_llama(tmp_path / "other-base", seed=1)
    from adapters.base_model import describe_base_model

    foreign = make_set(adapter_root / "foreign", describe_base_model(other_base), svd_cache_dir=tmp_path / "svd")
    assert_error(admin.http.post("/v1/adapter-sets", json={"name": "bad", "path": str(foreign)}), 422, "fingerprint_mismatch")
    missing = admin.http.post("/v1/adapter-sets", json={"name": "bad", "path": str(adapter_root / "absent")})
    assert_error(missing, 422, "adapter_path_not_found")

    assert httpx.get(f"{server.base_url}/health", timeout=30).status_code == 200
    assert all(item["name"] != "bad" for item in admin.listing()["data"])
    after = complete(server, "keeper/boolq")
    assert after.status_code == 200 and after.json()["choices"][0]["text"] == before.json()["choices"][0]["text"]


def test_paths_outside_the_roots_are_forbidden(admin, write_set, adapter_root, tmp_path, tiny_base, test_svd_cache):
    outside = make_set(tmp_path / "outside-set", tiny_base, svd_cache_dir=test_svd_cache)
    (adapter_root / "escape-link").symlink_to(outside)
    leaky = write_set("leaky", seed=14)
    weights = leaky / "adapter.safetensors"
    os.replace(weights, tmp_path / "moved.safetensors")
    weights.symlink_to(tmp_path / "moved.safetensors")
    for path in (outside, adapter_root / "escape-link", leaky, f"{adapter_root}/../{outside.parent.name}/outside-set"):
        response = admin.http.post("/v1/adapter-sets", json={"name": "escaper", "path": str(path)})
        assert_error(response, 403, "path_not_allowed")


def test_admin_api_does_not_exist_without_a_token(tiny_model_dir):
    """No configured token: the admin routes are not mounted at all (404), never open."""
    from fastapi.testclient import TestClient

    from server.app import create_app
    from server.engine.service import EngineService
    from server.settings import Settings

    settings = Settings(model=tiny_model_dir, admin_token=None)
    app = create_app(settings, EngineService(settings, tiny_model_dir))
    client = TestClient(app)  # not entered: the lifespan (engine start) does not run
    assert client.get("/v1/adapter-sets").status_code == 404
    assert client.post("/v1/adapter-sets", json={"name": "x", "path": "y"}).status_code in (404, 405)
    assert client.delete("/v1/adapter-sets/x").status_code == 404
