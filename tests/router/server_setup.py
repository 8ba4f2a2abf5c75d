"""Session fixtures that give the shared test server adapter roots, startup sets and a memory budget.

Registered as a pytest plugin by tests/conftest.py; `adapter_server_args` feeds `server_extra_args`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from adapters.base_model import BaseModelInfo
from tests.router.adapter_sets import make_broken_set, make_set

ADAPTER_MEMORY_BUDGET = 512 * 1024 * 1024
STARTUP_SET = "boot"
STARTUP_BROKEN_SET = "boot-broken"


@pytest.fixture(scope="session")
def tiny_base(base: BaseModelInfo) -> BaseModelInfo:
    """The tiny model's description (`tests/adapter_fixtures.py`), under the server tests' name."""
    return base


@pytest.fixture(scope="session")
def test_svd_cache(svd_cache_dir: Path) -> Path:
    """The session's one SVD cache (`tests/adapter_fixtures.py`), under the server tests' name."""
    return svd_cache_dir


@pytest.fixture(scope="session")
def adapter_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The server's one `--adapter-root`: tests write the sets they load over HTTP here."""
    return tmp_path_factory.mktemp("adapter-root")


@pytest.fixture(scope="session")
def startup_sets_dir(tmp_path_factory: pytest.TempPathFactory, tiny_base: BaseModelInfo, test_svd_cache: Path) -> Path:
    """`--adapter-sets`: one good set and one with a NaN, which the server must skip."""
    directory = tmp_path_factory.mktemp("startup-sets")
    good = make_set(directory / STARTUP_SET, tiny_base, tasks=("boolq", "piqa"), seed=7, svd_cache_dir=test_svd_cache)
    make_broken_set(good, directory / STARTUP_BROKEN_SET, "nan")
    (directory / "not-a-set").mkdir()
    return directory


@pytest.fixture(scope="session")
def resolver_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The server's `--adapter-resolver-root`: a set folder written here is served on first request."""
    return tmp_path_factory.mktemp("resolver-root")


@pytest.fixture(scope="session")
def adapter_server_args(adapter_root: Path, startup_sets_dir: Path, resolver_root: Path) -> list[str]:
    return [
        "--adapter-root", str(adapter_root),
        "--adapter-sets", str(startup_sets_dir),
        "--adapter-memory-budget", str(ADAPTER_MEMORY_BUDGET),
        "--adapter-resolver-root", str(resolver_root),
        "--max-adapter-sets", "8",  # engine slots per method; more sets than that are swapped in on demand
    ]  # fmt: skip


@pytest.fixture(scope="session")
def write_set(adapter_root: Path, tiny_base: BaseModelInfo, test_svd_cache: Path) -> Callable[..., Path]:
    """`write_set(name, **make_set_options)`: a random set under the adapter root."""

    def write(name: str, **options: Any) -> Path:
        return make_set(adapter_root / name, tiny_base, svd_cache_dir=test_svd_cache, **options)

    return write


class AdminClient:
    """Raw-HTTP admin calls that unload, at teardown, every set they loaded."""

    def __init__(self, http: httpx.Client) -> None:
        self.http = http
        self.loaded: set[str] = set()

    def load(self, name: str, path: Path | str, *, replace: bool = False, pin: bool = False, expect: int = 201) -> dict:
        body = {"name": name, "path": str(path), "replace": replace, "pin": pin}
        response = self.http.post("/v1/adapter-sets", json=body)
        assert response.status_code == expect, response.text
        if response.status_code == 201:
            self.loaded.add(name)
        return response.json()

    def unload(self, name: str, *, wait: bool = True) -> dict:
        response = self.http.delete(f"/v1/adapter-sets/{name}", params={"wait": wait})
        assert response.status_code == 200, response.text
        self.loaded.discard(name)
        return response.json()

    def listing(self) -> dict:
        response = self.http.get("/v1/adapter-sets")
        assert response.status_code == 200, response.text
        return response.json()


@pytest.fixture
def admin(server) -> Iterator[AdminClient]:
    headers = {"Authorization": f"Bearer {server.admin_token}"}
    with httpx.Client(base_url=server.base_url, headers=headers, timeout=300) as http:
        client = AdminClient(http)
        yield client
        for name in sorted(client.loaded):
            http.delete(f"/v1/adapter-sets/{name}", params={"wait": True})
