"""What the registry needs from the engine, the adapter-set validator and metrics (structural types)."""

from __future__ import annotations

from collections.abc import Callable
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


@dataclass(frozen=True)
class SetInspection:
    """A set whose structure is checked: what it is, and the check of its tensor bytes still to run."""

    description: SetDescription
    check_contents: Callable[[], None]  # blocking: checksums and values; run while the engine loads the set


class SetValidator(Protocol):
    def inspect(self, set_dir: Path) -> SetInspection:
        """Check everything but the tensor bytes (blocking, cheap); after it the engine may read the
        file. Raises a typed error with a stable `.code` if the set is bad, as `check_contents` does."""
        ...


class RegistryObserver(Protocol):
    """Receives residency events (metrics)."""

    def set_loaded(self, set_name: str, kind: str, version: int, nbytes: int, seconds: float) -> None: ...

    def set_unloaded(self, set_name: str, kind: str, version: int) -> None: ...

    def set_load_failed(self, kind: str | None, code: str) -> None: ...
