"""Create a new adapter set from a base model: the method's paper initialisation, or random for tests."""

from __future__ import annotations

from pathlib import Path

import torch

from adapters.base_model import BaseModelInfo
from adapters.format import AdapterSet, save_adapter_set
from adapters.registry import InitMode, MethodConfig, get_method
from adapters.svd_cache import base_factors


def init_adapter_set(
    out_dir: Path | str,
    *,
    kind: str,
    base: BaseModelInfo,
    tasks: list[str],
    name: str | None = None,
    mode: InitMode = "paper",
    config: MethodConfig | None = None,
    target_modules: list[str] | tuple[str, ...] | None = None,
    cache_dir: Path | str | None = None,
    seed: int = 0,
    overwrite: bool = False,
) -> AdapterSet:
    """Initialise a set of `kind` for `base` and write it to `out_dir` (name defaults to the folder name)."""
    method = get_method(kind)
    config = config if config is not None else method.config_cls()
    targets = list(target_modules) if target_modules is not None else list(method.default_targets)
    factors = base_factors(base, cache_dir) if method.needs_factors else None
    generator = torch.Generator().manual_seed(seed)
    tensors = method.initialise(base, config, targets, list(tasks), mode, factors, generator)
    return save_adapter_set(
        out_dir,
        name=name or Path(out_dir).name,
        config=config,
        base=base,
        target_modules=targets,
        tasks=list(tasks),
        tensors=tensors,
        provenance={"init": mode, "seed": str(seed)},
        overwrite=overwrite,
    )
