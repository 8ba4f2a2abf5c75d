"""`GET /metrics`: orthoserve's Prometheus metrics; `GET /metrics/vllm`: the engine's own `vllm:` ones."""

from fastapi import APIRouter
from fastapi.responses import Response

from server.deps import MetricsDep

router = APIRouter()


@router.get("/metrics", response_class=Response)
async def metrics(serving: MetricsDep) -> Response:
    return Response(serving.render(), media_type=serving.content_type)


@router.get("/metrics/vllm", response_class=Response)
async def engine_metrics(serving: MetricsDep) -> Response:
    return Response(serving.render_engine(), media_type=serving.content_type)
