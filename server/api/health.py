"""`GET /health`: 200 while the engine runs, 503 in the error envelope once it has died."""

from fastapi import APIRouter

from server.deps import EngineDep

router = APIRouter()


@router.get("/health")
async def health(engine: EngineDep) -> dict[str, str]:
    await engine.check_health()
    return {"status": "ok"}
