"""Validation of an adapter-set directory against the served base model (adapters' loader), in the
two steps the registry runs: the structure before the engine may read the file, the contents while
it does."""

from __future__ import annotations

import functools
from pathlib import Path

import torch

from adapters.base_model import BaseModelInfo
from adapters.format import SetStructure, check_structure, read_checked_tensors
from adapters.serving.heap import release_freed_memory
from router.ports import SetDescription, SetInspection


class AdapterSetValidator:
    """Checks names, shapes, dtypes and the base fingerprint (`inspect`), then every tensor's checksum
    and values (the inspection's `check_contents`).

    Both raise the adapters' typed errors (`adapters.errors.AdapterError`, each with a stable `.code`).
    """

    def __init__(self, base: BaseModelInfo, serving_dtype: torch.dtype) -> None:
        self._base = base
        self._itemsize = serving_dtype.itemsize

    def inspect(self, set_dir: Path) -> SetInspection:
        structure = check_structure(set_dir, self._base)
        description = SetDescription(
            kind=structure.manifest.kind,  # type: ignore[arg-type]  # the manifest admits registered kinds only
            tasks=structure.manifest.tasks,
            input_routed=structure.manifest.method().input_routed(structure.config),
            # The engine keeps the set in its own dtype: estimate the footprint at that width.
            nbytes=structure.num_elements * self._itemsize,
            task_rows=structure.manifest.method().serving.task_rows_needed(structure.config, len(structure.manifest.tasks)),
        )
        return SetInspection(description, functools.partial(_check_contents, structure))


def _check_contents(structure: SetStructure) -> None:
    try:
        read_checked_tensors(structure)
    finally:
        # The set's tensors were read only to check them; give their memory back now.
        release_freed_memory()
