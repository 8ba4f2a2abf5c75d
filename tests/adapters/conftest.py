"""Fixtures of the adapter tests: seeded torch, and the PyTorch reference over the shared adapter sets
(`tests/adapter_fixtures.py`)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from adapters.reference import ReferenceModel

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seeded() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def reference(tiny_model_dir: Path, set_dirs: dict[str, Path], svd_cache_dir: Path) -> ReferenceModel:
    return ReferenceModel.from_pretrained(tiny_model_dir, set_dirs, svd_cache_dir)
