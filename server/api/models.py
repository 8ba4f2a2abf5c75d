"""`GET /v1/models`: the base model, every adapter set and every `set/task` a client may pass as `model`."""

from fastapi import APIRouter

from server.deps import EngineDep, RegistryDep
from server.protocol import AdapterSetCardInfo, ModelCard, ModelList

router = APIRouter()


@router.get("/v1/models", response_model=ModelList)
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
