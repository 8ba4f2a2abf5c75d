"""Full validation of an adapter-set directory against the served base model (adapters' loader)."""

from __future__ import annotations

from pathlib import Path

import torch

from adapters.base_model import BaseModelInfo
from adapters.format import load_adapter_set
from router.heap import release_freed_memory
from router.ports import SetDescription


class AdapterSetValidator:
    """Reads every tensor, checks names, shapes, dtypes, checksums, values and the base fingerprint.

    Raises the adapters' typed errors (`adapters.errors.AdapterError`, each with a stable `.code`).
    """

    def __init__(self, base: BaseModelInfo, serving_dtype: torch.dtype) -> None:
        self._base = base
        self._itemsize = serving_dtype.itemsize

    def __call__(self, set_dir: Path) -> SetDescription:
        try:
            return self._describe(set_dir)
        finally:
            # The set's tensors were read only to check them; give their memory back now.
            release_freed_memory()

    def _describe(self, set_dir: Path) -> SetDescription:
        adapter_set = load_adapter_set(set_dir, self._base)
        return SetDescription(
            kind=adapter_set.kind,  # type: ignore[arg-type]  # the manifest admits registered kinds only
            tasks=adapter_set.tasks,
            input_routed=adapter_set.input_routed,
            # The engine keeps the set in its own dtype: estimate the footprint at that width.
            nbytes=sum(tensor.numel() for tensor in adapter_set.tensors.values()) * self._itemsize,
        )
