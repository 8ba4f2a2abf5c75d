"""One loaded version of an adapter set, and a request's hold on it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from router.target import AdapterKind, RouteTarget

VersionState = Literal["ready", "draining", "unload_failed"]
Residency = Literal["slot", "host", "disk", "loading", "evicting"]


@dataclass
class ResidentVersion:
    """A registered set version. `ready` ones are published; `draining` ones were replaced or deleted
    and are dropped when their last in-flight request ends. `residency` says where it is now (see
    `router.slots`): in an engine slot, a host copy, or only its folder."""

    name: str
    version: int
    slot: int
    kind: AdapterKind
    tasks: tuple[str, ...]
    input_routed: bool
    path: Path
    nbytes: int
    load_seconds: float
    loaded_at: float  # unix time
    task_rows: int = 0  # rows of its method's task pool it takes in a slot
    pinned: bool = False  # never evicted
    state: VersionState = "ready"
    residency: Residency = "disk"
    in_flight: int = 0  # requests holding it in its slot
    last_used: float = 0.0  # monotonic time of the last request that held it
    host_bytes: int = 0  # its host copy's bytes, while evicted with one
    yielding: bool = False  # gives its slot up once its requests end; new requests queue
    waiters: int = 0  # requests waiting for it to be brought in
    waiting_since: float = 0.0  # monotonic time its first waiting request began to wait
    freed: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    task_targets: tuple[RouteTarget, ...] = field(init=False, repr=False)
    input_target: RouteTarget = field(init=False, repr=False)

    def __post_init__(self) -> None:
        # Per-task targets are built once here so resolving a request is a lookup.
        self.task_targets = tuple(
            RouteTarget(self.name, self.version, self.kind, task, index, self.slot)
            for index, task in enumerate(self.tasks)
        )
        self.input_target = RouteTarget(self.name, self.version, self.kind, None, 0, self.slot)

    def target(self, task_index: int | None) -> RouteTarget:
        return self.input_target if task_index is None else self.task_targets[task_index]

    @property
    def occupies_slot(self) -> bool:
        return self.residency in ("slot", "loading", "evicting")

    @property
    def label(self) -> str:
        return f"{self.name}@{self.version}"


class Lease:
    """A request's hold on the set version it resolved to.

    Use it as a (async) context manager around the whole request, streaming included; `release()`
    is idempotent, so error and cancellation paths may call it again safely.
    """

    __slots__ = ("target", "_on_release")

    def __init__(self, target: RouteTarget, on_release: Callable[[], None] | None = None) -> None:
        self.target = target
        self._on_release = on_release

    def release(self) -> None:
        on_release, self._on_release = self._on_release, None
        if on_release is not None:
            on_release()

    @contextlib.contextmanager
    def released_on_error(self) -> Iterator[RouteTarget]:
        """Keep holding past the block only if it succeeds (the request goes on to the engine)."""
        try:
            yield self.target
        except BaseException:
            self.release()
            raise

    def __enter__(self) -> RouteTarget:
        return self.target

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    async def __aenter__(self) -> RouteTarget:
        return self.target

    async def __aexit__(self, *exc_info: object) -> None:
        self.release()
