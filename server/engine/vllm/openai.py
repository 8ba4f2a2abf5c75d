"""vLLM's OpenAI serving layer, built on orthoserve's engine client
(`server.engine.request_scope.RoutedEngineClient`). Two seams: the constructor arguments of those
classes (mirroring `vllm.entrypoints.generate.api_router.init_generate_state`), and
`TaggedServingModels`, which makes task tags valid model names and echoes them as `model`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
from vllm.entrypoints.openai.chat_completion.serving import OpenAIServingChat
from vllm.entrypoints.openai.completion.protocol import CompletionRequest
from vllm.entrypoints.openai.completion.serving import OpenAIServingCompletion
from vllm.entrypoints.openai.models.protocol import BaseModelPath
from vllm.entrypoints.openai.models.serving import OpenAIServingModels
from vllm.entrypoints.openai.responses.protocol import ResponsesRequest
from vllm.entrypoints.openai.responses.serving import OpenAIServingResponses
from vllm.entrypoints.serve.engine.protocol import ErrorResponse as VllmErrorResponse
from vllm.entrypoints.serve.exception_handling.error_response import create_error_response
from vllm.entrypoints.serve.tokenize.protocol import DetokenizeRequest, TokenizeRequest
from vllm.entrypoints.serve.tokenize.serving import ServingTokenization
from vllm.lora.request import LoRARequest
from vllm.renderers.online_renderer import OnlineRenderer

from server.engine.vllm import UnsupportedEngineLayout


class TaggedServingModels(OpenAIServingModels):
    """vLLM's model registry, where the tag of the request being served is a valid model name.

    orthoserve resolves every request's tag itself (with its own errors) before vLLM sees it;
    `current_tag()` is that tag while the request runs, so vLLM accepts it and echoes it as `model`.
    """

    def __init__(self, engine_client: object, base_name: str, model_path: str, current_tag: Callable[[], str | None]) -> None:
        super().__init__(engine_client, [BaseModelPath(name=base_name, model_path=model_path)])
        self._current_tag = current_tag

    def is_base_model(self, model_name: str) -> bool:
        return super().is_base_model(model_name) or model_name == self._current_tag()

    def model_name(self, lora_request: LoRARequest | None = None) -> str:
        return self._current_tag() or super().model_name(lora_request)


@dataclass(frozen=True)
class ServingOptions:
    """The `vllm serve` options of the OpenAI layer that orthoserve exposes as settings."""

    tool_call_parser: str | None = None
    enable_auto_tool_choice: bool = False


@dataclass(frozen=True)
class OpenAIServing:
    chat: OpenAIServingChat
    completion: OpenAIServingCompletion
    responses: OpenAIServingResponses
    tokenization: ServingTokenization


def build_openai_serving(engine_client: object, models: TaggedServingModels, options: ServingOptions) -> OpenAIServing:
    """vLLM's chat, completion, Responses and tokenization serving on `engine_client`, with `vllm serve`'s defaults."""
    template = {"chat_template": None, "chat_template_content_format": "auto"}  # the tokenizer's template
    tools = {"enable_auto_tools": options.enable_auto_tool_choice, "tool_parser": options.tool_call_parser}
    renderer = OnlineRenderer(
        engine_client.model_config, engine_client.renderer, request_logger=None, **template, **tools
    )
    renderer.warmup()
    return OpenAIServing(
        chat=OpenAIServingChat(
            engine_client=engine_client,
            models=models,
            response_role="assistant",
            online_renderer=renderer,
            request_logger=None,
            **template,
            **tools,
        ),
        completion=OpenAIServingCompletion(engine_client, models, online_renderer=renderer, request_logger=None),
        responses=OpenAIServingResponses(engine_client, models, renderer, request_logger=None, **template, **tools),
        tokenization=ServingTokenization(models, renderer, **template),
    )


def verify_openai_serving() -> None:
    """Fail loudly when vLLM's OpenAI serving classes no longer take what `build_openai_serving` passes."""
    expectations = {
        "OnlineRenderer(model_config, renderer, request_logger, chat_template, ..., enable_auto_tools, tool_parser)": {
            "model_config", "renderer", "request_logger", "chat_template", "chat_template_content_format",
            "enable_auto_tools", "tool_parser",
        },
        "OpenAIServingChat(engine_client, models, response_role, online_renderer, ...)": {
            "engine_client", "models", "response_role", "online_renderer", "request_logger", "chat_template",
            "chat_template_content_format", "enable_auto_tools", "tool_parser",
        },
        "OpenAIServingCompletion(engine_client, models, online_renderer, request_logger)": {
            "engine_client", "models", "online_renderer", "request_logger",
        },
        "OpenAIServingResponses(engine_client, models, online_renderer, ...)": {
            "engine_client", "models", "online_renderer", "request_logger", "chat_template",
            "chat_template_content_format", "enable_auto_tools", "tool_parser",
        },
        "ServingTokenization(models, online_renderer, chat_template, ...)": {
            "models", "online_renderer", "chat_template", "chat_template_content_format",
        },
        "OpenAIServingModels(engine_client, base_model_paths)": {"engine_client", "base_model_paths"},
    }  # fmt: skip
    classes = (OnlineRenderer, OpenAIServingChat, OpenAIServingCompletion, OpenAIServingResponses, ServingTokenization, OpenAIServingModels)
    moved = [
        name
        for (name, needed), cls in zip(expectations.items(), classes)
        if not needed <= set(inspect.signature(cls.__init__).parameters)
    ]
    for cls, method in ((OpenAIServingModels, "is_base_model"), (OpenAIServingModels, "model_name")):
        if not callable(getattr(cls, method, None)):
            moved.append(f"{cls.__name__}.{method}")
    if moved:
        raise UnsupportedEngineLayout(f"vLLM's OpenAI serving layer has moved: {', '.join(moved)}")
