"""Shared fixtures: the tiny test model and one real orthoserve server per test session.

`server` runs `python -m server.cli serve` in a subprocess on a free 127.0.0.1 port with the tiny
Llama. Its command line is `server_command(...)` plus the `server_extra_args` fixture: features that
need more flags (adapter-set folders, ...) extend that fixture. `server_process.start_server` starts
any other configuration the same way.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from server_process import TINY_MODEL_NAME, RunningServer, start_server  # noqa: E402
from tiny_model import build_tiny_llama  # noqa: E402

# Adapter roots, startup sets and a memory budget for the shared server (`adapter_server_args`), and
# the session's adapter sets of every kind.
pytest_plugins = ("tests.router.server_setup", "tests.adapter_fixtures")


@pytest.fixture(autouse=True, scope="module")
def restore_environment() -> Iterator[None]:
    """Give each test module the environment the previous one started with: an in-process engine
    exports vLLM's CPU thread settings (`VLLM_CPU_OMP_THREADS_BIND`, ...) into `os.environ`, and every
    server started later in the session would inherit them."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


# fp32: adapter requests are compared with the fp32 PyTorch reference and with the base model, and the
# CPU engine's bf16 kernels need AVX-512 that not every test machine has. Tool calls need a parser.
SHARED_SERVER_ARGS = ["--dtype", "float32", "--enable-auto-tool-choice", "--tool-call-parser", "hermes"]


@pytest.fixture(scope="session")
def server_extra_args(adapter_server_args: list[str]) -> list[str]:
    """Extra `orthoserve serve` flags of the shared server; extend this to serve more features."""
    return [*SHARED_SERVER_ARGS, *adapter_server_args]


@pytest.fixture(scope="session")
def server(
    tiny_model_dir: Path, server_extra_args: list[str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    log_path = tmp_path_factory.mktemp("server-log") / "server.log"
    with start_server(tiny_model_dir, TINY_MODEL_NAME, log_path, server_extra_args) as running:
        yield running


SHARED_SERVER_GROUP = "shared-server"


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the `xdist_group` marks
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Schedule the suite for several pytest-xdist workers (`make test`, `--dist loadgroup`).

    - Every module that uses the shared `server` runs on one worker, in collection order, so that the
      server sees the same sequence of tests as in a serial run. Any other module is its own group:
      its module-scoped engine starts once.
    - That group and the modules marked `first` (each runs for minutes) start before the others, so
      the longest work does not finish alone at the end.
    """

    def module_of(item: pytest.Item) -> str:
        return item.nodeid.partition("::")[0]

    on_shared_server = {module_of(item) for item in items if "server" in getattr(item, "fixturenames", ())}
    for item in items:
        module = module_of(item)
        item.add_marker(pytest.mark.xdist_group(SHARED_SERVER_GROUP if module in on_shared_server else module))
    items.sort(key=lambda item: not (module_of(item) in on_shared_server or item.get_closest_marker("first")))


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
