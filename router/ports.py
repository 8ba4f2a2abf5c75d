"""What the registry needs from the engine, the adapter-set validator and metrics (structural types)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from router.target import AdapterKind


@dataclass(frozen=True)
class SlotLimits:
    """One method's engine capacity: versions in slots at once, and task rows they may take together."""

    slots: int
    task_rows: int


@dataclass(frozen=True)
class Eviction:
    slot: int
    keep_host_copy: bool


@dataclass(frozen=True)
class Arrival:
    slot: int
    set_dir: Path
    from_host: bool  # restore the host copy left by its eviction, instead of reading the folder


@dataclass(frozen=True)
class MoveOutcome:
    host_bytes: dict[int, int]  # per evicted slot, its host copy's bytes (0: none kept)
    arrived: dict[int, int | Exception]  # per arrival, the bytes it occupies in the engine, or why it failed


class AdapterSlotBackend(Protocol):
    """The engine side of residency (implemented by `server.engine.adapter_backend.AdapterEngineBackend`).

    `slot` is a set version's id, never reused for another version; the engine maps it to a bank slot
    of the version's method while the version is in the engine."""

    def slot_limits(self) -> dict[str, SlotLimits]:
        """Per method the engine has capacity for: its slots and task rows."""
        ...

    def check_set(self, set_dir: Path) -> None:
        """Raise AdapterCapacityExceeded when a set's shapes exceed what any slot of its method holds (blocking)."""
        ...

    async def move(self, evictions: list[Eviction], arrivals: list[Arrival]) -> MoveOutcome:
        """In one engine call, free the slots of `evictions` (keeping host copies where asked), then
        bring `arrivals` in, each from its host copy or its folder. An arrival that fails leaves
        nothing in the engine and does not stop the others."""
        ...

    async def forget(self, slots: list[int]) -> None:
        """Drop these versions' host copies."""
        ...

    async def unload(self, slot: int) -> object:
        """Drop the version from the engine and the host; no running request uses it any more."""
        ...


@dataclass(frozen=True)
class SetDescription:
    """What validating a set directory against the served base model tells the registry."""

    kind: AdapterKind
    tasks: tuple[str, ...]
    input_routed: bool  # True for BADIT sets that pick abilities from the input, not from a task
    nbytes: int  # bytes of the set's tensors, an estimate of its engine footprint before loading
    task_rows: int = 0  # rows of its method's task pool it takes in an engine slot


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

    def swapped_in(self, kind: str, source: str, seconds: float) -> None:
        """A version came into an engine slot from `source` (host or disk)."""

    def evicted(self, kind: str, to: str) -> None:
        """A version left its engine slot for `to` (host or disk)."""
