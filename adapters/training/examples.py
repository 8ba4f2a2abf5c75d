"""Training examples and the documented JSONL format.

One JSON object per line, every field a non-empty string except `completion`'s leading space:

    {"task": "boolq", "prompt": "Please answer ... ?\nAnswer:", "completion": " true"}

`task` must be a valid task name (it becomes a task of the trained set); the loss is taken on the
completion (or on prompt and completion, per method default and `--loss`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from adapters.manifest import NAME_PATTERN


class TrainingInputError(ValueError):
    """Bad data, task name or hyper-parameter, found before any training starts."""


@dataclass(frozen=True)
class Example:
    task: str
    prompt: str
    completion: str


def check_task_name(task: str, where: str) -> None:
    if not NAME_PATTERN.match(task):
        raise TrainingInputError(
            f"{where}: task name {task!r} is invalid: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit."
        )


def read_jsonl(path: Path | str) -> list[Example]:
    """Every line of a JSONL file as an Example; the first bad line stops with its line number."""
    path = Path(path)
    if not path.is_file():
        raise TrainingInputError(f"Training data {path} does not exist.")
    examples = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise TrainingInputError(f"{where}: not valid JSON ({error.msg}).") from error
        if not isinstance(record, dict):
            raise TrainingInputError(f"{where}: expected an object with task, prompt and completion.")
        missing = [key for key in ("task", "prompt", "completion") if not isinstance(record.get(key), str) or not record[key]]
        if missing:
            raise TrainingInputError(f"{where}: field(s) {', '.join(missing)} missing or not a non-empty string.")
        extra = sorted(set(record) - {"task", "prompt", "completion"})
        if extra:
            raise TrainingInputError(f"{where}: unknown field(s) {', '.join(extra)}.")
        check_task_name(record["task"], where)
        examples.append(Example(record["task"], record["prompt"], record["completion"]))
    if not examples:
        raise TrainingInputError(f"Training data {path} holds no examples.")
    return examples
