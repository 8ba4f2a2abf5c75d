"""`POST /v1/completions`."""

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from server.api.observed_route import observed_route
from server.api.openai_shapes import completion_chunks, completion_response
from server.api.streaming import sse_response, until_disconnected
from server.deps import EngineDep
from server.protocol import CompletionRequest, CompletionResponse

router = APIRouter(route_class=observed_route("completions"))


@router.post("/v1/completions", response_model=CompletionResponse)
async def create_completion(body: CompletionRequest, engine: EngineDep, http: Request) -> JSONResponse | StreamingResponse:
    job = engine.prepare_completion(body)
    # The job holds its adapter-set version; a request cancelled before its work starts lets go here.
    with job.lease.released_on_error():
        if body.stream:
            deltas = await until_disconnected(http, engine.open_stream(job))
            return sse_response(completion_chunks(job, deltas, body.include_usage_in_stream), job.headers)
        choices = await until_disconnected(http, engine.generate(job))
    return JSONResponse(completion_response(job, choices).model_dump(), headers=job.headers)
