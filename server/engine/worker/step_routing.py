"""Per-step routing: the entry each request carries into the engine, and the rows each method's banks
read in one step, built once per step and shared by every adapted layer (the way multi-LoRA servers
share one token→adapter mapping). Layers never see requests or tags, only these index tensors.

A request contributes one contiguous *segment* of rows (its scheduled tokens this step: the whole
prompt at prefill, one token per decode step). Within a method, rows are sorted by slot so that one
grouped product serves every slot; the sort is stable, so segments stay contiguous.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from adapters.serving.bank import KindRows
from adapters.serving.grouped import Groups

ROUTING_KEY = "orthoserve"
"""Key of a request's routing entry in vLLM's `SamplingParams.extra_args`."""


@dataclass(frozen=True)
class RequestRoute:
    """The routing entry one request carries into the engine (None in extra_args means base)."""

    slot: int  # the set version's id, never reused
    task_index: int

    def to_extra_args(self) -> dict[str, dict[str, int]]:
        return {ROUTING_KEY: {"slot": self.slot, "task_index": self.task_index}}

    @classmethod
    def from_extra_args(cls, extra_args: dict | None) -> RequestRoute | None:
        entry = (extra_args or {}).get(ROUTING_KEY)
        if entry is None:
            return None
        return cls(slot=int(entry["slot"]), task_index=int(entry["task_index"]))


@dataclass(frozen=True)
class ResidentEntry:
    """Where one resident set version lives in a worker: its method, bank slot and task rows."""

    kind: str
    bank_slot: int
    task_rows: tuple[int, ...]  # row of each task in the method's task pool


@dataclass(frozen=True)
class HostKindRows:
    rows: np.ndarray  # (n,) batch rows, sorted by bank slot
    bank_slot: np.ndarray  # (n,)
    task_row: np.ndarray  # (n,)
    segment: np.ndarray  # (n,)
    ends: np.ndarray  # (listed slots,) int32 cumulative rows per listed slot
    segment_ends: np.ndarray  # (listed slots,) int32 cumulative segments per listed slot
    listed: np.ndarray | None  # the listed slots (int64) when only slots with rows are, None: every slot
    num_segments: int
    only_slot: int | None  # the one slot with rows, when just one has any


def build_host_rows(
    routes: Sequence[RequestRoute | None],
    num_scheduled_tokens: Sequence[int] | np.ndarray,
    resident: Callable[[int], ResidentEntry],
    slots_per_kind: Mapping[str, int],
) -> dict[str, HostKindRows]:
    """Expand per-request routes to per-method rows. `routes[i]` and `num_scheduled_tokens[i]` describe
    the i-th request in batch order; its rows are the next `num_scheduled_tokens[i]` rows of the batch."""
    counts = np.asarray(num_scheduled_tokens, dtype=np.int64)
    starts = np.concatenate(([0], np.cumsum(counts)[:-1])) if len(counts) else counts
    segments: dict[str, list[tuple[int, int, int, int]]] = {}  # kind → (bank slot, start, count, task row)
    for route, start, count in zip(routes, starts, counts):
        if route is None or count == 0:
            continue
        entry = resident(route.slot)
        segments.setdefault(entry.kind, []).append(
            (entry.bank_slot, int(start), int(count), entry.task_rows[route.task_index] if entry.task_rows else 0)
        )
    return {kind: _kind_rows(sorted(found, key=lambda s: s[0]), slots_per_kind[kind]) for kind, found in segments.items()}


def _kind_rows(segments: list[tuple[int, int, int, int]], num_slots: int) -> HostKindRows:
    bank = np.array([s[0] for s in segments], dtype=np.int64)
    lengths = np.array([s[2] for s in segments], dtype=np.int64)
    rows = np.concatenate([np.arange(start, start + count) for _, start, count, _ in segments])
    return _grouped(
        rows=rows,
        bank_slot=np.repeat(bank, lengths),
        task_row=np.repeat(np.array([s[3] for s in segments], dtype=np.int64), lengths),
        segment=np.repeat(np.arange(len(segments), dtype=np.int64), lengths),
        segment_slot=bank,
        num_slots=num_slots,
    )


def _grouped(
    rows: np.ndarray, bank_slot: np.ndarray, task_row: np.ndarray, segment: np.ndarray, segment_slot: np.ndarray, num_slots: int
) -> HostKindRows:
    """Rows sorted by slot, with their groups: every slot listed, or only the slots that have rows
    when they are at most half of all slots (grouped products then skip the empty ones)."""
    rows_per_slot = np.bincount(bank_slot, minlength=num_slots)
    segments_per_slot = np.bincount(segment_slot, minlength=num_slots)
    listed = np.flatnonzero(rows_per_slot)
    if 2 * listed.size <= num_slots:
        rows_per_slot, segments_per_slot = rows_per_slot[listed], segments_per_slot[listed]
    else:
        listed = None
    return HostKindRows(
        rows=rows,
        bank_slot=bank_slot,
        task_row=task_row,
        segment=segment,
        ends=np.cumsum(rows_per_slot).astype(np.int32),
        segment_ends=np.cumsum(segments_per_slot).astype(np.int32),
        listed=listed,
        num_segments=int(segment_slot.size),
        only_slot=int(bank_slot[0]) if bank_slot.size and (bank_slot == bank_slot[0]).all() else None,
    )


def to_device(values: np.ndarray, out: torch.Tensor | None = None, device: torch.device | None = None) -> torch.Tensor:
    """Host routing `values` on the device: copied into `out` (a persistent buffer) or a new tensor on
    `device`. From pinned memory and non-blocking on CUDA (the caching host allocator keeps the pinned
    block until the copy has run), so the host never waits for the device."""
    host = torch.from_numpy(values)
    target = out.device if out is not None else device
    if target.type == "cuda":
        host = host.pin_memory()
    if out is None:
        return host.to(target, non_blocking=True)
    return out.copy_(host, non_blocking=True)


class StepBuffers:
    """Persistent device tensors the routing of every step is copied into, in place."""

    def __init__(self, max_tokens: int, slots_per_kind: Mapping[str, int], device: torch.device) -> None:
        def tensor(size: int, dtype: torch.dtype) -> torch.Tensor:
            return torch.zeros(size, dtype=dtype, device=device)

        self._buffers = {
            kind: {
                "rows": tensor(max_tokens, torch.long),
                "bank_slot": tensor(max_tokens, torch.long),
                "task_row": tensor(max_tokens, torch.long),
                "segment": tensor(max_tokens, torch.long),
                "ends": tensor(slots, torch.int32),
                "segment_ends": tensor(slots, torch.int32),
                "listed": tensor(slots, torch.long),
            }
            for kind, slots in slots_per_kind.items()
        }

    def publish(self, kind: str, host: HostKindRows, num_tokens: int) -> KindRows:
        buffers = self._buffers[kind]
        views = {}
        for name, buffer in buffers.items():
            values = getattr(host, name)
            if values is None:
                continue
            views[name] = to_device(values, buffer[: values.shape[0]])
        return _kind_rows_on_device(host, num_tokens, views)


def _kind_rows_on_device(host: HostKindRows, num_tokens: int, views: Mapping[str, torch.Tensor]) -> KindRows:
    listed = views.get("listed")
    return KindRows(
        rows=views["rows"],
        groups=Groups(views["ends"], host.ends, listed, host.only_slot),
        slot=views["bank_slot"],
        task_row=views["task_row"],
        segment=views["segment"],
        segment_groups=Groups(views["segment_ends"], host.segment_ends, listed, host.only_slot),
        num_rows=host.rows.shape[0],
        num_segments=host.num_segments,
        covers_batch=_covers(host.rows, num_tokens),
    )


def restrict(host: HostKindRows, keep: np.ndarray, num_slots: int) -> HostKindRows:
    """The rows of `host` where `keep` is True, with segments and slot ends recounted."""
    segments, segment = np.unique(host.segment[keep], return_inverse=True)
    first_of_segment = np.searchsorted(host.segment, segments)
    return _grouped(
        rows=host.rows[keep],
        bank_slot=host.bank_slot[keep],
        task_row=host.task_row[keep],
        segment=segment.astype(np.int64),
        segment_slot=host.bank_slot[first_of_segment],
        num_slots=num_slots,
    )


def device_rows(host: HostKindRows, num_tokens: int, device: torch.device) -> KindRows:
    names = ("rows", "bank_slot", "task_row", "segment", "ends", "segment_ends", "listed")
    views = {name: to_device(getattr(host, name), device=device) for name in names if getattr(host, name) is not None}
    return _kind_rows_on_device(host, num_tokens, views)


def _covers(rows: np.ndarray, num_tokens: int) -> bool:
    return rows.shape[0] == num_tokens and bool((rows == np.arange(num_tokens)).all())


@dataclass
class StepRouting:
    """The routing of one step: each method's rows, per set of targeting slots, and the rows that
    still need the base layer's output."""

    num_tokens: int
    device: torch.device
    slots_per_kind: Mapping[str, int]
    kinds: dict[str, KindRows]  # every row of each method present in the step
    host: dict[str, HostKindRows]
    _restricted: dict[tuple[str, bytes], KindRows | None] = field(default_factory=dict)
    _base_rows: dict[tuple[tuple[str, bytes], ...], torch.Tensor | None] = field(default_factory=dict)

    def rows(self, kind: str, targets: np.ndarray) -> KindRows | None:
        """The rows of `kind` whose slot has `targets[slot]` True (a projection the slot adapts), or None."""
        host = self.host.get(kind)
        if host is None:
            return None
        key = (kind, targets.tobytes())
        if key not in self._restricted:
            keep = targets[host.bank_slot]
            if keep.all():
                self._restricted[key] = self.kinds[kind]
            elif not keep.any():
                self._restricted[key] = None
            else:
                restricted = restrict(host, keep, self.slots_per_kind[kind])
                self._restricted[key] = device_rows(restricted, self.num_tokens, self.device)
        return self._restricted[key]

    def base_rows(self, replaces: Mapping[str, np.ndarray]) -> torch.Tensor | None:
        """Rows whose base output is still needed when rows of each method in slots with
        `replaces[kind][slot]` True take the layer's whole output; None when that is every row."""
        present = {kind: mask for kind, mask in replaces.items() if kind in self.host}
        if not present:
            return None
        key = tuple((kind, mask.tobytes()) for kind, mask in sorted(present.items()))
        if key not in self._base_rows:
            keep = np.ones(self.num_tokens, dtype=bool)
            for kind, mask in present.items():
                host = self.host[kind]
                keep[host.rows[mask[host.bank_slot]]] = False
            self._base_rows[key] = None if keep.all() else to_device(np.flatnonzero(keep), device=self.device)
        return self._base_rows[key]
