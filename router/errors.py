"""Domain errors of task-tag resolution and adapter-set residency.

Each carries a stable `code` (the `code` field of the OpenAI error envelope) and its HTTP `status`.
"""

from __future__ import annotations

from collections.abc import Sequence

from errors.domain import DomainError


class RouterError(DomainError):
    """Base of every error the router raises: ambiguous or malformed tags, bad names (400 unless said)."""

    code = "router_error"


class ModelNotFound(RouterError):
    """A `model` (or admin `name`) that names neither the base model nor a resident adapter set."""

    code = "model_not_found"
    status = 404

    def __init__(self, name: str, *, param: str | None = "model") -> None:
        super().__init__(f"The model '{name}' does not exist.", param=param)
        self.name = name


class TaskNotFound(RouterError):
    """A known set was asked for a task it was not trained on."""

    code = "task_not_found"
    status = 404

    def __init__(self, set_name: str, task: str, valid_tasks: Sequence[str]) -> None:
        super().__init__(
            f"Adapter set '{set_name}' has no task '{task}'. Valid tasks: {', '.join(valid_tasks)}.", param="task"
        )
        self.valid_tasks = tuple(valid_tasks)


class TaskRequired(RouterError):
    """A multi-task set was named without saying which task."""

    code = "task_required"

    def __init__(self, set_name: str, valid_tasks: Sequence[str]) -> None:
        super().__init__(
            f"Adapter set '{set_name}' serves several tasks; name one with model "
            f"'{set_name}/<task>' or the body field 'task'. Valid tasks: {', '.join(valid_tasks)}.",
            param="task",
        )
        self.valid_tasks = tuple(valid_tasks)


class TaskTagInvalid(RouterError):
    """The tag is malformed or contradicts itself (two different tasks, a task for the base model)."""

    code = "invalid_task_tag"


class AdapterSetNameInvalid(RouterError):
    code = "invalid_adapter_set_name"

    def __init__(self, message: str) -> None:
        super().__init__(message, param="name")


class AdapterSetExists(RouterError):
    code = "adapter_set_exists"
    status = 409

    def __init__(self, name: str) -> None:
        super().__init__(
            f"Adapter set '{name}' is already loaded; send \"replace\": true to publish a new version.",
            param="name",
        )


class AdapterSetBusy(RouterError):
    """Another load or unload of the same name is in progress."""

    code = "adapter_set_busy"
    status = 409

    def __init__(self, name: str) -> None:
        super().__init__(f"Adapter set '{name}' is being loaded or unloaded right now.", param="name")


class PathNotAllowed(RouterError):
    """The path is outside every configured adapter root (after resolving symlinks)."""

    code = "path_not_allowed"
    status = 403

    def __init__(self, message: str) -> None:
        super().__init__(message, param="path")


class AdapterPathMissing(RouterError):
    code = "adapter_path_not_found"
    status = 422

    def __init__(self, path: str) -> None:
        super().__init__(f"No adapter-set directory at '{path}'.", param="path")


class AdapterEngineLoadFailed(RouterError):
    """A validated set failed to load inside the engine; it was removed from every rank."""

    code = "adapter_load_failed"
    status = 422


class AdapterCapacityExceeded(RouterError):
    """The set does not fit the engine's fixed adapter capacity (slots per method, shapes)."""

    code = "adapter_capacity_exceeded"
    status = 507
    type = "insufficient_storage"


class MemoryBudgetExceeded(RouterError):
    code = "adapter_memory_budget_exceeded"
    status = 507
    type = "insufficient_storage"

    def __init__(self, name: str, needed: int, used: int, budget: int) -> None:
        super().__init__(
            f"Adapter set '{name}' needs {needed} bytes; {used} of the {budget}-byte adapter memory "
            f"budget are in use ({budget - used} free).",
        )
        self.needed = needed
        self.used = used
        self.budget = budget
