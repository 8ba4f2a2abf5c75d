"""Engine slots: which registered set versions are in the engine's banks, brought in on demand.

Each method has a fixed number of engine slots (the capacity flags, which bound the distinct sets a
batch can hold) and a pool of task rows; any number of set versions may be registered. A version is
in one tier at a time: `slot` (in the engine's banks; requests run on it), `host` (evicted, with a
host copy in the engine workers: coming back is a copy) or `disk` (read from its folder again).

A request holds its version in a slot from the moment it is brought in until the request ends; a
held version is never evicted. A request for a version outside the slots waits while it is brought
in: into a free slot, or into the slot of the least recently used version nobody holds. While every
slot is held, it waits for one to be released; admission limits and deadlines bound the wait. So
that busy sets cannot starve a waiting one, the waiter asks the least recently used busy set of its
kind to *yield*: new requests for that set queue too, and its slot goes to the waiter once its
running requests end.

Everything here runs on the event loop. Moves (swap-ins, evictions, removals) run one at a time, each
to its end even when the request that started it is cancelled, so the engine's slots and this
bookkeeping never disagree.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from router.errors import AdapterCapacityExceeded, MemoryBudgetExceeded
from router.ports import AdapterSlotBackend, Arrival, Eviction, RegistryObserver, SlotLimits
from router.resident import ResidentVersion

logger = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class HostLimits:
    """How many evicted versions keep host copies (None: no limit); past either, the least recently
    used copies are dropped and those versions are read from disk again."""

    max_sets: int | None = None
    max_bytes: int | None = None


class Retired(Exception):
    """The version was retired (replaced or deleted) before it could be brought in: resolve again."""


class EngineSlots:
    def __init__(
        self,
        backend: AdapterSlotBackend,
        limits: Mapping[str, SlotLimits],
        *,
        memory_budget: int | None = None,
        host: HostLimits = HostLimits(),
        observer: RegistryObserver | None = None,
    ) -> None:
        self._backend = backend
        self.limits = dict(limits)
        self.memory_budget = memory_budget
        self.host = host
        self._observer = observer
        self._versions: dict[int, ResidentVersion] = {}  # slot id → version, every tier
        self._changed = asyncio.Event()  # replaced each time room may have appeared
        self._moves = asyncio.Lock()  # swap-ins, evictions and removals, one at a time

    # -- views ----------------------------------------------------------------------------------

    def versions(self) -> list[ResidentVersion]:
        """Every registered version, in any tier."""
        return list(self._versions.values())

    def in_slots(self, kind: str | None = None) -> list[ResidentVersion]:
        """Versions occupying engine slots (coming in, in, or going out), of `kind` or of all kinds."""
        return [v for v in self._versions.values() if v.occupies_slot and (kind is None or v.kind == kind)]

    def waiting(self) -> list[ResidentVersion]:
        """Versions requests are waiting for, or being brought in."""
        return [v for v in self._versions.values() if v.waiters or v.residency == "loading"]

    @property
    def engine_bytes(self) -> int:
        return sum(v.nbytes for v in self.in_slots())

    @property
    def host_bytes(self) -> int:
        return sum(v.host_bytes for v in self._versions.values() if v.residency == "host")

    # -- registration ---------------------------------------------------------------------------

    def check_fits(self, version: ResidentVersion) -> None:
        """Refuse a version that could never enter a slot, however many were evicted."""
        limits = self.limits.get(version.kind)
        if limits is None:
            raise AdapterCapacityExceeded(f"This server was started without capacity for {version.kind} sets.")
        if version.task_rows > limits.task_rows:
            raise AdapterCapacityExceeded(
                f"The {version.kind} set needs {version.task_rows} task rows; this server has {limits.task_rows} "
                f"(max_{version.kind}_tasks)."
            )
        if self.memory_budget is not None and version.nbytes > self.memory_budget:
            raise MemoryBudgetExceeded(version.name, version.nbytes, self.engine_bytes, self.memory_budget)
        if version.pinned and sum(v.pinned for v in self.in_slots(version.kind)) >= limits.slots:
            raise AdapterCapacityExceeded(
                f"All {limits.slots} {version.kind} slots hold pinned sets (max_{version.kind}_sets = {limits.slots})."
            )

    def add(self, version: ResidentVersion) -> None:
        self._versions[version.slot] = version

    async def place(self, version: ResidentVersion) -> None:
        """Bring a newly registered version into a free slot, if there is one (a pinned one evicts or
        waits for room). Otherwise it stays on disk until a request needs it."""
        await self._bring_in(version, wait=version.pinned, evict=version.pinned, hold=False)

    async def remove(self, version: ResidentVersion) -> None:
        """Drop a retired version from the engine and the host (nothing holds it)."""
        await self._move(lambda: self._remove(version))

    async def _remove(self, version: ResidentVersion) -> None:
        try:
            if version.residency != "disk":
                await self._backend.unload(version.slot)
        finally:
            self._versions.pop(version.slot, None)
            version.residency = "disk"
            version.host_bytes = 0
            self._room_changed()

    # -- requests -------------------------------------------------------------------------------

    async def hold(self, version: ResidentVersion) -> None:
        """Return once `version` is in a slot and held for one more request (`release` lets go).
        A retired version takes no new holds (Retired: resolve the request's tag again)."""
        if not version.waiters:
            version.waiting_since = time.monotonic()
        version.waiters += 1
        try:
            await self._bring_in(version, wait=True, evict=True, hold=True)
        finally:
            version.waiters -= 1

    def release(self, version: ResidentVersion) -> None:
        version.in_flight -= 1
        if version.in_flight == 0:
            self._room_changed()

    # -- moving versions ------------------------------------------------------------------------

    async def _bring_in(self, version: ResidentVersion, *, wait: bool, evict: bool, hold: bool) -> None:
        """Bring `version` into a slot (with `hold`, held for the caller when this returns); without
        `wait`, give up when there is no room now."""
        while True:
            if version.state != "ready":
                raise Retired(version.label)
            if version.residency == "slot" and version.yielding and not self._others_waiting(version):
                version.yielding = False  # whoever asked it to yield has stopped waiting
            if version.residency == "slot" and not version.yielding:
                if hold:
                    self._hold(version)
                return
            changed = self._changed
            if version.residency != "slot":
                outcome = await self._move(lambda: self._try_swap_in(version, evict, hold), self._undo_hold(version))
                if outcome == "held":
                    return
                if outcome == "look again":
                    continue
                if not wait:
                    return
                self._ask_to_yield(version.kind)
            await changed.wait()

    def _hold(self, version: ResidentVersion) -> None:
        version.in_flight += 1
        version.last_used = time.monotonic()

    def _undo_hold(self, version: ResidentVersion) -> Callable[[str], None]:
        """What to do with a move's outcome nobody awaits any more: let go of the hold it made."""
        return lambda outcome: self.release(version) if outcome == "held" else None

    async def _move(self, move: Callable[[], Awaitable[T]], abandoned: Callable[[T], None] = lambda _: None) -> T:
        """Run `move` alone (one move at a time: each sees the slots as the previous one left them)
        and to its end even if the caller is cancelled, so the engine and this bookkeeping never
        disagree about where a version is; `abandoned(result)` runs when the caller was cancelled."""

        async def alone() -> T:
            async with self._moves:
                return await move()

        task = asyncio.ensure_future(alone())
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            task.add_done_callback(lambda done: done.cancelled() or done.exception() or abandoned(done.result()))
            raise

    async def _try_swap_in(self, version: ResidentVersion, evict: bool, hold: bool) -> str:
        """Bring `version` into a slot if it fits, evicting idle versions if `evict`, and hold it for
        the caller if `hold`. "held" (or, without `hold`, "look again" once it is in), "no room", or
        "look again" when it was brought in or retired meanwhile. Other versions that requests wait
        for come in with it, in the same engine call, as far as the slots allow."""
        if version.residency == "slot" or version.state != "ready":
            return "look again"
        victims = self._victims_for(version, leaving=[])
        if victims is None or (victims and not evict):
            return "no room"
        arrivals = [(version, version.residency)]
        version.residency = "loading"
        for other in self._waited_for():
            more = self._victims_for(other, leaving=victims)
            if more is not None:
                arrivals.append((other, other.residency))
                other.residency = "loading"
                victims = victims + more
        await self._swap_in(arrivals, victims)
        # A version retired during the engine call is being removed: the caller resolves again.
        if hold and version.residency == "slot" and version.state == "ready":
            self._hold(version)  # before any other move can evict it again
            return "held"
        return "look again"

    def _waited_for(self) -> list[ResidentVersion]:
        """Versions outside the slots that requests wait for, longest waiting first."""
        waited = (v for v in self._versions.values() if v.waiters and v.state == "ready" and v.residency in ("host", "disk"))
        return sorted(waited, key=lambda v: v.waiting_since)

    def _victims_for(self, version: ResidentVersion, leaving: list[ResidentVersion]) -> list[ResidentVersion] | None:
        """The idle versions to evict so `version` fits once `leaving` are gone (least recently used
        first), or None while it cannot fit without waiting."""
        limits = self.limits[version.kind]
        leaving_slots = {v.slot for v in leaving}  # by slot id: versions compare field by field
        staying = [v for v in self.in_slots() if v.slot not in leaving_slots]
        same_kind = [v for v in staying if v.kind == version.kind]
        slots_short = len(same_kind) + 1 - limits.slots
        rows_short = sum(v.task_rows for v in same_kind) + version.task_rows - limits.task_rows
        engine_bytes = sum(v.nbytes for v in staying)
        bytes_short = 0 if self.memory_budget is None else engine_bytes + version.nbytes - self.memory_budget
        victims: list[ResidentVersion] = []
        for candidate in self._idle():
            if slots_short <= 0 and rows_short <= 0 and bytes_short <= 0:
                break
            if candidate.slot in leaving_slots or (candidate.kind != version.kind and bytes_short <= 0):
                continue  # another method's slot only helps the memory budget
            victims.append(candidate)
            if candidate.kind == version.kind:
                slots_short -= 1
                rows_short -= candidate.task_rows
            bytes_short -= candidate.nbytes
        return victims if slots_short <= 0 and rows_short <= 0 and bytes_short <= 0 else None

    async def _settle_budget(self, version: ResidentVersion) -> None:
        """A version just brought in takes more engine bytes than its estimate, past the budget: evict
        idle versions, or send it back out (it comes in again once there is room for its real size)."""
        assert self.memory_budget is not None
        if version.nbytes > self.memory_budget:
            await self._backend.unload(version.slot)
            version.residency = "disk"
            raise MemoryBudgetExceeded(version.name, version.nbytes, self.engine_bytes, self.memory_budget)
        for victim in self._idle(besides=version):
            if self.engine_bytes <= self.memory_budget:
                return
            await self._swap_in([], [victim])
        if self.engine_bytes > self.memory_budget:
            await self._swap_in([], [version])

    def _idle(self, besides: ResidentVersion | None = None) -> list[ResidentVersion]:
        """Versions in slots that nothing holds and that may be evicted, yielding ones first, then the
        least recently used. One that requests wait for is not idle unless it yields."""
        idle = (
            v
            for v in self.in_slots()
            if v.residency == "slot" and v.in_flight == 0 and not v.pinned and v is not besides and (v.yielding or not v.waiters)
        )
        return sorted(idle, key=lambda v: (not v.yielding, v.last_used))

    def _others_waiting(self, version: ResidentVersion) -> bool:
        """Whether requests wait for another version of `version`'s kind to come into a slot."""
        return any(v.waiters and not v.occupies_slot and v.kind == version.kind for v in self._versions.values())

    def _ask_to_yield(self, kind: str) -> None:
        """Make the least recently used busy set of `kind` give its slot up once its requests end."""
        busy = [v for v in self.in_slots(kind) if v.residency == "slot" and not v.pinned]
        if busy and not any(v.yielding for v in busy):
            min(busy, key=lambda v: v.last_used).yielding = True

    async def _swap_in(self, arrivals: list[tuple[ResidentVersion, str]], victims: list[ResidentVersion]) -> None:
        """Evict `victims`, then bring in `arrivals` (each marked "loading", with the tier it comes
        from), in one engine call. Raises why the first arrival failed, if it did; the others that
        failed go back to disk, and their requests meet the failure when they try again."""
        keep = self.host.max_sets != 0 and self.host.max_bytes != 0
        for victim in victims:
            victim.residency = "evicting"
            victim.yielding = False
            logger.debug("evicting %s (slot id %d)", victim.label, victim.slot)
        started = time.perf_counter()
        try:
            outcome = await self._backend.move(
                [Eviction(v.slot, keep) for v in victims],
                [Arrival(v.slot, v.path, source == "host") for v, source in arrivals],
            )
        except BaseException:
            for version in [*victims, *(v for v, _ in arrivals)]:
                version.residency = "disk"  # the engine drops what it could not move
                version.host_bytes = 0
            self._room_changed()
            raise
        seconds = time.perf_counter() - started
        for victim in victims:
            victim.host_bytes = outcome.host_bytes.get(victim.slot, 0)
            victim.residency = "host" if victim.host_bytes else "disk"
            if self._observer is not None:
                self._observer.evicted(victim.kind, victim.residency)
        now = time.monotonic()
        for version, source in arrivals:
            result = outcome.arrived[version.slot]
            version.host_bytes = 0
            if isinstance(result, Exception):
                version.residency = "disk"
                continue
            version.nbytes, version.residency, version.last_used = result, "slot", now
            logger.debug("brought %s into an engine slot from %s", version.label, source)
            if self._observer is not None:
                self._observer.swapped_in(version.kind, source, seconds)
        try:
            await self._trim_host()
            for version, _ in arrivals:
                if version.residency == "slot" and self.memory_budget is not None and self.engine_bytes > self.memory_budget:
                    await self._settle_budget(version)
        finally:
            self._room_changed()
        first = arrivals[0][0] if arrivals else None
        if first is not None and isinstance(outcome.arrived[first.slot], Exception):
            raise outcome.arrived[first.slot]

    async def _trim_host(self) -> None:
        """Drop the least recently used host copies beyond the host limits."""
        held = sorted((v for v in self._versions.values() if v.residency == "host"), key=lambda v: v.last_used)
        count, total = len(held), sum(v.host_bytes for v in held)
        dropped = []
        for version in held:
            over_count = self.host.max_sets is not None and count > self.host.max_sets
            over_bytes = self.host.max_bytes is not None and total > self.host.max_bytes
            if not (over_count or over_bytes):
                break
            version.residency = "disk"
            count, total = count - 1, total - version.host_bytes
            version.host_bytes = 0
            dropped.append(version.slot)
        if dropped:
            await self._backend.forget(dropped)

    def _room_changed(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()
