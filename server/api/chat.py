"""`POST /v1/chat/completions`."""

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from server.api.observed_route import observed_route
from server.api.openai_shapes import chat_chunks, chat_response
from server.api.streaming import sse_response, until_disconnected
from server.deps import EngineDep
from server.protocol import ChatCompletionRequest, ChatCompletionResponse

router = APIRouter(route_class=observed_route("chat"))


@router.post("/v1/chat/completions", response_model=ChatCompletionResponse)
async def create_chat_completion(
    body: ChatCompletionRequest, engine: EngineDep, http: Request
) -> JSONResponse | StreamingResponse:
    job = engine.prepare_chat(body)
    # The job holds its adapter-set version; a request cancelled before its work starts lets go here.
    with job.lease.released_on_error():
        if body.stream:
            deltas = await until_disconnected(http, engine.open_stream(job))
            return sse_response(chat_chunks(job, deltas, body.include_usage_in_stream), job.headers)
        choices = await until_disconnected(http, engine.generate(job))
    return JSONResponse(chat_response(job, choices).model_dump(), headers=job.headers)
