"""Adapter residency inside each vLLM worker.

`install_adapters` runs when the model loads (see `plugin`): it wraps the fused linears of
every decoder layer in `AdaptedLinear` layers backed by fixed-capacity banks and hooks the model runner
so every step publishes its routing. The engine process then loads and unloads set versions through
`AsyncLLM.collective_rpc` on the methods of `OrthoserveWorkerExtension` (vLLM's `worker_extension_cls`).
"""

from __future__ import annotations

import pathlib

from adapters.registry import get_method
from adapters.serving.heap import release_freed_memory
from server.engine.vllm import worker as vllm_worker
from server.engine.worker.adapted_linear import Projection
from server.engine.worker.residency import WorkerAdapters

_ATTRIBUTE = "_orthoserve_adapters"
# Keys of vLLM's `additional_config` under which the engine process hands the workers their adapter
# capacity and bank dtype (`server.engine.capacity.AdapterCapacity.engine_options`).
CAPACITY_KEY = "orthoserve"
BANK_DTYPE_KEY = "orthoserve_bank_dtype"


def install_adapters(model_runner: object) -> None:
    extra_config = vllm_worker.runner_extra_config(model_runner)
    capacity = extra_config.get(CAPACITY_KEY)
    if not capacity:
        return
    vllm_worker.verify_internals()
    capacities = {kind: get_method(kind).serving.capacity_cls(**fields) for kind, fields in capacity.items()}
    linears = []
    for linear in vllm_worker.adaptable_linears(vllm_worker.runner_model(model_runner)):
        projections, start = [], 0
        for name, shape in linear.projections:
            projections.append(Projection(name, start, shape.out_features))
            start += shape.out_features
        shapes = dict(linear.projections)
        linears.append((linear.layer_index, linear.layer, projections, shapes, linear.replace))
    adapters = WorkerAdapters(
        linears,
        capacities,
        device=vllm_worker.runner_device(model_runner),
        model_dtype=vllm_worker.runner_model_dtype(model_runner),
        bank_dtype=extra_config.get(BANK_DTYPE_KEY, "auto"),
        kernel_for=vllm_worker.segmented_kernel,
        max_tokens=vllm_worker.runner_max_tokens(model_runner),
        product=vllm_worker.dense_product,
        base_forward=vllm_worker.base_forward,
        pack_output=vllm_worker.pack_output,
    )
    vllm_worker.install_step_hook(model_runner, adapters.begin_step, adapters.end_step)
    setattr(model_runner, _ATTRIBUTE, adapters)


class OrthoserveWorkerExtension:
    def orthoserve_unload_slot(self, slot: int) -> int:
        """Drop `slot`, its host copy, and the base factors no remaining slot needs. Returns the bytes freed."""
        freed = self._orthoserve_adapters().unload(slot)
        release_freed_memory()
        return freed

    def orthoserve_move(
        self, evictions: list[tuple[int, bool]], arrivals: list[tuple[int, str, str | None, bool]]
    ) -> dict[str, list]:
        """Evict `(slot, keep_host_copy)` pairs, then bring in `(slot, set_dir, factors_dir, from_host)`
        arrivals, in one call between engine steps. Returns `{"host_bytes": [n per eviction],
        "arrived": [{"bytes": n} or {"error": why} per arrival]}`; failures are returned, not raised
        (a raising collective call leaves vLLM's tensor-parallel response queues out of step for the
        next call)."""
        adapters = self._orthoserve_adapters()
        host_bytes = [adapters.evict(slot, keep) for slot, keep in evictions]
        arrived: list[dict[str, int | str]] = []
        for slot, set_dir, factors_dir, from_host in arrivals:
            factors = pathlib.Path(factors_dir) if factors_dir else None
            try:
                nbytes = adapters.restore(slot, factors) if from_host else adapters.load(slot, pathlib.Path(set_dir), factors)
                arrived.append({"bytes": nbytes})
            except Exception as error:  # noqa: BLE001 - reported to the engine process, which rolls back every rank
                arrived.append({"error": f"{type(error).__name__}: {error}"})
        release_freed_memory()  # once per move: the read files' tensors and the cleared slots' pages
        return {"host_bytes": host_bytes, "arrived": arrived}

    def orthoserve_forget(self, slots: list[int]) -> None:
        """Drop these slots' host copies."""
        for slot in slots:
            self._orthoserve_adapters().forget(slot)
        release_freed_memory()

    def orthoserve_resident_bytes(self) -> dict[str, int]:
        return self._orthoserve_adapters().resident_bytes()

    def orthoserve_placement(self) -> dict[str, str]:
        """The banks' device, dtype and segmented-product kernel, and the model's dtype."""
        return self._orthoserve_adapters().describe_placement()

    def orthoserve_compilation(self) -> dict[str, object]:
        """How vLLM compiled this worker's model (mode, graph settings, compilation counters)."""
        return vllm_worker.runner_compilation(vllm_worker.worker_model_runner(self))

    def _orthoserve_adapters(self) -> WorkerAdapters:
        adapters = getattr(vllm_worker.worker_model_runner(self), _ATTRIBUTE, None)
        if adapters is None:
            raise RuntimeError("this engine was started without adapter capacity")
        return adapters
