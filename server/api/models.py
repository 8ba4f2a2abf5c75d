"""`GET /v1/models`: every name a client may pass as `model`."""

from fastapi import APIRouter

from server.deps import EngineDep
from server.protocol import ModelCard, ModelList

router = APIRouter()


@router.get("/v1/models", response_model=ModelList)
async def list_models(engine: EngineDep) -> ModelList:
    return ModelList(data=[ModelCard(id=name, max_model_len=engine.max_model_len) for name in engine.model_ids()])
