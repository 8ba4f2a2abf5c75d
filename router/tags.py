"""Task tags: how a request names the base model, an adapter set and one of its tasks.

Accepted forms, checked in this order:
1. `model` is the served base model's name → the base model (a body `task` is an error).
2. `model: "<set>/<task>"` → that task (a body `task`, if given, must be the same).
3. `model: "<set>"` with body `task` → that task.
4. `model: "<set>"` alone → the set's only task, or input routing for a BADIT set routed on its input.
There is no fallback: anything else is an error naming what is valid.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from router.errors import AdapterSetNameInvalid, TaskNotFound, TaskRequired, TaskTagInvalid

TASK_SEPARATOR = "/"
SET_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class TaskTag:
    """A parsed `model` field (with the body's `task` merged in): the base model (`set_name` None) or
    an adapter set, with `task` None when not named."""

    set_name: str | None
    task: str | None

    @property
    def is_base(self) -> bool:
        return self.set_name is None


def parse_tag(model: str, body_task: str | None, base_model_name: str) -> TaskTag:
    """Recognise the base model's name, or split `<set>[/<task>]` and merge the body's `task` into it."""
    if model == base_model_name:
        if body_task is not None:
            raise TaskTagInvalid(f"The base model '{model}' has no tasks; drop the body field 'task'.", param="task")
        return TaskTag(None, None)
    set_name, separator, tag_task = model.partition(TASK_SEPARATOR)
    if separator and not tag_task:
        raise TaskTagInvalid(f"The model '{model}' ends with '/' but names no task.", param="model")
    if body_task is not None and not body_task:
        raise TaskTagInvalid("The body field 'task' is empty.", param="task")
    task = tag_task or None
    if task is not None and body_task is not None and task != body_task:
        raise TaskTagInvalid(
            f"The model '{model}' names task '{task}' but the body field 'task' is '{body_task}'.",
            param="task",
        )
    return TaskTag(set_name, task or body_task)


def named_set(model: str, base_model_name: str) -> str | None:
    """The set a `model` field names (None: the base model), without checking the rest of the tag."""
    return None if model == base_model_name else model.partition(TASK_SEPARATOR)[0]


def choose_task(set_name: str, tasks: tuple[str, ...], input_routed: bool, task: str | None) -> int | None:
    """Index of the requested task in `tasks`, or None for a set that routes on its input."""
    if task is not None:
        if task not in tasks:
            raise TaskNotFound(set_name, task, tasks)
        return tasks.index(task)
    if len(tasks) == 1:
        return 0
    if input_routed:
        return None
    raise TaskRequired(set_name, tasks)


def check_set_name(name: str, base_model_name: str) -> None:
    """Set names are plain path-free identifiers that cannot shadow the base model."""
    if not SET_NAME_PATTERN.fullmatch(name):
        raise AdapterSetNameInvalid(
            f"Invalid adapter-set name '{name}': use 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit."
        )
    if name in (base_model_name, base_model_name.partition(TASK_SEPARATOR)[0]):
        raise AdapterSetNameInvalid(f"'{name}' would shadow the base model '{base_model_name}'.")
