"""Resolution of a request's `model` (and optional `task`) to what the engine runs.

Every request is resolved by exactly one call, `TargetResolver.acquire`, made by the engine service.
The lease it returns holds the resolved adapter-set version in an engine slot until the request ends
(the call waits while the version is brought in). `resolve` answers the same question without
holding anything, for requests that run no generation. The served app resolves through the adapter
registry (`router.registry.AdapterRegistry`); an engine service built without one serves the base
model only.
"""

from __future__ import annotations

from typing import Protocol

from router.errors import ModelNotFound
from router.resident import Lease
from router.tags import named_set, parse_tag
from router.target import BASE_TARGET, RouteTarget


class TargetResolver(Protocol):
    async def acquire(self, model: str, task: str | None) -> Lease:
        """The target of a request, held until the lease is released, or a domain error."""
        ...

    def resolve(self, model: str, task: str | None) -> RouteTarget:
        """The target a tag names, or its domain error; nothing is held."""
        ...


class BaseModelResolver:
    """Resolves the served base model's name and nothing else."""

    def __init__(self, served_model_name: str) -> None:
        self.served_model_name = served_model_name

    async def acquire(self, model: str, task: str | None) -> Lease:
        return Lease(self.resolve(model, task))

    def resolve(self, model: str, task: str | None) -> RouteTarget:
        if named_set(model, self.served_model_name) is not None:
            raise ModelNotFound(model)
        parse_tag(model, task, self.served_model_name)  # the base model takes no task
        return BASE_TARGET
