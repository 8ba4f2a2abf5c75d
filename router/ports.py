"""What the registry needs from the engine, the adapter-set validator and metrics (structural types)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from router.target import AdapterKind


class AdapterSlotBackend(Protocol):
    """The engine side of residency (implemented by `server.engine.adapter_backend.AdapterEngineBackend`)."""

    async def load(self, slot: int, set_dir: Path) -> int:
        """Put one validated set version into the engine under `slot`; return the bytes it occupies."""
        ...

    async def unload(self, slot: int) -> object:
        """Free `slot`; no running request uses it any more."""
        ...


@dataclass(frozen=True)
class SetDescription:
    """What validating a set directory against the served base model tells the registry."""

    kind: AdapterKind
    tasks: tuple[str, ...]
    input_routed: bool  # True for BADIT sets that pick abilities from the input, not from a task
    nbytes: int  # bytes of the set's tensors, an estimate of its engine footprint before loading


class SetValidator(Protocol):
    """Both steps block and raise a typed error with a stable `.code` if the set is bad."""

    def describe(self, set_dir: Path) -> SetDescription:
        """Check everything but the tensor bytes (cheap); after it the engine may read the file."""
        ...

    def check_contents(self, set_dir: Path) -> None:
        """Check every tensor's bytes (checksums, values); slow, run while the engine loads the set."""
        ...


class RegistryObserver(Protocol):
    """Receives residency events (metrics)."""

    def set_loaded(self, set_name: str, kind: str, version: int, nbytes: int, seconds: float) -> None: ...

    def set_unloaded(self, set_name: str, kind: str, version: int) -> None: ...

    def set_load_failed(self, kind: str | None, code: str) -> None: ...
