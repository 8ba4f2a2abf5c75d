"""Session fixtures shared by the adapter and GPU-emulation tests: the tiny base model's description,
its SVD cache, and a few valid adapter sets of every kind."""

from __future__ import annotations

from pathlib import Path

import pytest

from adapters.badit.config import BaditConfig
from adapters.base_model import BaseModelInfo, describe_base_model
from adapters.initialise import init_adapter_set
from adapters.svd_cache import BaseFactors, base_factors

MOORE_TASKS = ["arc-e", "boolq"]


@pytest.fixture(scope="session")
def base(tiny_model_dir: Path) -> BaseModelInfo:
    return describe_base_model(tiny_model_dir)


@pytest.fixture(scope="session")
def svd_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("svd-cache")


@pytest.fixture(scope="session")
def factors(base: BaseModelInfo, svd_cache_dir: Path) -> BaseFactors:
    return base_factors(base, svd_cache_dir, progress=False)


@pytest.fixture(scope="session")
def factors_dir(factors: BaseFactors) -> Path:
    """The verified SVD factor folder engine workers read."""
    return factors.folder


@pytest.fixture(scope="session")
def set_dirs(tmp_path_factory: pytest.TempPathFactory, base: BaseModelInfo, svd_cache_dir: Path) -> dict[str, Path]:
    """name → folder of a valid set: paper and random inits of each kind, and a task-routed BADIT set."""
    root = tmp_path_factory.mktemp("sets")
    specs = {
        "moore-paper": dict(kind="moore", tasks=MOORE_TASKS, mode="paper"),
        "moore-random": dict(kind="moore", tasks=MOORE_TASKS, mode="random"),
        "badit-paper": dict(kind="badit", tasks=["default"], mode="paper"),
        "badit-random": dict(kind="badit", tasks=["default"], mode="random"),
        "badit-tasks": dict(
            kind="badit", tasks=["summarise", "classify"], mode="random", config=BaditConfig(routing="task")
        ),
        "lora-paper": dict(kind="lora", tasks=["chat"], mode="paper"),
        "lora-random": dict(kind="lora", tasks=["chat"], mode="random"),
    }
    for seed, (name, spec) in enumerate(specs.items()):
        init_adapter_set(root / name, base=base, cache_dir=svd_cache_dir, seed=seed, **spec)
    return {name: root / name for name in specs}
