"""Starting and stopping a real orthoserve server in a subprocess, for tests.

Import from here (`from server_process import start_server, RunningServer`), not from conftest:
several test folders have a conftest.py, so `import conftest` is ambiguous.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

if TYPE_CHECKING:
    from server.tools.offline import OfflineEngine

REPO_ROOT = Path(__file__).resolve().parent.parent
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


def engine_core(server: RunningServer) -> psutil.Process:
    """The server's vLLM engine-core process."""
    children = psutil.Process(server.process.pid).children()
    cores = [child for child in children if "EngineCore" in child.name()]
    assert len(cores) == 1, [child.name() for child in children]
    return cores[0]


@contextlib.contextmanager
def engine_frozen(engine: psutil.Process) -> Iterator[None]:
    """Stop a server's engine process (`engine_core(server)`: SIGSTOP) for the block, then let it go
    on: requests admitted meanwhile stay in flight however fast the machine is. Nothing that waits on
    the engine answers meanwhile (completions, the admin listing); the HTTP front, admission and
    `/metrics` do."""
    engine.suspend()
    try:
        yield
    finally:
        engine.resume()


def wait_until(
    condition: Callable[[], bool], timeout: float = 60.0, interval: float = 0.05, state: Callable[[], object] = lambda: None
) -> None:
    """Wait for `condition`; on timeout, fail with what `state` returns then."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"condition not reached in time; state: {state()}"
        time.sleep(interval)


def requests_in_flight(server: RunningServer) -> float:
    """Requests the server has admitted and not ended: its running and waiting gauges."""
    text = httpx.get(f"{server.base_url}/metrics", timeout=30).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name in ("orthoserve_requests_running", "orthoserve_requests_waiting")
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_command(model_dir: Path, served_name: str, port: int, *extra: str, max_model_len: int | None = 512) -> list[str]:
    context = [] if max_model_len is None else ["--max-model-len", str(max_model_len)]
    admin = [] if "--admin-token-file" in extra else ["--admin-token", ADMIN_TOKEN]
    return [
        sys.executable, "-m", "server.cli", "serve",
        "--model", str(model_dir),
        "--served-model-name", served_name,
        "--host", "127.0.0.1",
        "--port", str(port),
        "--kv-cache-gib", "0.25",
        *context,
        "--cpu-threads", "1",
        *admin,
        *extra,
    ]  # fmt: skip


@contextlib.contextmanager
def start_server(
    model_dir: Path,
    served_name: str,
    log_path: Path,
    extra_args: list[str] | None = None,
    *,
    max_model_len: int | None = 512,
) -> Iterator[RunningServer]:
    """Start a server, wait until /health answers, and ask it to stop on exit (without waiting: see
    `reap_stopped`)."""
    port = free_port()
    command = server_command(model_dir, served_name, port, *(extra_args or []), max_model_len=max_model_len)
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
        time.sleep(0.25)
    log = server.log_path.read_text(errors="replace")
    pytest.fail(f"server did not become healthy (exit code {server.process.poll()}); log:\n{log[-20000:]}")


# Servers and offline engines asked to stop: vLLM takes seconds to shut down, and the session goes on
# meanwhile.
_stopping: list[subprocess.Popen] = []
_stopping_engines: list[threading.Thread] = []


def stop_in_background(engine: OfflineEngine) -> None:
    _stopping_engines.append(engine.shutdown_in_background())


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
    _stopping.append(process)


def reap_stopped(timeout_s: float = 60) -> None:
    """Wait for the offline engines and servers asked to stop (killing servers past `timeout_s`), and
    any engine process of theirs still alive: the engine core and worker share the server's session."""
    deadline = time.monotonic() + timeout_s
    while _stopping_engines:
        _stopping_engines.pop().join()
    while _stopping:
        process = _stopping.pop()
        try:
            process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
        # Before `wait` reaps the server: until then its pid, and so its group id, cannot be reused.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, 9)
        process.wait()
