"""Small multi-task data and a helper that trains a set on the tiny model in a few seconds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from adapters.training.examples import Example
from adapters.training.settings import resolve_settings
from adapters.training.trainer import TrainResult, prepare_run, train

torch.set_num_threads(1)

WORDS = ["paris", "river", "stone", "light", "green", "water", "north", "table"]


def toy_examples() -> list[Example]:
    """Two tasks whose answers depend on the task: `same` answers the word's class, `flip` the other one."""
    examples = []
    for index, word in enumerate(WORDS * 2):
        answer, other = (" yes", " no") if index % 2 else (" no", " yes")
        examples.append(Example("same", f"Is {word} listed?\nAnswer:", answer))
        examples.append(Example("flip", f"Is {word} listed?\nAnswer:", other))
    return examples


@pytest.fixture(scope="session")
def toy_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "toy.jsonl"
    path.write_text("".join(json.dumps(e.__dict__) + "\n" for e in toy_examples()))
    return path


def train_toy(
    kind: str, base_model: Path, out_dir: Path, cache_dir: Path, *, resume: bool = False, run_options: dict[str, Any] | None = None, **settings: Any
) -> TrainResult:
    options = dict(batch_size=8, epochs=3, learning_rate=3e-3, seed=7) | settings
    run = prepare_run(
        kind,
        base_model=base_model,
        examples=toy_examples(),
        settings=resolve_settings(kind, options),
        out_dir=out_dir,
        overwrite=True,
        resume=resume,
        cache_dir=cache_dir,
        data_source="toy",
        **(run_options or {}),
    )
    return train(run, resume=resume, progress=False, log=lambda line: None)
