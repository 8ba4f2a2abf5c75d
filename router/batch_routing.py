"""Per-step routing metadata: which rows of a batched forward pass belong to which adapter slot and task.

Built once per engine step from the scheduled requests and shared by every adapted layer of the model,
the way multi-LoRA servers share one token→adapter mapping. Layers never see requests or tag strings,
only these index tensors.

A request contributes one contiguous *segment* of rows (its scheduled tokens this step: the whole
prompt at prefill, one token per decode step). BADIT averages its router input over a segment.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

ROUTING_KEY = "orthoserve"
"""Key of a request's routing entry in vLLM's `SamplingParams.extra_args`."""


@dataclass(frozen=True)
class RequestRoute:
    """The routing entry one request carries into the engine (None in extra_args means base)."""

    slot: int
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
class SlotRows:
    """The rows of one adapter slot in this step."""

    slot: int
    rows: torch.Tensor  # (n,) int64 row indices into the batch
    task_index: torch.Tensor  # (n,) int64 task of each row
    segment: torch.Tensor  # (n,) int64 request segment of each row, 0..num_segments-1
    num_segments: int
    is_prefix: bool  # rows are exactly 0..n-1: layers can use the batch without gathering


@dataclass(frozen=True)
class BatchRouting:
    num_tokens: int
    slots: tuple[SlotRows, ...]  # in order of first appearance in the batch

    @property
    def has_adapters(self) -> bool:
        return bool(self.slots)


def build_batch_routing(
    routes: Sequence[RequestRoute | None], num_scheduled_tokens: Sequence[int] | np.ndarray
) -> BatchRouting:
    """Expand per-request routes to per-row index tensors, grouped by slot.

    `routes[i]` and `num_scheduled_tokens[i]` describe the i-th request in batch order; its rows are
    the next `num_scheduled_tokens[i]` rows of the flattened batch.
    """
    counts = np.asarray(num_scheduled_tokens, dtype=np.int64)
    starts = np.concatenate(([0], np.cumsum(counts)[:-1])) if len(counts) else counts
    per_slot: dict[int, list[tuple[int, int, int]]] = {}
    for route, start, count in zip(routes, starts, counts):
        if route is None or count == 0:
            continue
        per_slot.setdefault(route.slot, []).append((int(start), int(count), route.task_index))

    slots = []
    for slot, segments in per_slot.items():
        lengths = np.array([count for _, count, _ in segments], dtype=np.int64)
        rows = np.concatenate([np.arange(start, start + count) for start, count, _ in segments])
        tasks = np.repeat(np.array([task for _, _, task in segments], dtype=np.int64), lengths)
        segment_ids = np.repeat(np.arange(len(segments), dtype=np.int64), lengths)
        slots.append(
            SlotRows(
                slot=slot,
                rows=torch.from_numpy(rows),
                task_index=torch.from_numpy(tasks),
                segment=torch.from_numpy(segment_ids),
                num_segments=len(segments),
                is_prefix=bool(rows[0] == 0 and rows[-1] == len(rows) - 1),
            )
        )
    return BatchRouting(num_tokens=int(counts.sum()), slots=tuple(slots))
