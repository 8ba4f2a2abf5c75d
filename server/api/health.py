"""Probes. `GET /health`: the process is alive and its engine is running (503 at once when the engine
has died). `GET /ready`: the engine is up and the start-up adapter sets are loaded, so traffic may
come (503 while starting, stopping, or once the engine has died)."""

from fastapi import APIRouter, Request

from server.deps import EngineDep
from server.errors import EngineUnavailable

router = APIRouter()


@router.get("/health")
async def health(engine: EngineDep) -> dict[str, str]:
    await engine.check_health()
    return {"status": "ok"}


@router.get("/ready")
async def ready(engine: EngineDep, request: Request) -> dict[str, str]:
    await engine.check_health()
    if not getattr(request.app.state, "ready", False):
        raise EngineUnavailable("The server is starting or stopping.")
    return {"status": "ready"}
