"""Host copies of bank slots: what an evicted set version leaves on the host, so bringing it back into
a slot is a copy, not a read of its file and a rebuild of its serving weights.

Per matrix a bank holds per slot, a copy keeps the slot's nonzero block only: a cleared slot is zero
and a set's padding is zero, so restoring the block into a clear slot restores the slot exactly.
Smaller per-slot tensors are kept whole; per-task-row tensors keep the set's rows, which come back
under whatever rows the set gets next.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from adapters.serving.bank import ProjectionBank


@dataclass(frozen=True)
class _Block:
    extent: tuple[int, ...]  # the block is view[:extent[0], :extent[1], ...]
    values: torch.Tensor  # on the host

    def region(self) -> tuple[slice, ...]:
        return tuple(slice(0, size) for size in self.extent)


@dataclass(frozen=True)
class SlotCopy:
    """One projection's part of one set version, on the host."""

    per_slot: tuple[_Block, ...]
    per_task_row: tuple[torch.Tensor, ...]

    @property
    def nbytes(self) -> int:
        tensors = [block.values for block in self.per_slot] + list(self.per_task_row)
        return sum(t.numel() * t.element_size() for t in tensors)


_SAME_SIZE_INT = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _nonzero_extent(host: torch.Tensor) -> tuple[int, ...]:
    """Per dim, one past the last index holding a nonzero value (0 for an all-zero tensor). Read as
    integers of the same width in numpy: a few small array operations, where per-dim torch
    reductions cost most of an eviction. A negative zero counts as nonzero, which only widens the block."""
    used = host.contiguous().view(_SAME_SIZE_INT[host.element_size()]).numpy() != 0
    extent = []
    for dim in range(used.ndim):
        others = tuple(d for d in range(used.ndim) if d != dim)
        indices = np.flatnonzero(used.any(axis=others) if others else used)
        extent.append(int(indices[-1]) + 1 if indices.size else 0)
    return tuple(extent)


def _copy_out(view: torch.Tensor) -> _Block:
    host = view.to("cpu")
    if view.dim() < 2:  # small per-slot vectors, some cleared to values other than zero
        return _Block(tuple(view.shape), host.clone())
    extent = _nonzero_extent(host)
    return _Block(extent, host[tuple(slice(0, size) for size in extent)].clone())


def save_slot(bank: ProjectionBank, slot: int, task_rows: torch.Tensor) -> SlotCopy:
    """A host copy of what `slot` and the set's `task_rows` hold in `bank`."""
    per_slot, per_task_row = bank.held()
    rows = task_rows.to(per_task_row[0].device) if per_task_row else task_rows
    return SlotCopy(
        per_slot=tuple(_copy_out(t[slot]) for t in per_slot),
        per_task_row=tuple(t.index_select(0, rows).to("cpu") for t in per_task_row),
    )


def restore_slot(bank: ProjectionBank, slot: int, task_rows: torch.Tensor, copy: SlotCopy) -> None:
    """Write `copy` back into `slot`, which is clear, and into the set's new `task_rows`."""
    per_slot, per_task_row = bank.held()
    for tensor, block in zip(per_slot, copy.per_slot):
        tensor[slot][block.region()].copy_(block.values.to(tensor.device))
    for tensor, rows in zip(per_task_row, copy.per_task_row):
        tensor.index_copy_(0, task_rows.to(tensor.device), rows.to(tensor.device))
