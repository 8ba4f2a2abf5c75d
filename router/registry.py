"""The adapter registry: the one source of truth for which set versions serve requests.

Life of a version: check its structure (in a thread) and its fit in the engine's capacity → register
it and bring it into an engine slot if one is free or idle, while a thread checks the tensors'
checksums and values → publish (one dict assignment, so a request sees the old or the new version,
never a mix). Any number of versions may be registered; `router.slots` brings them in and out of the
engine's slots as requests need them.
A replaced or deleted version turns `draining`: requests already holding it finish on it, and it is
dropped when the last of them releases its lease. Every registry change happens on the event loop,
so counters need no locks; per-name exclusivity is the `_loading` map.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from pathlib import Path

from router.errors import AdapterSetBusy, AdapterSetExists, ModelNotFound, RouterError
from router.paths import AdapterRoots
from router.ports import AdapterSlotBackend, RegistryObserver, SetDescription, SetInspection, SetValidator
from router.resident import Lease, ResidentVersion
from router.slots import EngineSlots, HostLimits, Retired
from router.tags import SET_NAME_PATTERN, check_set_name, choose_task, parse_tag
from router.target import BASE_TARGET, RouteTarget

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
        host: HostLimits = HostLimits(),
        resolver_root: Path | None = None,
        observer: RegistryObserver | None = None,
    ) -> None:
        self.base_model_name = base_model_name
        self.roots = roots
        self._backend = backend
        self._validator = validator
        self._observer = observer
        self._resolver = AdapterRoots([resolver_root]) if resolver_root is not None else None
        self.slots = EngineSlots(backend, backend.slot_limits(), memory_budget=memory_budget, host=host, observer=observer)
        self._published: dict[str, ResidentVersion] = {}
        self._loading: dict[str, asyncio.Future[ResidentVersion]] = {}  # per-name exclusivity
        self._last_version: dict[str, int] = {}  # survives unload, so versions never repeat
        self._ids = itertools.count(1)
        self._background: set[asyncio.Task[None]] = set()

    @property
    def memory_budget(self) -> int | None:
        return self.slots.memory_budget

    # -- request path -------------------------------------------------------------------------

    def resolve(self, model: str, task: str | None = None) -> RouteTarget:
        """The target a request's tag names among published versions, or its domain error (no hold)."""
        tag = parse_tag(model, task, self.base_model_name)
        if tag.is_base:
            return BASE_TARGET
        entry = self._published.get(tag.set_name)
        if entry is None:
            raise ModelNotFound(model)
        return entry.target(choose_task(entry.name, entry.tasks, entry.input_routed, tag.task))

    async def acquire(self, model: str, task: str | None = None) -> Lease:
        """Resolve a request's tag and hold its set version in an engine slot until the lease is
        released; waits while the version is brought into a slot."""
        tag = parse_tag(model, task, self.base_model_name)
        if tag.is_base:
            return Lease(BASE_TARGET)
        while True:
            entry = self._published.get(tag.set_name) or await self._resolve_folder(tag.set_name, model)
            target = entry.target(choose_task(entry.name, entry.tasks, entry.input_routed, tag.task))
            try:
                await self.slots.hold(entry)
            except Retired:
                continue  # replaced or deleted while it was brought in: resolve the tag again
            return Lease(target, lambda: self._release(entry))

    async def _resolve_folder(self, set_name: str, model: str) -> ResidentVersion:
        """Register the set of an unknown name from the resolver root's folder of that name, as a
        request for it arrives (none configured, or no such folder: the name is unknown)."""
        pending = self._loading.get(set_name)
        if pending is not None:
            return await asyncio.shield(pending)
        if self._resolver is None or not SET_NAME_PATTERN.fullmatch(set_name):
            raise ModelNotFound(model)
        folder = self._resolver.roots[0] / set_name
        if not (folder.is_dir() or folder.is_symlink()):
            raise ModelNotFound(model)
        logger.info("registering adapter set %s from %s on first request", set_name, folder)
        return await self.load_trusted(set_name, self._resolver.resolve(set_name))

    def _release(self, entry: ResidentVersion) -> None:
        self.slots.release(entry)
        if entry.in_flight == 0 and entry.state == "draining":
            self._start_unload(entry)

    # -- views ----------------------------------------------------------------------------------

    def published(self) -> list[ResidentVersion]:
        """Versions new requests can reach, by name."""
        return [self._published[name] for name in sorted(self._published)]

    def resident(self) -> list[ResidentVersion]:
        """Every registered version (published and draining, in any tier), by name and version."""
        return sorted(self.slots.versions(), key=lambda entry: (entry.name, entry.version))

    @property
    def used_bytes(self) -> int:
        """Engine bytes of the versions in slots."""
        return self.slots.engine_bytes

    # -- registering ----------------------------------------------------------------------------

    async def load(self, name: str, path: str, *, replace: bool = False, pin: bool = False) -> ResidentVersion:
        """Register a set from a path given by a client (checked against the adapter roots)."""
        try:
            check_set_name(name, self.base_model_name)
            set_dir = self.roots.resolve(path)
        except RouterError as error:
            self._notify_failed(None, error)
            raise
        return await self.load_trusted(name, set_dir, replace=replace, pin=pin)

    async def load_trusted(self, name: str, set_dir: Path, *, replace: bool = False, pin: bool = False) -> ResidentVersion:
        """Register a set from a directory the operator configured; publish it under `name`, in an
        engine slot if one is free or idle (a pinned set waits for one).

        With `replace`, a published version of `name` is retired once the new one is live.
        """
        check_set_name(name, self.base_model_name)
        if name in self._loading:
            raise AdapterSetBusy(name)
        if name in self._published and not replace:
            raise AdapterSetExists(name)
        # Shielded: a client that disconnects mid-load must not leave a half-loaded slot behind.
        loading = asyncio.ensure_future(self._load_exclusive(name, set_dir, pin))
        self._loading[name] = loading
        loading.add_done_callback(lambda _: self._loading.pop(name, None))
        return await asyncio.shield(loading)

    async def load_directory(self, directory: Path, manifest_name: str, pinned: frozenset[str] = frozenset()) -> list[ResidentVersion]:
        """Register every subdirectory of `directory` holding `manifest_name` (those named in `pinned`
        pinned); log and skip bad ones."""
        loaded = []
        for set_dir in sorted(path for path in directory.iterdir() if (path / manifest_name).is_file()):
            try:
                loaded.append(await self.load_trusted(set_dir.name, set_dir.resolve(), pin=set_dir.name in pinned))
            except Exception as error:  # noqa: BLE001 - one bad set must not stop the others loading
                logger.error(
                    "skipped adapter set %s: [%s] %s", set_dir, getattr(error, "code", type(error).__name__), error
                )
        return loaded

    async def _load_exclusive(self, name: str, set_dir: Path, pin: bool) -> ResidentVersion:
        """Validate, and bring into a slot when there is room; nothing is published unless both succeed."""
        started = time.perf_counter()
        description: SetDescription | None = None
        try:
            inspection = await asyncio.to_thread(self._validator.inspect, set_dir)
            description = inspection.description
            await asyncio.to_thread(self._backend.check_set, set_dir)
            entry = ResidentVersion(
                name=name,
                version=self._last_version.get(name, 0) + 1,
                slot=next(self._ids),
                kind=description.kind,
                tasks=description.tasks,
                input_routed=description.input_routed,
                path=set_dir,
                nbytes=description.nbytes,
                load_seconds=0.0,
                loaded_at=time.time(),
                task_rows=description.task_rows,
                pinned=pin,
            )
            self.slots.check_fits(entry)
            await self._register_checked(entry, inspection)
        except Exception as error:
            self._notify_failed(description, error)
            raise
        entry.load_seconds = time.perf_counter() - started
        previous = self._published.get(name)
        self._published[name] = entry
        self._last_version[name] = entry.version
        if self._observer is not None:
            self._observer.set_loaded(entry.name, entry.kind, entry.version, entry.nbytes, entry.load_seconds)
        logger.info("registered adapter set %s (%s, %s, %d bytes, %.2fs)", entry.label, entry.kind, entry.residency, entry.nbytes, entry.load_seconds)
        if previous is not None:
            await self._retire(previous)
        return entry

    async def _register_checked(self, entry: ResidentVersion, inspection: SetInspection) -> None:
        """Check the set's tensor contents while it is brought into a slot (the engine never reads a
        file whose structure is unchecked). A bad set is reported as such even when the engine refused
        it too; on any failure the engine holds nothing of it."""
        self.slots.add(entry)
        contents = asyncio.ensure_future(asyncio.to_thread(inspection.check_contents))
        try:
            await self.slots.place(entry)
        except Exception:
            await self.slots.remove(entry)
            await asyncio.wait([contents])
            contents.result()
            raise
        try:
            await contents
        except Exception:
            await self.slots.remove(entry)
            raise

    def _notify_failed(self, description: SetDescription | None, error: Exception) -> None:
        if self._observer is not None:
            kind = description.kind if description is not None else None
            self._observer.set_load_failed(kind, getattr(error, "code", "engine_error"))

    # -- unloading ------------------------------------------------------------------------------

    async def unload(self, name: str, *, wait: bool = False) -> ResidentVersion:
        """Stop new requests to `name`; free its memory now if idle, else when its last request ends.

        With `wait`, return only once the memory is freed.
        """
        if name in self._loading:
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
            await self.slots.remove(entry)
        except Exception:  # noqa: BLE001 - runs detached from any request; keep the registry honest
            entry.state = "unload_failed"
            logger.exception("unloading adapter set %s (slot %d) failed", entry.label, entry.slot)
            return
        entry.freed.set()
        if self._observer is not None:
            self._observer.set_unloaded(entry.name, entry.kind, entry.version)
        logger.info("unloaded adapter set %s (%d bytes freed)", entry.label, entry.nbytes)
