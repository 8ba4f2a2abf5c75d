"""Resolution of a request's `model` (and optional `task`) to what the engine runs.

Every request is resolved by exactly one call, `TargetResolver.resolve`, made by the engine service.
Today only the served base model resolves; an adapter-set router implements the same protocol.
"""

from __future__ import annotations

from typing import Protocol

from router.target import BASE_TARGET, RouteTarget
from server.errors import InvalidRequest, ModelNotFound


class TargetResolver(Protocol):
    def resolve(self, model: str, task: str | None) -> RouteTarget:
        """The target of a request, or a domain error (`ModelNotFound`, ...)."""
        ...

    def model_ids(self) -> list[str]:
        """Every name a client may pass as `model`."""
        ...


class BaseModelResolver:
    """Resolves the served base model's name and nothing else."""

    def __init__(self, served_model_name: str) -> None:
        self.served_model_name = served_model_name

    def resolve(self, model: str, task: str | None) -> RouteTarget:
        if model != self.served_model_name:
            raise ModelNotFound(model)
        if task is not None:
            raise InvalidRequest(
                f"The base model `{model}` has no tasks; `task` needs an adapter set.", param="task"
            )
        return BASE_TARGET

    def model_ids(self) -> list[str]:
        return [self.served_model_name]
