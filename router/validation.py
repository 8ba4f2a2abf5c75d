"""Full validation of an adapter-set directory against the served base model (adapters' loader)."""

from __future__ import annotations

from pathlib import Path

from adapters.base_model import BaseModelInfo
from adapters.format import load_adapter_set
from router.ports import SetDescription


class AdapterSetValidator:
    """Reads every tensor, checks names, shapes, dtypes, checksums, values and the base fingerprint.

    Raises the adapters' typed errors (`adapters.errors.AdapterError`, each with a stable `.code`).
    """

    def __init__(self, base: BaseModelInfo) -> None:
        self._base = base

    def __call__(self, set_dir: Path) -> SetDescription:
        adapter_set = load_adapter_set(set_dir, self._base)
        return SetDescription(
            kind=adapter_set.kind,  # type: ignore[arg-type]  # the manifest admits registered kinds only
            tasks=adapter_set.tasks,
            input_routed=adapter_set.input_routed,
            nbytes=adapter_set.nbytes,
        )
