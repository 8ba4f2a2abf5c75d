"""Registry logic (versions, leases, draining, budgets, exclusivity) over an in-memory slot store.

The engine is not under test here; tests/server/test_admin*.py run the same paths on the real engine.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from router.errors import (
    AdapterSetBusy,
    AdapterSetExists,
    ModelNotFound,
    MemoryBudgetExceeded,
    TaskNotFound,
    TaskRequired,
    TaskTagInvalid,
)
from router.paths import AdapterRoots
from router.ports import SetDescription, SetInspection
from router.registry import AdapterRegistry

pytestmark = pytest.mark.anyio

BASE = "tiny-base"


class CorruptSet(Exception):
    code = "checksum_mismatch"


class InvalidSet(Exception):
    code = "tensor_shape_mismatch"


class MemorySlots:
    """Slot store kept in a dict; `gate` lets a test hold a load half-way."""

    def __init__(self) -> None:
        self.slots: dict[int, int] = {}
        self.gate: asyncio.Event | None = None
        self.fail_next = False

    async def load(self, slot: int, set_dir: Path) -> int:
        if self.gate is not None:
            await self.gate.wait()
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("engine refused")
        self.slots[slot] = 1000
        return 1000

    async def unload(self, slot: int) -> None:
        del self.slots[slot]


class Events:
    def __init__(self) -> None:
        self.log: list[tuple] = []

    def set_loaded(self, set_name, kind, version, nbytes, seconds):
        self.log.append(("loaded", set_name, kind, version, nbytes))

    def set_unloaded(self, set_name, kind, version):
        self.log.append(("unloaded", set_name, kind, version))

    def set_load_failed(self, kind, code):
        self.log.append(("failed", kind, code))


class Validator:
    """The structure of "broken" is bad (as a shape error would be); "corrupt" has a good structure
    and bad contents (as a checksum error would be)."""

    def __init__(self) -> None:
        self.contents_checked: list[str] = []

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


async def test_resolution_forms(parts):
    registry, *_ = parts
    await registry.load("mtl", "mtl")
    await registry.load("routed", "routed")
    await registry.load("single", "single")
    with registry.acquire(BASE) as target:
        assert target.is_base
    with registry.acquire("mtl/piqa") as target:
        assert (target.set_name, target.version, target.task, target.task_index) == ("mtl", 1, "piqa", 1)
    with registry.acquire("mtl", "boolq") as target:
        assert target.task_index == 0 and target.version_header == "mtl@1"
    with registry.acquire("routed") as target:
        assert target.kind == "badit" and target.task is None and not target.is_base
    with registry.acquire("single") as target:
        assert target.task == "chat"
    with pytest.raises(ModelNotFound):
        registry.acquire("nope/boolq")
    with pytest.raises(TaskNotFound):
        registry.acquire("mtl/siqa")
    with pytest.raises(TaskRequired):
        registry.acquire("mtl")
    with pytest.raises(TaskTagInvalid):
        registry.acquire(BASE, "boolq")
    assert all(entry.in_flight == 0 for entry in registry.published())


async def test_replace_keeps_running_requests_on_their_version(parts):
    registry, backend, events, _ = parts
    first = await registry.load("mtl", "mtl")
    lease = registry.acquire("mtl/boolq")
    second = await registry.load("mtl", "mtl2", replace=True)
    assert (first.version, second.version) == (1, 2)
    assert lease.target.slot == first.slot and first.state == "draining"
    assert first.slot in backend.slots, "a version in use must stay loaded"
    with registry.acquire("mtl/boolq") as target:
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
    lease = registry.acquire("mtl/piqa")
    returned = await registry.unload("mtl")
    assert returned.state == "draining" and entry.slot in backend.slots
    with pytest.raises(ModelNotFound):
        registry.acquire("mtl/piqa")
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
    await asyncio.sleep(0.05)
    assert validator.contents_checked == ["corrupt"]  # checked while the engine still loads
    backend.gate.set()
    with pytest.raises(CorruptSet):
        await loading
    assert registry.published() == [] and registry.resident() == [] and backend.slots == {}
    assert ("failed", "moore", "checksum_mismatch") in events.log
    backend.gate, backend.fail_next = None, True
    with pytest.raises(CorruptSet):  # the set's own fault is reported before the engine's refusal
        await registry.load("bad", "corrupt")
    assert backend.slots == {}


async def test_memory_budget(parts):
    registry, backend, *_ = parts
    registry.memory_budget = 1500
    await registry.load("mtl", "mtl")
    with pytest.raises(MemoryBudgetExceeded) as refused:
        await registry.load("other", "mtl2")
    assert (refused.value.needed, refused.value.used, refused.value.budget) == (900, 1000, 1500)
    assert len(backend.slots) == 1
    await registry.unload("mtl")
    await registry.load("other", "mtl2")


async def test_budget_checks_real_size_after_load(parts):
    registry, backend, *_ = parts
    registry.memory_budget = 950  # the estimate (900) fits, the engine's 1000 bytes do not
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
        with registry.acquire("mtl/boolq").released_on_error():
            raise ValueError("tokenizer refused the prompt")
    assert entry.in_flight == 0
    lease = registry.acquire("mtl/boolq")
    with lease.released_on_error() as target:
        assert target.task == "boolq"
    assert entry.in_flight == 1
    async with lease:
        pass
    assert entry.in_flight == 0
