"""The resident adapter registry: the one source of truth for which set versions serve requests.

Life of a version: check its structure (in a thread) → check the memory budget → `backend.load` under
a fresh slot, while a thread checks the tensors' checksums and values → publish (one dict assignment,
so a request sees the old or the new version, never a mix).
A replaced or deleted version turns `draining`: requests already holding it finish on it, and its
slot is unloaded when the last of them releases its lease. Every registry change happens on the
event loop, so counters need no locks; per-name exclusivity is the `_busy` set.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from pathlib import Path

from router.errors import (
    AdapterSetBusy,
    AdapterSetExists,
    ModelNotFound,
    MemoryBudgetExceeded,
    RouterError,
    TaskTagInvalid,
)
from router.paths import AdapterRoots
from router.ports import AdapterSlotBackend, RegistryObserver, SetDescription, SetInspection, SetValidator
from router.resident import Lease, ResidentVersion
from router.tags import check_set_name, choose_task, parse_tag
from router.target import BASE_TARGET

logger = logging.getLogger(__name__)


class AdapterRegistry:
    def __init__(
        self,
        backend: AdapterSlotBackend,
        validator: SetValidator,
        base_model_name: str,
        *,
        roots: AdapterRoots,
        memory_budget: int | None = None,
        observer: RegistryObserver | None = None,
    ) -> None:
        self.base_model_name = base_model_name
        self.roots = roots
        self.memory_budget = memory_budget
        self._backend = backend
        self._validator = validator
        self._observer = observer
        self._published: dict[str, ResidentVersion] = {}
        self._resident: dict[int, ResidentVersion] = {}  # slot → version, published and draining
        self._busy: set[str] = set()
        self._last_version: dict[str, int] = {}  # survives unload, so versions never repeat
        self._slots = itertools.count(1)
        self._reserved_bytes = 0  # budget held by loads in progress
        self._background: set[asyncio.Task[None]] = set()

    # -- request path -------------------------------------------------------------------------

    def acquire(self, model: str, task: str | None = None) -> Lease:
        """Resolve a request's tag and hold its set version until the lease is released."""
        if model == self.base_model_name:
            if task is not None:
                raise TaskTagInvalid(
                    f"The base model '{model}' has no tasks; drop the body field 'task'.", param="task"
                )
            return Lease(BASE_TARGET)
        tag = parse_tag(model, task)
        entry = self._published.get(tag.set_name)
        if entry is None:
            raise ModelNotFound(model)
        target = entry.target(choose_task(entry.name, entry.tasks, entry.input_routed, tag.task))
        entry.in_flight += 1
        return Lease(target, lambda: self._release(entry))

    def _release(self, entry: ResidentVersion) -> None:
        entry.in_flight -= 1
        if entry.in_flight == 0 and entry.state == "draining":
            self._start_unload(entry)

    # -- views ----------------------------------------------------------------------------------

    def published(self) -> list[ResidentVersion]:
        """Versions new requests can reach, by name."""
        return [self._published[name] for name in sorted(self._published)]

    def resident(self) -> list[ResidentVersion]:
        """Every version in engine memory (published and draining), by name and version."""
        return sorted(self._resident.values(), key=lambda entry: (entry.name, entry.version))

    @property
    def used_bytes(self) -> int:
        return sum(entry.nbytes for entry in self._resident.values())

    # -- loading --------------------------------------------------------------------------------

    async def load(self, name: str, path: str, *, replace: bool = False) -> ResidentVersion:
        """Load a set from a path given by a client (checked against the adapter roots)."""
        try:
            check_set_name(name, self.base_model_name)
            set_dir = self.roots.resolve(path)
        except RouterError as error:
            self._notify_failed(None, error)
            raise
        return await self.load_trusted(name, set_dir, replace=replace)

    async def load_trusted(self, name: str, set_dir: Path, *, replace: bool = False) -> ResidentVersion:
        """Load a set from a directory the operator configured; publish it under `name`.

        With `replace`, a published version of `name` is retired once the new one is live.
        """
        check_set_name(name, self.base_model_name)
        if name in self._busy:
            raise AdapterSetBusy(name)
        if name in self._published and not replace:
            raise AdapterSetExists(name)
        self._busy.add(name)
        # Shielded: a client that disconnects mid-load must not leave a half-loaded slot behind.
        return await asyncio.shield(asyncio.ensure_future(self._load_exclusive(name, set_dir)))

    async def load_directory(self, directory: Path, manifest_name: str) -> list[ResidentVersion]:
        """Load every subdirectory of `directory` holding `manifest_name`; log and skip bad ones."""
        loaded = []
        for set_dir in sorted(path for path in directory.iterdir() if (path / manifest_name).is_file()):
            try:
                loaded.append(await self.load_trusted(set_dir.name, set_dir.resolve()))
            except Exception as error:  # noqa: BLE001 - one bad set must not stop the others loading
                logger.error(
                    "skipped adapter set %s: [%s] %s", set_dir, getattr(error, "code", type(error).__name__), error
                )
        return loaded

    async def _load_exclusive(self, name: str, set_dir: Path) -> ResidentVersion:
        """Validate and load into the engine; nothing is published unless both succeed."""
        started = time.perf_counter()
        description: SetDescription | None = None
        try:
            inspection = await asyncio.to_thread(self._validator.inspect, set_dir)
            description = inspection.description
            slot, nbytes = await self._load_checked(name, set_dir, inspection)
        except Exception as error:
            self._notify_failed(description, error)
            raise
        finally:
            self._busy.discard(name)
        entry = ResidentVersion(
            name=name,
            version=self._last_version.get(name, 0) + 1,
            slot=slot,
            kind=description.kind,
            tasks=description.tasks,
            input_routed=description.input_routed,
            path=set_dir,
            nbytes=nbytes,
            load_seconds=time.perf_counter() - started,
            loaded_at=time.time(),
        )
        previous = self._published.get(name)
        self._published[name] = entry
        self._resident[entry.slot] = entry
        self._last_version[name] = entry.version
        if self._observer is not None:
            self._observer.set_loaded(entry.name, entry.kind, entry.version, entry.nbytes, entry.load_seconds)
        logger.info("loaded adapter set %s (%s, %d bytes, %.2fs)", entry.label, entry.kind, entry.nbytes, entry.load_seconds)
        if previous is not None:
            await self._retire(previous)
        return entry

    async def _load_checked(self, name: str, set_dir: Path, inspection: SetInspection) -> tuple[int, int]:
        """(slot, bytes) of a set whose structure is checked, loaded into the engine while its tensor
        contents are checked alongside (the engine never reads a file whose structure is unchecked).
        A bad set is reported as such even when the engine refused it too; on any failure the engine
        holds nothing of it."""
        contents = asyncio.ensure_future(asyncio.to_thread(inspection.check_contents))
        try:
            slot, nbytes = await self._load_into_engine(name, set_dir, inspection.description.nbytes)
        except Exception:
            await asyncio.wait([contents])
            contents.result()
            raise
        try:
            await contents
        except Exception:
            await self._backend.unload(slot)
            raise
        return slot, nbytes

    async def _load_into_engine(self, name: str, set_dir: Path, needed: int) -> tuple[int, int]:
        """(slot, bytes) of the validated set loaded into the engine; on any failure the engine holds
        nothing of it."""
        self._check_budget(name, needed)
        self._reserved_bytes += needed
        slot = next(self._slots)
        try:
            nbytes = await self._backend.load(slot, set_dir)
        finally:
            self._reserved_bytes -= needed
        if self.memory_budget is not None and self.used_bytes + self._reserved_bytes + nbytes > self.memory_budget:
            await self._backend.unload(slot)
            raise MemoryBudgetExceeded(name, nbytes, self.used_bytes + self._reserved_bytes, self.memory_budget)
        return slot, nbytes

    def _check_budget(self, name: str, needed: int) -> None:
        if self.memory_budget is None:
            return
        used = self.used_bytes + self._reserved_bytes
        if used + needed > self.memory_budget:
            raise MemoryBudgetExceeded(name, needed, used, self.memory_budget)

    def _notify_failed(self, description: SetDescription | None, error: Exception) -> None:
        if self._observer is not None:
            kind = description.kind if description is not None else None
            self._observer.set_load_failed(kind, getattr(error, "code", "engine_error"))

    # -- unloading ------------------------------------------------------------------------------

    async def unload(self, name: str, *, wait: bool = False) -> ResidentVersion:
        """Stop new requests to `name`; free its memory now if idle, else when its last request ends.

        With `wait`, return only once the memory is freed.
        """
        if name in self._busy:
            raise AdapterSetBusy(name)
        entry = self._published.pop(name, None)
        if entry is None:
            raise ModelNotFound(name, param="name")
        await self._retire(entry)
        if wait:
            await entry.freed.wait()
        return entry

    async def _retire(self, entry: ResidentVersion) -> None:
        entry.state = "draining"
        if entry.in_flight == 0:
            await asyncio.shield(self._start_unload(entry))

    def _start_unload(self, entry: ResidentVersion) -> asyncio.Task[None]:
        task = asyncio.ensure_future(self._unload_slot(entry))
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    async def _unload_slot(self, entry: ResidentVersion) -> None:
        try:
            await self._backend.unload(entry.slot)
        except Exception:  # noqa: BLE001 - runs detached from any request; keep the registry honest
            entry.state = "unload_failed"
            logger.exception("unloading adapter set %s (slot %d) failed", entry.label, entry.slot)
            return
        del self._resident[entry.slot]
        entry.freed.set()
        if self._observer is not None:
            self._observer.set_unloaded(entry.name, entry.kind, entry.version)
        logger.info("unloaded adapter set %s (%d bytes freed)", entry.label, entry.nbytes)

