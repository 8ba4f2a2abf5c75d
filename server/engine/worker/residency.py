"""Resident adapter sets inside one engine worker: the fixed-capacity banks of every adapted layer,
which set version holds which bank slot and task rows, and the routing of the current step.

Built when the model loads (before compilation), from the capacity the engine was started with.
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import torch

from adapters.format import AdapterSet, read_validated_set
from adapters.registry import get_method
from adapters.serving.bank import (
    BankDtype,
    BankPlacement,
    MethodCapacity,
    ProjectionBank,
    ProjectionShape,
    SlotContents,
    compute_dtype,
)
from adapters.serving.factors import ProductFactory, SharedFactors
from adapters.serving.grouped import SegmentedKernel, default_kernel
from adapters.serving.host_copy import SlotCopy, restore_slot, save_slot
from adapters.svd_cache import BaseFactors
from server.engine.worker.adapted_linear import AdaptedLinear, Projection
from server.engine.worker.step_routing import RequestRoute, ResidentEntry, StepBuffers, StepRouting, build_host_rows


class CapacityExceeded(RuntimeError):
    """A set does not fit the engine's adapter capacity."""


class TaskRowPool:
    """Rows of a method's task pool (task vectors, mixtures); a set's rows need not be contiguous."""

    def __init__(self, size: int) -> None:
        self._used = np.zeros(size, dtype=bool)

    def allocate(self, count: int) -> tuple[int, ...]:
        rows = np.flatnonzero(~self._used)[:count]
        if rows.size < count:
            raise CapacityExceeded(f"{count} task rows needed, {rows.size} of {self._used.size} free")
        self._used[rows] = True
        return tuple(int(row) for row in rows)

    def free(self, rows: tuple[int, ...]) -> None:
        self._used[list(rows)] = False


@dataclass(frozen=True)
class HostCopy:
    """An evicted set version's bank contents, on the host."""

    kind: str
    num_task_rows: int
    engine_bytes: int  # what the version occupies once back in a slot
    parts: dict[tuple[int, str], SlotCopy]  # (layer, projection) → that projection's part

    @property
    def nbytes(self) -> int:
        return sum(part.nbytes for part in self.parts.values())


class WorkerAdapters:
    def __init__(
        self,
        linears: Iterable[tuple[int, torch.nn.Module, list[Projection], dict[str, ProjectionShape], Callable[[AdaptedLinear], None]]],
        capacities: Mapping[str, MethodCapacity],
        device: torch.device,
        model_dtype: torch.dtype,
        max_tokens: int,
        product: ProductFactory,
        base_forward: Callable,
        pack_output: Callable,
        bank_dtype: BankDtype = "auto",
        kernel_for: Callable[[torch.device, torch.dtype], SegmentedKernel] = default_kernel,
    ) -> None:
        """`linears`: (layer index, base layer, its projections, this rank's part of each, a function that
        puts the adapted layer in the base layer's place). `kernel_for(device, dtype)` picks the
        segmented-product kernel of every bank."""
        self.capacities = dict(capacities)
        self.slots_per_kind = {kind: capacity.max_sets for kind, capacity in self.capacities.items()}
        self.device = device
        dtype = compute_dtype(device, model_dtype, bank_dtype)
        self.placement = BankPlacement(device, dtype, kernel_for(device, dtype))
        self.model_dtype = model_dtype
        self.shared: dict[tuple[int, str], SharedFactors] = {}
        self.layers: dict[tuple[int, str], AdaptedLinear] = {}  # (layer, projection) → layer holding it
        self.shapes: dict[tuple[int, str], ProjectionShape] = {}  # (layer, projection) → this rank's part
        for layer_index, base_layer, projections, shapes, install in linears:
            banks: dict[str, dict[str, ProjectionBank]] = {}
            for kind, capacity in self.capacities.items():
                serving = get_method(kind).serving
                banks[kind] = {}
                for p in projections:
                    shared = self.shared.setdefault((layer_index, p.name), SharedFactors(dtype, device, product))
                    banks[kind][p.name] = serving.make_bank(capacity, shapes[p.name], self.placement, shared)
            adapted = AdaptedLinear(
                base_layer, layer_index, projections, banks, self.slots_per_kind, lambda: self.routing, base_forward, pack_output
            )
            install(adapted)
            for p in projections:
                self.layers[(layer_index, p.name)] = adapted
                self.shapes[(layer_index, p.name)] = shapes[p.name]
        self.free_slots = {kind: list(range(n)) for kind, n in self.slots_per_kind.items()}
        self.task_rows = {kind: TaskRowPool(getattr(c, "max_tasks", 0)) for kind, c in self.capacities.items()}
        self.entries: dict[int, ResidentEntry] = {}
        self.entry_bytes: dict[int, int] = {}
        self.host_copies: dict[int, HostCopy] = {}  # evicted set versions kept on the host
        self.buffers = StepBuffers(max_tokens, self.slots_per_kind, device)
        self.routing: StepRouting | None = None

    # --- residency -------------------------------------------------------------------------------

    def load(self, slot_id: int, set_dir: pathlib.Path, factors_dir: pathlib.Path | None) -> int:
        """Write one validated set version, read from its folder, into a free bank slot of its method;
        returns its bytes."""
        adapter_set = read_validated_set(set_dir)
        method = adapter_set.method
        task_rows = self._allocate(slot_id, adapter_set.kind, method.serving.task_rows_needed(adapter_set.config, len(adapter_set.tasks)))
        try:
            self.entry_bytes[slot_id] = self._write(adapter_set, self.entries[slot_id].bank_slot, task_rows, factors_dir)
        except BaseException:
            self.unload(slot_id)  # nothing of a half-written set stays
            raise
        finally:
            del adapter_set  # the file's tensors, read only to fill the slot
        return self.entry_bytes[slot_id]

    def _allocate(self, slot_id: int, kind: str, num_task_rows: int) -> torch.Tensor:
        """A free bank slot and task rows of `kind` for `slot_id`; returns the rows on the device."""
        if kind not in self.capacities:
            raise CapacityExceeded(f"this engine has no capacity for {kind} sets")
        if not self.free_slots[kind]:
            raise CapacityExceeded(f"all {self.slots_per_kind[kind]} {kind} slots are in use")
        task_rows = self.task_rows[kind].allocate(num_task_rows)
        self.entries[slot_id] = ResidentEntry(kind, self.free_slots[kind].pop(0), task_rows)
        self.entry_bytes[slot_id] = 0
        return torch.tensor(task_rows, dtype=torch.long, device=self.device)

    def _write(self, adapter_set: AdapterSet, bank_slot: int, task_rows: torch.Tensor, factors_dir: pathlib.Path | None) -> int:
        kind, method = adapter_set.kind, adapter_set.method
        factors = BaseFactors(factors_dir) if factors_dir is not None else None
        nbytes = 0
        for layer, proj, module in adapter_set.modules():
            if (layer, proj) not in self.layers:
                continue  # the layer runs on another pipeline stage

            def base_factors(layer: int = layer, proj: str = proj):
                return factors.get(layer, proj)

            if method.serving.shares_base_factors:
                self.shared[(layer, proj)].hold(base_factors, self.shapes[(layer, proj)])
            adapted = self.layers[(layer, proj)]
            adapted.mark(kind, bank_slot, proj, True)  # before writing: a failed write is cleared too
            nbytes += adapted.banks[kind][proj].write(bank_slot, SlotContents(module, adapter_set.config, task_rows, base_factors))
        return nbytes

    def unload(self, slot_id: int) -> int:
        """Free a set version's bank slot and task rows, its host copy, and base factors no resident set
        needs. Returns the bytes no longer used in the banks."""
        self.host_copies.pop(slot_id, None)
        entry = self.entries.pop(slot_id, None)
        if entry is None:
            return 0
        freed = self.entry_bytes.pop(slot_id)
        for (layer, proj), adapted in self.layers.items():
            if adapted.targets[entry.kind][proj][entry.bank_slot]:
                adapted.banks[entry.kind][proj].clear(entry.bank_slot)
                adapted.mark(entry.kind, entry.bank_slot, proj, False)
        self.free_slots[entry.kind].append(entry.bank_slot)
        self.task_rows[entry.kind].free(entry.task_rows)
        if get_method(entry.kind).serving.shares_base_factors:
            freed += self._release_unneeded_factors()
        return freed

    # --- host tier -------------------------------------------------------------------------------

    def evict(self, slot_id: int, keep_host_copy: bool) -> int:
        """Free a set version's bank slot; with `keep_host_copy`, first copy what it holds to the host,
        so `restore` can bring it back. Returns the host copy's bytes (0 without one)."""
        entry = self.entries[slot_id]
        copy = None
        if keep_host_copy:
            rows = torch.tensor(entry.task_rows, dtype=torch.long)
            parts = {
                key: save_slot(adapted.banks[entry.kind][key[1]], entry.bank_slot, rows)
                for key, adapted in self.layers.items()
                if adapted.targets[entry.kind][key[1]][entry.bank_slot]
            }
            copy = HostCopy(entry.kind, len(entry.task_rows), self.entry_bytes[slot_id], parts)
        self.unload(slot_id)
        if copy is None:
            return 0
        self.host_copies[slot_id] = copy
        return copy.nbytes

    def restore(self, slot_id: int, factors_dir: pathlib.Path | None) -> int:
        """Bring an evicted set version back from its host copy into a free bank slot; returns its bytes."""
        copy = self.host_copies.pop(slot_id)
        task_rows = self._allocate(slot_id, copy.kind, copy.num_task_rows)
        try:
            factors = BaseFactors(factors_dir) if factors_dir is not None else None
            shares_factors = get_method(copy.kind).serving.shares_base_factors
            bank_slot = self.entries[slot_id].bank_slot
            for (layer, proj), part in copy.parts.items():
                if shares_factors:
                    self.shared[(layer, proj)].hold(lambda layer=layer, proj=proj: factors.get(layer, proj), self.shapes[(layer, proj)])
                adapted = self.layers[(layer, proj)]
                adapted.mark(copy.kind, bank_slot, proj, True)
                restore_slot(adapted.banks[copy.kind][proj], bank_slot, task_rows, part)
        except BaseException:
            self.unload(slot_id)
            raise
        self.entry_bytes[slot_id] = copy.engine_bytes
        return copy.engine_bytes

    def forget(self, slot_id: int) -> None:
        """Drop a set version's host copy (it is read from its folder next time)."""
        self.host_copies.pop(slot_id, None)

    def _release_unneeded_factors(self) -> int:
        needed = {
            key
            for key, adapted in self.layers.items()
            for kind, by_proj in adapted.targets.items()
            if get_method(kind).serving.shares_base_factors and by_proj[key[1]].any()
        }
        return sum(shared.release() for key, shared in self.shared.items() if key not in needed)

    def describe_placement(self) -> dict[str, str]:
        """Where the banks live and what runs them, for benchmarks and logs."""
        return {
            "device": str(self.device),
            "model_dtype": str(self.model_dtype).removeprefix("torch."),
            "bank_dtype": str(self.placement.dtype).removeprefix("torch."),
            "kernel": self.placement.kernel.name,
        }

    def resident_bytes(self) -> dict[str, int]:
        banks = {id(b): b for adapted in self.layers.values() for by_proj in adapted.banks.values() for b in by_proj.values()}
        return {
            "slots": sum(self.entry_bytes.values()),
            "host_copies": sum(copy.nbytes for copy in self.host_copies.values()),
            "capacity": sum(b.nbytes for b in banks.values()),
            "base_factors": sum(shared.nbytes for shared in self.shared.values()),
        }

    # --- per step --------------------------------------------------------------------------------

    def begin_step(self, routes: list[RequestRoute | None], num_scheduled_tokens: np.ndarray) -> None:
        if not any(routes):
            self.routing = None
            return
        host = build_host_rows(routes, num_scheduled_tokens, self._entry, self.slots_per_kind)
        n = int(np.asarray(num_scheduled_tokens).sum())
        kinds = {kind: self.buffers.publish(kind, rows, n) for kind, rows in host.items()}
        self.routing = StepRouting(n, self.device, self.slots_per_kind, kinds, host)

    def end_step(self) -> None:
        self.routing = None

    def _entry(self, slot_id: int) -> ResidentEntry:
        entry = self.entries.get(slot_id)
        if entry is None:
            raise RuntimeError(f"a request is routed to adapter slot {slot_id}, which is not resident")
        return entry
