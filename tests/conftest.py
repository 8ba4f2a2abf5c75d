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
from typing import Any

import pytest
from xdist.scheduler import LoadScopeScheduling

sys.path.insert(0, str(Path(__file__).resolve().parent))

from server_process import TINY_MODEL_NAME, RunningServer, reap_stopped, start_server  # noqa: E402
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


# The modules that use the shared `server`: on several pytest-xdist workers (`make test
# TEST_WORKERS=2`) they run on one worker, in collection order, so that the server sees the same
# sequence of tests as in a serial run. Collection checks that this list is complete.
SHARED_SERVER_MODULES = frozenset(
    {
        "tests/docker/test_dashboard_prometheus.py",
        "tests/docker/test_docker_assets.py",
        "tests/evaluation/test_eval_server.py",
        "tests/router/test_bad_set_corpus.py",
        "tests/router/test_hot_swap.py",
        "tests/router/test_more_sets_than_slots.py",
        "tests/router/test_tags_server.py",
        "tests/server/test_admin.py",
        "tests/server/test_api.py",
        "tests/server/test_api_errors.py",
        "tests/server/test_fuzz_openapi.py",
        "tests/server/test_lm_eval.py",
        "tests/server/test_metrics_server.py",
        "tests/server/test_openai_surface.py",
        "tests/server/test_soak.py",
        "tests/training/test_serving_trained.py",
    }
)


def module_of(nodeid: str) -> str:
    return nodeid.partition("::")[0]


class ModuleScheduling(LoadScopeScheduling):
    """pytest-xdist's `--dist loadfile`, except that the modules on the shared server are one unit.

    xdist's own `loadgroup` cannot express this on pytest 9: its group marks never reach the scheduler
    (pytest-dev/pytest-xdist#1386)."""

    def _split_scope(self, nodeid: str) -> str:
        module = module_of(nodeid)
        return "shared server" if module in SHARED_SERVER_MODULES else module


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> ModuleScheduling:
    return ModuleScheduling(config, log)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The modules on the shared server and those marked `first` (each runs for minutes) come first:
    on several workers the longest work then does not finish alone at the end."""
    unlisted = {module_of(item.nodeid) for item in items if "server" in getattr(item, "fixturenames", ())}
    unlisted -= SHARED_SERVER_MODULES
    if unlisted:
        raise pytest.UsageError(f"add {sorted(unlisted)} to SHARED_SERVER_MODULES in tests/conftest.py")
    items.sort(key=lambda item: not (module_of(item.nodeid) in SHARED_SERVER_MODULES or item.get_closest_marker("first")))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    """Attach the tail of the server log to every failing test that used a server."""
    outcome = yield
    report = outcome.get_result()
    if report.failed and call.when == "call":
        for value in _servers_in(getattr(item, "funcargs", {}).values()):
            if value.log_path.exists():
                tail = value.log_path.read_text(errors="replace")[-8000:]
                report.sections.append((f"server log ({value.log_path})", tail))


def _servers_in(values: Any) -> Iterator[RunningServer]:
    """The servers among a test's fixture values, and inside tuples of them (`(server, admin_url)`)."""
    for value in values:
        if isinstance(value, RunningServer):
            yield value
        elif isinstance(value, tuple):
            yield from _servers_in(value)


def pytest_sessionfinish() -> None:
    reap_stopped()
