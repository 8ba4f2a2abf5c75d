"""`GET /metrics`: orthoserve's Prometheus metrics; `GET /metrics/vllm`: the engine's own `vllm:` ones.

The handlers are plain functions, so FastAPI runs them in its thread pool: rendering hundreds of
labelled histograms takes long enough that it must not hold up the event loop serving tokens.
"""

from fastapi import APIRouter
from fastapi.responses import Response

from server.deps import MetricsDep

router = APIRouter()


@router.get("/metrics", response_class=Response)
def metrics(serving: MetricsDep) -> Response:
    return Response(serving.render(), media_type=serving.content_type)


@router.get("/metrics/vllm", response_class=Response)
def engine_metrics(serving: MetricsDep) -> Response:
    return Response(serving.render_engine(), media_type=serving.content_type)
