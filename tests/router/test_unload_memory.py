"""Unload really frees memory (the set's slot, its host copy and their pages), and the memory budget
bounds what engine slots hold: a second set that does not fit beside the first is registered, and
brought in by evicting the first once a request needs it.

These need a set far larger than the 5% RSS tolerance, which the shared tiny model cannot hold (its
matrices are 128 wide), so they run one server of their own on a wider tiny Llama.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
from server_process import RunningServer, start_server

from adapters.base_model import describe_base_model
from adapters.moore.config import MooreConfig
from tests.router.adapter_sets import make_set
from tests.tiny_model import build_tiny_llama

pytestmark = pytest.mark.slow

BUDGET = 700 * 1024 * 1024  # room for one big set (~440 MB in fp32 banks, pinned whatever the CPU), not two


@pytest.fixture(scope="module")
def wide(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningServer, Path]]:
    """A server on a hidden-1024 tiny Llama, and a MoORE set for it with 4096-wide routers."""
    work = tmp_path_factory.mktemp("wide")
    model = build_tiny_llama(work / "model", hidden_size=1024, num_heads=16, num_kv_heads=1, intermediate_size=2048)
    root, cache = work / "sets", work / "cache"
    big = make_set(
        root / "big", describe_base_model(model), config=MooreConfig(router_width=4096), svd_cache_dir=cache / "svd"
    )
    extra = [
        "--adapter-root", str(root), "--cache-dir", str(cache), "--adapter-memory-budget", str(BUDGET),
        "--max-moore-sets", "2", "--max-moore-router-width", "4096", "--adapter-dtype", "float32",
    ]  # fmt: skip
    with start_server(model, "wide-llama", work / "server.log", extra) as server:
        yield server, big


def admin_post(server: RunningServer, name: str, path: Path) -> httpx.Response:
    headers = {"Authorization": f"Bearer {server.admin_token}"}
    return httpx.post(
        f"{server.base_url}/v1/adapter-sets", json={"name": name, "path": str(path)}, headers=headers, timeout=300
    )


def complete(server: RunningServer, model: str) -> int:
    body = {"model": model, "prompt": "The capital of France is", "max_tokens": 4, "temperature": 0}
    return httpx.post(f"{server.base_url}/v1/completions", json=body, timeout=120).status_code


def tree_rss(process: psutil.Process) -> int:
    return sum(member.memory_info().rss for member in [process, *process.children(recursive=True)])


def unload_and_wait_for_rss(server: RunningServer, process: psutil.Process, before: int, names: tuple[str, ...] = ("big",)) -> None:
    """Unload `names` and wait until the server's process tree is back to `before` ± 5 %."""
    headers = {"Authorization": f"Bearer {server.admin_token}"}
    for name in names:
        unloaded = httpx.delete(f"{server.base_url}/v1/adapter-sets/{name}", params={"wait": True}, headers=headers, timeout=120)
        assert unloaded.status_code == 200
    deadline = time.monotonic() + 30
    while abs(tree_rss(process) - before) > 0.05 * before:
        assert time.monotonic() < deadline, f"RSS {tree_rss(process)} did not return to {before} ± 5%"
        time.sleep(0.5)


def tiers(server: RunningServer) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {server.admin_token}"}
    listed = httpx.get(f"{server.base_url}/v1/adapter-sets", headers=headers, timeout=30).json()
    assert listed["used_bytes"] <= BUDGET
    return {entry["name"]: entry["tier"] for entry in listed["data"]}


def test_unload_returns_rss_to_baseline_and_budget_bounds_the_slots(wide):
    server, big = wide
    process = psutil.Process(server.process.pid)
    assert complete(server, server.model) == 200
    before = tree_rss(process)

    loaded = admin_post(server, "big", big)
    assert loaded.status_code == 201, loaded.text
    nbytes = loaded.json()["bytes"]
    assert nbytes > 0.05 * before, "the set must be larger than the tolerance for this test to mean anything"
    assert complete(server, "big/boolq") == 200
    assert tree_rss(process) - before > 0.5 * nbytes

    second = admin_post(server, "big-2", big)
    assert second.status_code == 201, second.text
    assert tiers(server) == {"big": "slot", "big-2": "disk"}  # no room beside big
    assert complete(server, "big-2/boolq") == 200
    assert tiers(server) == {"big": "host", "big-2": "slot"}  # big, idle, made room

    unload_and_wait_for_rss(server, process, before, ("big", "big-2"))
    assert complete(server, server.model) == 200

    # The freed slot takes the set again, and a second unload gives the memory back again: no leak per cycle.
    reloaded = admin_post(server, "big", big)
    assert reloaded.status_code == 201, reloaded.text
    assert complete(server, "big/boolq") == 200
    unload_and_wait_for_rss(server, process, before)
