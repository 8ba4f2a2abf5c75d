"""Shared fixtures: the tiny test model and one real orthoserve server per test session.

`server` runs `python -m server.cli serve` in a subprocess on a free 127.0.0.1 port with the tiny
Llama. Its command line is `server_command(...)` plus the `server_extra_args` fixture: features that
need more flags (adapter-set folders, ...) extend that fixture. `start_server` starts any other
configuration the same way.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT / "tests"))

from tiny_model import build_tiny_llama  # noqa: E402

# Adapter roots, startup sets and a memory budget for the shared server (`adapter_server_args`).
pytest_plugins = ("tests.router.server_setup",)

SERVER_START_TIMEOUT_S = 600
TINY_MODEL_NAME = "tiny-llama"
ADMIN_TOKEN = "test-admin-token"


@dataclass(frozen=True)
class RunningServer:
    base_url: str
    model: str
    admin_token: str
    log_path: Path
    process: subprocess.Popen


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_command(model_dir: Path, served_name: str, port: int, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "server.cli", "serve",
        "--model", str(model_dir),
        "--served-model-name", served_name,
        "--host", "127.0.0.1",
        "--port", str(port),
        "--kv-cache-gib", "0.25",
        "--max-model-len", "512",
        "--cpu-threads", "1",
        "--admin-token", ADMIN_TOKEN,
        *extra,
    ]  # fmt: skip


@contextlib.contextmanager
def start_server(
    model_dir: Path, served_name: str, log_path: Path, extra_args: list[str] | None = None
) -> Iterator[RunningServer]:
    """Start a server, wait until /health answers, and stop it (engine processes included) on exit."""
    port = free_port()
    command = server_command(model_dir, served_name, port, *(extra_args or []))
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            command, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    server = RunningServer(f"http://127.0.0.1:{port}", served_name, ADMIN_TOKEN, log_path, process)
    try:
        _wait_until_healthy(server)
        yield server
    finally:
        _stop(process)


def _wait_until_healthy(server: RunningServer) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            break
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{server.base_url}/health", timeout=5).status_code == 200:
                return
        time.sleep(1)
    log = server.log_path.read_text(errors="replace")
    pytest.fail(f"server did not become healthy (exit code {server.process.poll()}); log:\n{log[-20000:]}")


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, 9)
            process.wait()
    # The engine core and worker share the server's session: make sure none outlives it.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, 9)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def server_extra_args(adapter_server_args: list[str]) -> list[str]:
    """Extra `orthoserve serve` flags of the shared server; extend this to serve more features."""
    return [*adapter_server_args]


@pytest.fixture(scope="session")
def server(
    tiny_model_dir: Path, server_extra_args: list[str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    log_path = tmp_path_factory.mktemp("server-log") / "server.log"
    with start_server(tiny_model_dir, TINY_MODEL_NAME, log_path, server_extra_args) as running:
        yield running


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    """Attach the tail of the server log to every failing test that used a server."""
    outcome = yield
    report = outcome.get_result()
    if report.failed and call.when == "call":
        for value in getattr(item, "funcargs", {}).values():
            if isinstance(value, RunningServer) and value.log_path.exists():
                tail = value.log_path.read_text(errors="replace")[-8000:]
                report.sections.append((f"server log ({value.log_path})", tail))
