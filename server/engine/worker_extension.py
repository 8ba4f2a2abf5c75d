"""Adapter residency inside each vLLM worker (mixed in through the engine's `worker_extension_cls`).

The engine process calls these methods through `AsyncLLM.collective_rpc`. On the first load the
worker wraps its model's fused linears in `AdaptedLinear` layers and hooks the model runner so every
step publishes its routing; a server that never loads an adapter set runs the plain vLLM model.
"""

from __future__ import annotations

import pathlib

import numpy as np

from adapters.batched.convert import SHARES_BASE_FACTORS, load_serving_factors, load_serving_slot
from router.batch_routing import RequestRoute, build_batch_routing
from router.heap import release_freed_memory
from server.engine import vllm_internals
from server.engine.adapted_linear import AdaptedLinear, Projection, WorkerAdapterState

_STATE_ATTRIBUTE = "_orthoserve_adapter_state"


class OrthoserveWorkerExtension:
    def orthoserve_load_slot(self, slot: int, set_dir: str, factors_dir: str | None) -> int:
        """Load one validated adapter-set version under `slot`; returns the bytes it occupies here."""
        state = self._orthoserve_state()
        dtype = vllm_internals.worker_model_dtype(self)
        factors_path = pathlib.Path(factors_dir) if factors_dir else None
        resident = load_serving_slot(pathlib.Path(set_dir), dtype, factors_path)
        if resident.kind in SHARES_BASE_FACTORS:
            missing = [key for key in resident.projections if key not in state.factors]
            state.factors.update(load_serving_factors(factors_path, missing, dtype, vllm_internals.dense_product))
        state.slots[slot] = resident
        return resident.nbytes

    def orthoserve_unload_slot(self, slot: int) -> int:
        """Drop `slot` and the base factors no remaining slot needs. Returns the bytes freed."""
        state = self._orthoserve_state()
        resident = state.slots.pop(slot, None)
        freed = resident.nbytes if resident else 0
        needed = {key for s in state.slots.values() if s.kind in SHARES_BASE_FACTORS for key in s.projections}
        for key in [key for key in state.factors if key not in needed]:
            freed += state.factors.pop(key).nbytes
        del resident
        release_freed_memory()
        return freed

    def orthoserve_resident_bytes(self) -> dict[str, int]:
        state = self._orthoserve_state()
        return {
            "slots": sum(s.nbytes for s in state.slots.values()),
            "base_factors": sum(f.nbytes for f in state.factors.values()),
        }

    def _orthoserve_state(self) -> WorkerAdapterState:
        state = getattr(self, _STATE_ATTRIBUTE, None)
        if state is None:
            state = _install(self)
            setattr(self, _STATE_ATTRIBUTE, state)
        return state


def _install(worker: object) -> WorkerAdapterState:
    vllm_internals.verify_internals()
    state = WorkerAdapterState()
    model = vllm_internals.worker_model(worker)
    for linear in list(vllm_internals.adaptable_linears(model)):
        projections, start = [], 0
        for name, size in linear.projection_sizes:
            projections.append(Projection(name, start, size))
            start += size
        adapted = AdaptedLinear(
            linear.layer,
            linear.layer_index,
            projections,
            state,
            base_forward=vllm_internals.base_forward,
            pack_output=vllm_internals.pack_output,
            added_bias=vllm_internals.added_bias(linear.layer),
            returned_bias=vllm_internals.returned_bias(linear.layer),
        )
        setattr(linear.parent, linear.attribute, adapted)

    def on_step(routes: list[RequestRoute | None], num_scheduled_tokens: np.ndarray) -> None:
        state.routing = build_batch_routing(routes, num_scheduled_tokens) if any(routes) else None

    def on_step_end() -> None:
        state.routing = None

    vllm_internals.install_step_hook(vllm_internals.worker_model_runner(worker), on_step, on_step_end)
    return state
