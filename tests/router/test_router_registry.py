"""Registry logic (versions, leases, draining, budgets, exclusivity, engine slots) over an in-memory slot store.

The engine is not under test here; tests/server/test_admin*.py run the same paths on the real engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
from pathlib import Path

import pytest

from router.errors import (
    AdapterCapacityExceeded,
    AdapterSetBusy,
    AdapterSetExists,
    ModelNotFound,
    MemoryBudgetExceeded,
    PathNotAllowed,
    TaskNotFound,
    TaskRequired,
    TaskTagInvalid,
)
from router.paths import AdapterRoots
from router.ports import Arrival, Eviction, MoveOutcome, SetDescription, SetInspection, SlotLimits
from router.registry import AdapterRegistry
from router.slots import HostLimits

pytestmark = pytest.mark.anyio

BASE = "tiny-base"


class CorruptSet(Exception):
    code = "checksum_mismatch"


class InvalidSet(Exception):
    code = "tensor_shape_mismatch"


class MemorySlots:
    """Slot store kept in dicts (engine slots, host copies); `gate` lets a test hold a load half-way.
    `limits` are the engine's slots per kind."""

    def __init__(self, slots_per_kind: int = 8) -> None:
        self.slots: dict[int, int] = {}
        self.host: dict[int, int] = {}
        self.limits = {kind: SlotLimits(slots_per_kind, 16) for kind in ("moore", "badit", "lora")}
        self.gate: asyncio.Event | None = None
        self.fail_next = False
        self.moves: list[tuple[str, int]] = []
        self.engine_calls = 0  # `move` calls: each is one pause of the engine between steps
        self.delay: random.Random | None = None  # when set, every engine call takes a random few ms

    async def _engine_time(self) -> None:
        if self.delay is not None:
            await asyncio.sleep(self.delay.random() * 0.003)

    def slot_limits(self) -> dict[str, SlotLimits]:
        return self.limits

    def check_set(self, set_dir: Path) -> None:
        pass

    async def move(self, evictions: list[Eviction], arrivals: list[Arrival]) -> MoveOutcome:
        """Evictions, then arrivals, as the engine does them: a failing arrival leaves nothing behind."""
        self.engine_calls += 1
        await self._engine_time()
        host_bytes = {}
        for eviction in evictions:
            del self.slots[eviction.slot]
            self.moves.append(("evict", eviction.slot))
            if eviction.keep_host_copy:
                self.host[eviction.slot] = 400
            host_bytes[eviction.slot] = 400 if eviction.keep_host_copy else 0
        if self.gate is not None:
            await self.gate.wait()
        arrived: dict[int, int | Exception] = {}
        for arrival in arrivals:
            if arrival.from_host:
                del self.host[arrival.slot]
            if self.fail_next:
                self.fail_next = False
                arrived[arrival.slot] = RuntimeError("engine refused")
                continue
            self.slots[arrival.slot] = 1000
            self.moves.append(("restore" if arrival.from_host else "load", arrival.slot))
            arrived[arrival.slot] = 1000
        return MoveOutcome(host_bytes, arrived)

    async def forget(self, slots: list[int]) -> None:
        for slot in slots:
            del self.host[slot]

    async def unload(self, slot: int) -> None:
        await self._engine_time()
        if self.slots.pop(slot, None) is None:
            del self.host[slot]


class Events:
    def __init__(self) -> None:
        self.log: list[tuple] = []

    def set_loaded(self, set_name, kind, version, nbytes, seconds):
        self.log.append(("loaded", set_name, kind, version, nbytes))

    def set_unloaded(self, set_name, kind, version):
        self.log.append(("unloaded", set_name, kind, version))

    def set_load_failed(self, kind, code):
        self.log.append(("failed", kind, code))

    def swapped_in(self, kind, source, seconds):
        self.log.append(("swapped_in", kind, source))

    def evicted(self, kind, to):
        self.log.append(("evicted", kind, to))


class Validator:
    """The structure of "broken" is bad (as a shape error would be); "corrupt" has a good structure
    and bad contents (as a checksum error would be)."""

    def __init__(self) -> None:
        self.contents_checked: list[str] = []
        self.contents_gate: threading.Event | None = None  # when set, content checks wait for it

    def inspect(self, set_dir: Path) -> SetInspection:
        if set_dir.name == "broken":
            raise InvalidSet("layer 0 q_proj: expected (8, 128), found (8, 64)")
        if set_dir.name == "routed":
            description = SetDescription(kind="badit", tasks=("summarise", "classify"), input_routed=True, nbytes=900)
        elif set_dir.name == "single":
            description = SetDescription(kind="lora", tasks=("chat",), input_routed=False, nbytes=900)
        else:
            description = SetDescription(kind="moore", tasks=("boolq", "piqa"), input_routed=False, nbytes=900)
        return SetInspection(description, lambda: self._check_contents(set_dir))

    def _check_contents(self, set_dir: Path) -> None:
        if self.contents_gate is not None:
            assert self.contents_gate.wait(10)
        self.contents_checked.append(set_dir.name)
        if set_dir.name == "corrupt":
            raise CorruptSet("tensor layers.0.q_proj.A does not match its sha256")


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture
def parts(tmp_path):
    for name in ("mtl", "mtl2", "broken", "corrupt", "routed", "single"):
        (tmp_path / name).mkdir()
    backend, events = MemorySlots(), Events()
    registry = AdapterRegistry(backend, Validator(), BASE, roots=AdapterRoots([tmp_path]), observer=events)
    return registry, backend, events, tmp_path


async def two_slot_registry(tmp_path, names, *, register=True, **options):
    """A registry whose engine has 2 slots per kind, with a set folder for each of `names` (all
    registered unless `register` is False)."""
    backend, events = MemorySlots(slots_per_kind=2), Events()
    for name in names:
        (tmp_path / name).mkdir(exist_ok=True)
    registry = AdapterRegistry(backend, Validator(), BASE, roots=AdapterRoots([tmp_path]), observer=events, **options)
    for name in names if register else ():
        await registry.load(name, name)
    return registry, backend, events


async def test_resolution_forms(parts):
    registry, *_ = parts
    await registry.load("mtl", "mtl")
    await registry.load("routed", "routed")
    await registry.load("single", "single")
    with await registry.acquire(BASE) as target:
        assert target.is_base
    with await registry.acquire("mtl/piqa") as target:
        assert (target.set_name, target.version, target.task, target.task_index) == ("mtl", 1, "piqa", 1)
    with await registry.acquire("mtl", "boolq") as target:
        assert target.task_index == 0 and target.version_header == "mtl@1"
    with await registry.acquire("routed") as target:
        assert target.kind == "badit" and target.task is None and not target.is_base
    with await registry.acquire("single") as target:
        assert target.task == "chat"
    with pytest.raises(ModelNotFound):
        await registry.acquire("nope/boolq")
    with pytest.raises(TaskNotFound):
        await registry.acquire("mtl/siqa")
    with pytest.raises(TaskRequired):
        await registry.acquire("mtl")
    with pytest.raises(TaskTagInvalid):
        await registry.acquire(BASE, "boolq")
    assert all(entry.in_flight == 0 for entry in registry.published())


async def test_replace_keeps_running_requests_on_their_version(parts):
    registry, backend, events, _ = parts
    first = await registry.load("mtl", "mtl")
    lease = await registry.acquire("mtl/boolq")
    second = await registry.load("mtl", "mtl2", replace=True)
    assert (first.version, second.version) == (1, 2)
    assert lease.target.slot == first.slot and first.state == "draining"
    assert first.slot in backend.slots, "a version in use must stay loaded"
    with await registry.acquire("mtl/boolq") as target:
        assert target.version == 2
    lease.release()
    lease.release()  # idempotent
    await asyncio.wait_for(first.freed.wait(), 1)
    assert set(backend.slots) == {second.slot}
    assert [entry.label for entry in registry.resident()] == ["mtl@2"]
    assert ("unloaded", "mtl", "moore", 1) in events.log


async def test_replace_of_idle_version_frees_it_before_returning(parts):
    registry, backend, *_ = parts
    first = await registry.load("mtl", "mtl")
    second = await registry.load("mtl", "mtl", replace=True)
    assert first.freed.is_set() and set(backend.slots) == {second.slot}


async def test_unload_drains_then_frees(parts):
    registry, backend, *_ = parts
    entry = await registry.load("mtl", "mtl")
    lease = await registry.acquire("mtl/piqa")
    returned = await registry.unload("mtl")
    assert returned.state == "draining" and entry.slot in backend.slots
    with pytest.raises(ModelNotFound):
        await registry.acquire("mtl/piqa")
    waiter = asyncio.ensure_future(registry.unload("mtl", wait=True))
    await asyncio.sleep(0)
    assert waiter.done() and isinstance(waiter.exception(), ModelNotFound)
    lease.release()
    await asyncio.wait_for(entry.freed.wait(), 1)
    assert backend.slots == {} and registry.used_bytes == 0
    again = await registry.load("mtl", "mtl")
    assert again.version == 2, "versions never repeat for a name"


async def test_exists_and_concurrent_loads(parts):
    registry, backend, *_ = parts
    await registry.load("mtl", "mtl")
    with pytest.raises(AdapterSetExists):
        await registry.load("mtl", "mtl2")
    backend.gate = asyncio.Event()
    racers = [asyncio.ensure_future(registry.load("new", "mtl")) for _ in range(3)]
    await asyncio.sleep(0.05)
    backend.gate.set()
    results = await asyncio.gather(*racers, return_exceptions=True)
    assert sum(not isinstance(result, Exception) for result in results) == 1
    assert sum(isinstance(result, AdapterSetBusy) for result in results) == 2


async def test_failures_leave_no_state(parts):
    registry, backend, events, _ = parts
    with pytest.raises(InvalidSet):
        await registry.load("bad", "broken")
    backend.fail_next = True
    with pytest.raises(RuntimeError):
        await registry.load("mtl", "mtl")
    assert registry.published() == [] and registry.resident() == [] and backend.slots == {}
    assert ("failed", None, "tensor_shape_mismatch") in events.log
    assert ("failed", "moore", "engine_error") in events.log
    loaded = await registry.load("mtl", "mtl")
    assert loaded.version == 1


async def test_bad_contents_found_while_the_engine_loads_leave_no_state(parts):
    _, backend, events, tmp_path = parts
    validator = Validator()
    registry = AdapterRegistry(backend, validator, BASE, roots=AdapterRoots([tmp_path]), observer=events)
    backend.gate = asyncio.Event()
    loading = asyncio.ensure_future(registry.load("bad", "corrupt"))
    for _ in range(1000):  # the check runs in a thread: give it time on a loaded machine
        if validator.contents_checked:
            break
        await asyncio.sleep(0.01)
    assert validator.contents_checked == ["corrupt"]  # checked while the engine still loads (gated)
    backend.gate.set()
    with pytest.raises(CorruptSet):
        await loading
    assert registry.published() == [] and registry.resident() == [] and backend.slots == {}
    assert ("failed", "moore", "checksum_mismatch") in events.log
    backend.gate, backend.fail_next = None, True
    with pytest.raises(CorruptSet):  # the set's own fault is reported before the engine's refusal
        await registry.load("bad", "corrupt")
    assert backend.slots == {}


async def test_memory_budget_evicts_idle_sets(parts):
    registry, backend, *_ = parts
    registry.slots.memory_budget = 1500
    mtl = await registry.load("mtl", "mtl")
    other = await registry.load("other", "mtl2")  # no room without evicting: registered on disk
    assert (mtl.residency, other.residency) == ("slot", "disk") and set(backend.slots) == {mtl.slot}
    async with await registry.acquire("other/boolq"):  # fits once mtl, which nothing holds, is evicted
        assert (mtl.residency, other.residency) == ("host", "slot")
        assert registry.used_bytes == 1000
    registry.slots.memory_budget = 800  # smaller than any set: nothing new can ever enter a slot
    with pytest.raises(MemoryBudgetExceeded) as refused:
        await registry.load("routed", "routed")
    assert (refused.value.needed, refused.value.budget) == (900, 800)
    assert [e.name for e in registry.published()] == ["mtl", "other"]


async def test_budget_checks_real_size_after_load(parts):
    registry, backend, *_ = parts
    registry.slots.memory_budget = 950  # the estimate (900) fits, the engine's 1000 bytes do not
    with pytest.raises(MemoryBudgetExceeded):
        await registry.load("mtl", "mtl")
    assert backend.slots == {} and registry.resident() == []


async def test_cancelled_client_does_not_leave_half_loaded_slot(parts):
    registry, backend, *_ = parts
    backend.gate = asyncio.Event()
    client = asyncio.ensure_future(registry.load("mtl", "mtl"))
    await asyncio.sleep(0.05)
    client.cancel()
    backend.gate.set()
    await asyncio.sleep(0.05)
    [entry] = registry.published()
    assert entry.slot in backend.slots


async def test_load_directory_skips_bad_sets(parts, caplog):
    registry, *_ = parts
    directory = parts[3]
    for name in ("mtl", "broken", "routed"):
        (directory / name / "manifest.json").write_text("{}")
    loaded = await registry.load_directory(directory, "manifest.json")
    assert [entry.name for entry in loaded] == ["mtl", "routed"]
    assert "broken" in caplog.text and "tensor_shape_mismatch" in caplog.text


async def test_lease_released_on_error_only(parts):
    registry, *_ = parts
    [entry] = [await registry.load("mtl", "mtl")]
    with pytest.raises(ValueError):
        with (await registry.acquire("mtl/boolq")).released_on_error():
            raise ValueError("tokenizer refused the prompt")
    assert entry.in_flight == 0
    lease = await registry.acquire("mtl/boolq")
    with lease.released_on_error() as target:
        assert target.task == "boolq"
    assert entry.in_flight == 1
    async with lease:
        pass
    assert entry.in_flight == 0


# -- more sets than engine slots ------------------------------------------------------------------


async def test_more_sets_than_slots_all_serve_least_recently_used_evicted_first(tmp_path):
    registry, backend, events = await two_slot_registry(tmp_path, ["a", "b", "c", "d"])
    entries = {entry.name: entry for entry in registry.published()}
    assert [entries[n].residency for n in "abcd"] == ["slot", "slot", "disk", "disk"]
    async with await registry.acquire("a/boolq"):
        pass
    async with await registry.acquire("c/boolq") as target:  # b is the least recently used
        assert target.set_name == "c" and entries["c"].residency == "slot"
    assert entries["b"].residency == "host" and entries["a"].residency == "slot"
    async with await registry.acquire("b/piqa"):  # back from its host copy
        assert ("restore", entries["b"].slot) in backend.moves
    assert len(backend.slots) == 2
    assert ("evicted", "moore", "host") in events.log and ("swapped_in", "moore", "host") in events.log


async def test_a_held_set_is_never_evicted_and_waiters_get_the_slot(tmp_path):
    registry, backend, _ = await two_slot_registry(tmp_path, ["a", "b", "c"])
    held_a = await registry.acquire("a/boolq")
    held_b = await registry.acquire("b/boolq")
    waiting = asyncio.ensure_future(registry.acquire("c/boolq"))
    await asyncio.sleep(0.05)
    assert not waiting.done() and set(backend.slots) == {held_a.target.slot, held_b.target.slot}
    held_b.release()
    lease = await asyncio.wait_for(waiting, 1)
    assert lease.target.set_name == "c" and held_a.target.slot in backend.slots
    lease.release()
    held_a.release()


async def test_a_waiter_makes_a_busy_set_yield(tmp_path):
    """A set that always has requests running cannot keep its slot from a waiting set forever."""
    registry, backend, _ = await two_slot_registry(tmp_path, ["a", "b", "c"])
    a1, b1 = await registry.acquire("a/boolq"), await registry.acquire("b/boolq")
    c = asyncio.ensure_future(registry.acquire("c/boolq"))
    await asyncio.sleep(0.01)
    a2 = asyncio.ensure_future(registry.acquire("a/boolq"))  # a yields: new requests for it queue
    await asyncio.sleep(0.01)
    assert not c.done() and not a2.done()
    a1.release()
    lease_c = await asyncio.wait_for(c, 1)
    assert lease_c.target.set_name == "c"
    b1.release()
    lease_a = await asyncio.wait_for(a2, 1)  # b was idle: a comes back in its place
    assert lease_a.target.set_name == "a" and len(backend.slots) == 2
    lease_a.release()
    lease_c.release()


async def test_pinned_sets_stay_and_host_limits_send_copies_to_disk(tmp_path):
    registry, backend, _ = await two_slot_registry(tmp_path, ["a", "b", "c", "d"], register=False, host=HostLimits(max_sets=1))
    pinned = await registry.load("a", "a", pin=True)
    for name in "bcd":
        await registry.load(name, name)
    for name in "bcdbcd":
        async with await registry.acquire(f"{name}/boolq"):
            pass
    assert pinned.residency == "slot" and pinned.slot in backend.slots
    assert len(backend.host) == 1
    assert sorted(e.residency for e in registry.resident()) == ["disk", "host", "slot", "slot"]
    with pytest.raises(AdapterCapacityExceeded):
        await registry.load("e", "b", pin=True) and await registry.load("f", "b", pin=True)


async def test_a_version_replaced_while_waiting_resolves_again(tmp_path):
    registry, backend, _ = await two_slot_registry(tmp_path, ["a", "b", "c"])
    held = [await registry.acquire("a/boolq"), await registry.acquire("b/boolq")]
    waiting = asyncio.ensure_future(registry.acquire("c/boolq"))
    await asyncio.sleep(0.01)
    await registry.load("c", "c", replace=True)  # the new version waits on disk too
    held[0].release()
    lease = await asyncio.wait_for(waiting, 1)
    assert lease.target.version == 2
    lease.release()
    held[1].release()


async def test_resolver_registers_a_folder_on_first_request(tmp_path):
    root = tmp_path / "resolved"
    for name in ("mtl", "broken"):
        (root / name).mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    (root / "escape").symlink_to(tmp_path / "outside")
    registry, backend, _ = await two_slot_registry(tmp_path, [], resolver_root=root)
    first, second = await asyncio.gather(registry.acquire("mtl/boolq"), registry.acquire("mtl/piqa"))
    assert first.target.version == second.target.version == 1 and len(backend.slots) == 1
    for model, error in (("broken/boolq", InvalidSet), ("escape/boolq", PathNotAllowed), ("absent/boolq", ModelNotFound)):
        with pytest.raises(error):
            await registry.acquire(model)
    assert [e.name for e in registry.published()] == ["mtl"]


async def test_a_version_retired_while_it_is_brought_in_is_not_held(tmp_path):
    """A replace publishes while a request's swap-in of the old version is in the engine: the request
    resolves again to the new version, and the old one leaves the engine without being held."""
    registry, backend, _ = await two_slot_registry(tmp_path, ["a", "b", "c"])  # c on disk
    registry._validator.contents_gate = threading.Event()
    replacing = asyncio.ensure_future(registry.load("c", "c", replace=True))
    await asyncio.sleep(0.05)  # c@2 registered (on disk: no free slot); its contents check waits
    backend.gate = asyncio.Event()
    request = asyncio.ensure_future(registry.acquire("c/boolq"))
    await asyncio.sleep(0.01)  # c@1 coming into the slot of a, held at the gate
    registry._validator.contents_gate.set()
    while registry.published()[-1].version != 2:  # c@2 published, c@1 retired
        await asyncio.sleep(0.01)
    backend.gate.set()
    lease = await asyncio.wait_for(request, 5)
    await asyncio.wait_for(replacing, 5)
    assert lease.target.version == 2 and lease.target.slot in backend.slots
    assert [entry.label for entry in registry.resident()] == ["a@1", "b@1", "c@2"]
    lease.release()


async def test_random_traffic_with_replaces_never_loses_a_held_version(tmp_path):
    """Engine calls take time, requests for 7 sets share 2 slots, and sets are replaced meanwhile:
    a held version is always in the engine, and every engine call finds what it expects (the fake
    engine raises on evicting or restoring what it does not hold)."""
    names = [f"s{i}" for i in range(7)]
    registry, backend, _ = await two_slot_registry(tmp_path, names)
    backend.delay = random.Random(0)
    rng = random.Random(1)
    served = 0

    async def request() -> None:
        nonlocal served
        await asyncio.sleep(rng.random() * 0.3)
        lease = await registry.acquire(f"{rng.choice(names)}/boolq")
        assert lease.target.slot in backend.slots
        await asyncio.sleep(rng.random() * 0.01)
        assert lease.target.slot in backend.slots
        lease.release()
        served += 1

    async def replace() -> None:
        for _ in range(40):
            await asyncio.sleep(rng.random() * 0.008)
            name = rng.choice(names)
            with contextlib.suppress(AdapterSetBusy):
                await registry.load(name, name, replace=True)

    await asyncio.wait_for(asyncio.gather(replace(), *(request() for _ in range(600))), 60)
    assert served == 600 and len(backend.slots) <= 2
    assert all(entry.state == "ready" for entry in registry.resident())  # every replaced version was dropped


async def test_a_yielding_set_serves_again_once_nobody_waits(tmp_path):
    registry, backend, _ = await two_slot_registry(tmp_path, ["a", "b", "c"])
    a1, b1 = await registry.acquire("a/boolq"), await registry.acquire("b/boolq")
    impatient = asyncio.ensure_future(registry.acquire("c/boolq"))
    await asyncio.sleep(0.01)
    impatient.cancel()  # its deadline: a was asked to yield, and now nobody waits for its slot
    await asyncio.sleep(0.01)
    a2 = await asyncio.wait_for(registry.acquire("a/boolq"), 1)
    assert a2.target.set_name == "a" and len(backend.slots) == 2
    for lease in (a1, a2, b1):
        lease.release()


async def test_a_request_cancelled_mid_swap_in_leaves_the_engine_and_registry_agreeing(tmp_path):
    registry, backend, _ = await two_slot_registry(tmp_path, ["a", "b", "c"])
    c = next(entry for entry in registry.published() if entry.name == "c")
    backend.gate = asyncio.Event()
    request = asyncio.ensure_future(registry.acquire("c/boolq"))
    await asyncio.sleep(0.01)  # evicting an idle set, then loading c, held at the gate
    request.cancel()
    backend.gate.set()
    with pytest.raises(asyncio.CancelledError):
        await request
    await asyncio.sleep(0.01)
    assert c.residency == "slot" and c.slot in backend.slots and c.in_flight == 0  # the move finished; its hold was let go
    async with await registry.acquire("c/boolq"):
        assert c.in_flight == 1


async def test_sets_waited_for_together_come_in_with_one_engine_call(tmp_path):
    names = ["a", "b", "c", "d", "e"]
    registry, backend, events = await two_slot_registry(tmp_path, names)
    first = await registry.acquire("c/boolq")  # c and d take the two slots
    second = await registry.acquire("d/boolq")
    backend.gate = asyncio.Event()
    waiting = [asyncio.ensure_future(registry.acquire(f"{name}/boolq")) for name in ("a", "b")]
    await asyncio.sleep(0.01)
    assert all(not request.done() for request in waiting), "both slots are held"
    calls_before = backend.engine_calls
    first.release()
    second.release()
    await asyncio.sleep(0.01)
    backend.gate.set()
    leases = await asyncio.wait_for(asyncio.gather(*waiting), 1)
    assert backend.engine_calls - calls_before == 1, "both evictions and both arrivals in one engine call"
    assert sorted(lease.target.set_name for lease in leases) == ["a", "b"]
    assert set(backend.slots) == {lease.target.slot for lease in leases}
    assert sum(entry[0] == "swapped_in" for entry in events.log) >= 2
    for lease in leases:
        lease.release()
