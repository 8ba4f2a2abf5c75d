"""The OpenAI endpoints: vLLM's own request models and serving classes, reached through our task tags.

Each handler only names vLLM's serving call; `serve_generation` does the rest (tag, lease, metrics,
errors, streaming). Tokenization needs no engine request: the tag is checked, then vLLM's tokenizer
answers for the base model, which every adapter set shares.
"""

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from server.api.generation import serve_generation
from server.api.vllm_route import vllm_route
from server.deps import EngineDep
from server.engine.vllm import openai as vllm_openai
from server.error_handlers import vllm_error_response

chat_router = APIRouter(route_class=vllm_route("chat"))
completions_router = APIRouter(route_class=vllm_route("completions"))
responses_router = APIRouter(route_class=vllm_route("responses"))
tokenize_router = APIRouter(route_class=vllm_route())


@chat_router.post("/v1/chat/completions")
async def create_chat_completion(body: vllm_openai.ChatCompletionRequest, http: Request, engine: EngineDep) -> Response:
    return await serve_generation(http, "chat", body, engine.serving.chat.create_chat_completion)


@completions_router.post("/v1/completions")
async def create_completion(body: vllm_openai.CompletionRequest, http: Request, engine: EngineDep) -> Response:
    return await serve_generation(http, "completions", body, engine.serving.completion.create_completion)


@responses_router.post("/v1/responses")
async def create_response(body: vllm_openai.ResponsesRequest, http: Request, engine: EngineDep) -> Response:
    return await serve_generation(http, "responses", body, engine.serving.responses.create_responses)


@tokenize_router.post("/tokenize")
async def tokenize(body: vllm_openai.TokenizeRequest, http: Request, engine: EngineDep) -> Response:
    engine.check_model(body.model, (body.model_extra or {}).get("task"))
    body.model = None  # the base model's tokenizer is every adapter set's
    return _plain(await engine.serving.tokenization.create_tokenize(body, http))


@tokenize_router.post("/detokenize")
async def detokenize(body: vllm_openai.DetokenizeRequest, http: Request, engine: EngineDep) -> Response:
    engine.check_model(body.model, (body.model_extra or {}).get("task"))
    body.model = None
    return _plain(await engine.serving.tokenization.create_detokenize(body, http))


def _plain(result: object) -> Response:
    if isinstance(result, vllm_openai.VllmErrorResponse):
        return vllm_error_response(result)
    return JSONResponse(result.model_dump(mode="json"))


routers = (chat_router, completions_router, responses_router, tokenize_router)
