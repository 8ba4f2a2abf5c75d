"""Loads adapter-set versions into the engine's workers and tags requests so the workers route them.

Contract used by the router:
- `await backend.move(evictions, arrivals)` frees engine slots and brings set versions into every
  worker under their `slot` ids (ints never reused), in one engine call.
- `await backend.unload(slot)` frees it; callers guarantee no running request still uses the slot.
- `request_routing(target)` gives what a request carries into the engine (routing entry, cache salt).

Prefix caching: KV entries depend on the adapter, so adapter requests carry a cache salt naming the
set, version and task. A BADIT request never reads cached KV: its prefill routing averages over the
whole prompt, so KV computed for another prompt that merely starts the same way (or for a cached
prefix of its own prompt) would be routed differently.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from adapters.base_model import BaseModelInfo
from adapters.format import read_manifest
from adapters.registry import get_method
from adapters.svd_cache import ensure_base_factors
from router.errors import AdapterEngineLoadFailed
from router.ports import Arrival, Eviction, MoveOutcome, SlotLimits
from router.target import RouteTarget
from server.engine.capacity import AdapterCapacity
from server.engine.worker.step_routing import RequestRoute


class FactorsFolder:
    """The verified SVD factor folder of the base model, computed on first need and checked again only
    if it disappears (every load of a MoORE or BADIT set passes it to the workers)."""

    def __init__(self, base: BaseModelInfo, svd_cache_dir: Path) -> None:
        self._base = base
        self._svd_cache_dir = svd_cache_dir
        self._verified: Path | None = None

    def path(self) -> Path:
        if self._verified is None or not self._verified.is_dir():
            self._verified = ensure_base_factors(self._base, self._svd_cache_dir)
        return self._verified


@dataclass(frozen=True)
class MoveCall:
    """One `orthoserve_move` call to the workers: its arguments, and how to read the ranks' answers.
    Arrivals whose folder cannot be read (or whose base factors cannot be made) are refused here,
    before the call."""

    evictions: list[Eviction]
    sent: list[Arrival]
    factors: dict[int, str | None]  # per sent arrival, the base factors folder its method reads
    refused: dict[int, Exception]

    @classmethod
    def prepare(cls, factors: FactorsFolder, evictions: list[Eviction], arrivals: list[Arrival]) -> MoveCall:
        """Blocking: reads each arrival's manifest, and computes the base factors if one needs them."""
        folders: dict[int, str | None] = {}
        refused: dict[int, Exception] = {}
        for arrival in arrivals:
            try:
                needs_factors = read_manifest(arrival.set_dir).method().needs_factors
                folders[arrival.slot] = str(factors.path()) if needs_factors else None
            except Exception as error:  # noqa: BLE001 - this arrival fails; the move goes on without it
                refused[arrival.slot] = error
        return cls(evictions, [a for a in arrivals if a.slot not in refused], folders, refused)

    @property
    def args(self) -> tuple[list, list]:
        return (
            [(e.slot, e.keep_host_copy) for e in self.evictions],
            [(a.slot, str(a.set_dir), self.factors[a.slot], a.from_host) for a in self.sent],
        )

    def outcome(self, per_rank: list[dict[str, list]]) -> tuple[MoveOutcome, list[int]]:
        """The move's outcome, and the slots some rank failed to bring in: the others may hold them,
        so the caller unloads them everywhere."""
        arrived: dict[int, int | Exception] = dict(self.refused)
        failed = []
        for index, arrival in enumerate(self.sent):
            results = [rank["arrived"][index] for rank in per_rank]
            errors = [result["error"] for result in results if "error" in result]
            if errors:
                failed.append(arrival.slot)
                arrived[arrival.slot] = AdapterEngineLoadFailed(f"The engine could not load the set: {errors[0]}")
            else:
                arrived[arrival.slot] = max(result["bytes"] for result in results)  # bytes on the most loaded rank
        host_bytes = {e.slot: max(rank["host_bytes"][index] for rank in per_rank) for index, e in enumerate(self.evictions)}
        return MoveOutcome(host_bytes, arrived), failed


class RpcEngine(Protocol):
    async def collective_rpc(self, method: str, timeout: float | None = None, args: tuple = (), kwargs: dict | None = None) -> list[Any]: ...


class AdapterEngineBackend:
    def __init__(self, engine: RpcEngine, base: BaseModelInfo, svd_cache_dir: Path, capacity: AdapterCapacity) -> None:
        self._engine = engine
        self._factors = FactorsFolder(base, svd_cache_dir)
        self._capacity = capacity

    def slot_limits(self) -> dict[str, SlotLimits]:
        return self._capacity.slot_limits()

    def check_set(self, set_dir: Path) -> None:
        self._capacity.check_limits(read_manifest(set_dir))

    async def move(self, evictions: list[Eviction], arrivals: list[Arrival]) -> MoveOutcome:
        call = await asyncio.to_thread(MoveCall.prepare, self._factors, evictions, arrivals)
        outcome, failed = call.outcome(await self._engine.collective_rpc("orthoserve_move", args=call.args))
        for slot in failed:
            await self._engine.collective_rpc("orthoserve_unload_slot", args=(slot,))
        return outcome

    async def forget(self, slots: list[int]) -> None:
        await self._engine.collective_rpc("orthoserve_forget", args=(slots,))

    async def unload(self, slot: int) -> int:
        return max(await self._engine.collective_rpc("orthoserve_unload_slot", args=(slot,)))


@dataclass(frozen=True)
class EngineRouting:
    """How one request reaches its adapter inside the engine."""

    extra_args: dict[str, Any] | None  # `SamplingParams.extra_args`: the workers' routing entry
    cache_salt: str | None  # prefix-cache namespace: set, version and task
    skip_prefix_cache: bool  # never read cached KV (BADIT: prefill routing sees the whole prompt)

    def attach(self, prompt: Any, params: Any) -> Any:
        """Route one engine request: `params` (vLLM `SamplingParams`) gain the routing in place, and the
        returned engine prompt is salted for the adapter. The one way requests are routed, by the
        server and by the offline engine alike."""
        if self.extra_args:
            params.extra_args = {**(params.extra_args or {}), **self.extra_args}
        if self.skip_prefix_cache:
            params.skip_reading_prefix_cache = True
        if self.cache_salt is None:
            return prompt
        if not isinstance(prompt, dict):
            raise TypeError(f"cannot salt an engine prompt of type {type(prompt).__name__}")
        client_salt = prompt.get("cache_salt")
        salt = self.cache_salt if client_salt is None else f"{self.cache_salt}:{client_salt}"
        return {**prompt, "cache_salt": salt}


def request_routing(target: RouteTarget) -> EngineRouting:
    """The engine-side routing of a request to `target`; the base model needs none."""
    if target.is_base:
        return EngineRouting(None, None, False)
    extra_args = RequestRoute(slot=target.slot, task_index=target.task_index).to_extra_args()
    whole_prompt = get_method(target.kind).serving.whole_prompt_prefill
    return EngineRouting(extra_args, f"{target.set_name}@{target.version}/{target.task}", whole_prompt)
