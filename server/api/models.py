"""`GET /v1/models`: the base model, every adapter set and every `set/task` a client may pass as `model`."""

import time
from typing import Literal

from fastapi import APIRouter
from pydantic import BaseModel, Field

from server.deps import EngineDep, RegistryDep

router = APIRouter()


class AdapterSetCardInfo(BaseModel):
    """The `orthoserve` object of an adapter set's (or one of its tasks') model card."""

    kind: str
    version: int
    tasks: list[str]


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=lambda: int(time.time()))
    owned_by: str = "orthoserve"
    max_model_len: int | None = None
    parent: str | None = None
    orthoserve: AdapterSetCardInfo | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


@router.get("/v1/models")
async def list_models(engine: EngineDep, registry: RegistryDep) -> ModelList:
    base, context = engine.served_model_name, engine.max_model_len
    cards = [ModelCard(id=base, max_model_len=context)]
    for entry in registry.published():
        info = AdapterSetCardInfo(kind=entry.kind, version=entry.version, tasks=list(entry.tasks))
        created = int(entry.loaded_at)
        cards.append(ModelCard(id=entry.name, created=created, max_model_len=context, parent=base, orthoserve=info))
        cards.extend(
            ModelCard(id=f"{entry.name}/{task}", created=created, max_model_len=context, parent=entry.name, orthoserve=info)
            for task in entry.tasks
        )
    return ModelList(data=cards)
