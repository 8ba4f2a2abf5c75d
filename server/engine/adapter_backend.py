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
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from adapters.base_model import BaseModelInfo
from adapters.format import read_manifest
from adapters.manifest import Manifest
from adapters.registry import get_method
from adapters.svd_cache import ensure_base_factors
from router.errors import AdapterEngineLoadFailed
from router.ports import Arrival, Eviction, MoveOutcome, SlotLimits
from server.engine.worker.step_routing import RequestRoute
from router.target import RouteTarget
from server.engine.capacity import AdapterCapacity


def model_context_length(model_dir: Path) -> int:
    """The context length a model folder declares (what vLLM uses when no max model length is set)."""
    config = json.loads((model_dir / "config.json").read_text())
    return int(config["max_position_embeddings"])


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


def load_slot_args(factors: FactorsFolder, slot: int, set_dir: Path, manifest: Manifest) -> tuple[int, str, str | None]:
    """Arguments of the workers' `orthoserve_load_slot`; computes the base factors first if the set needs them."""
    factors_dir = str(factors.path()) if manifest.method().needs_factors else None
    return slot, str(set_dir), factors_dir


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
        factors = await asyncio.to_thread(self._factors_dirs, arrivals)
        arrived: dict[int, int | Exception] = {slot: error for slot, error in factors.items() if isinstance(error, Exception)}
        sent = [a for a in arrivals if a.slot not in arrived]
        per_rank = await self._engine.collective_rpc(
            "orthoserve_move",
            args=([(e.slot, e.keep_host_copy) for e in evictions], [(a.slot, str(a.set_dir), factors[a.slot], a.from_host) for a in sent]),
        )
        for index, arrival in enumerate(sent):
            results = [rank["arrived"][index] for rank in per_rank]
            failures = [result["error"] for result in results if "error" in result]
            if failures:
                # Some rank failed: the others may hold the set. Drop it everywhere, then report.
                await self._engine.collective_rpc("orthoserve_unload_slot", args=(arrival.slot,))
                arrived[arrival.slot] = AdapterEngineLoadFailed(f"The engine could not load the set: {failures[0]}")
            else:
                arrived[arrival.slot] = max(result["bytes"] for result in results)  # bytes on the most loaded rank
        host_bytes = {e.slot: max(rank["host_bytes"][index] for rank in per_rank) for index, e in enumerate(evictions)}
        return MoveOutcome(host_bytes, arrived)

    def _factors_dirs(self, arrivals: list[Arrival]) -> dict[int, str | None | Exception]:
        """Per arrival, the base factors folder its method reads (computed first if missing), None if
        it reads none, or why its folder cannot be read."""
        factors: dict[int, str | None | Exception] = {}
        for arrival in arrivals:
            try:
                factors[arrival.slot] = load_slot_args(self._factors, arrival.slot, arrival.set_dir, read_manifest(arrival.set_dir))[2]
            except Exception as error:  # noqa: BLE001 - this arrival fails; the move goes on without it
                factors[arrival.slot] = error
        return factors

    async def forget(self, slots: list[int]) -> None:
        await self._engine.collective_rpc("orthoserve_forget", args=(slots,))

    async def unload(self, slot: int) -> int:
        return max(await self._engine.collective_rpc("orthoserve_unload_slot", args=(slot,)))

    async def resident_bytes(self) -> dict[str, int]:
        return (await self._engine.collective_rpc("orthoserve_resident_bytes"))[0]


@dataclass(frozen=True)
class EngineRouting:
    """How one request reaches its adapter inside the engine."""

    extra_args: dict[str, Any] | None  # `SamplingParams.extra_args`: the workers' routing entry
    cache_salt: str | None  # prefix-cache namespace: set, version and task
    skip_prefix_cache: bool  # never read cached KV (BADIT: prefill routing sees the whole prompt)

    def prompt(self, token_ids: list[int]) -> dict[str, Any]:
        """The engine prompt (vLLM `TokensPrompt` fields) of one prompt, salted for its adapter."""
        if self.cache_salt is None:
            return {"prompt_token_ids": token_ids}
        return {"prompt_token_ids": token_ids, "cache_salt": self.cache_salt}

    def sampling_fields(self) -> dict[str, Any]:
        """The `SamplingParams` fields that carry this routing."""
        return {"extra_args": self.extra_args, "skip_reading_prefix_cache": self.skip_prefix_cache}


def request_routing(target: RouteTarget) -> EngineRouting:
    """The engine-side routing of a request to `target`; the base model needs none."""
    if target.is_base:
        return EngineRouting(None, None, False)
    extra_args = RequestRoute(slot=target.slot, task_index=target.task_index).to_extra_args()
    whole_prompt = get_method(target.kind).serving.whole_prompt_prefill
    return EngineRouting(extra_args, f"{target.set_name}@{target.version}/{target.task}", whole_prompt)
