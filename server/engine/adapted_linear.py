"""The layer that stands in for a (possibly fused) base linear inside the engine's model.

For every row of the batch it computes exactly its own request's adapter: MoORE rows get MoORE's whole
output (their base matmul is skipped), BADIT and LoRA rows get the base output plus their change, base
rows get the untouched base layer. With no adapter rows in the step it is the base layer, unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from adapters.batched.ops import BaditGroup, MooreGroup, badit_delta, lora_delta, moore_output
from adapters.batched.weights import (
    BaditProjection,
    ServingFactors,
    LoraProjection,
    MooreProjection,
    ProjectionWeights,
    ResidentSlot,
)
from router.batch_routing import BatchRouting, SlotRows


@dataclass
class WorkerAdapterState:
    """Everything the adapted layers of one worker share: resident slots, base factors, this step's routing."""

    slots: dict[int, ResidentSlot] = field(default_factory=dict)
    factors: dict[tuple[int, str], ServingFactors] = field(default_factory=dict)
    routing: BatchRouting | None = None


@dataclass(frozen=True)
class Projection:
    """One projection packed in a base layer's output columns [start, start + size)."""

    name: str
    start: int
    size: int


class AdaptedLinear(nn.Module):
    def __init__(
        self,
        base_layer: nn.Module,
        layer_index: int,
        projections: list[Projection],
        state: WorkerAdapterState,
        base_forward: Callable[[nn.Module, torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]],
        pack_output: Callable[[nn.Module, torch.Tensor, torch.Tensor | None], object],
        added_bias: torch.Tensor | None,
        returned_bias: torch.Tensor | None,
    ) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.layer_index = layer_index
        self.projections = projections
        self.state = state
        self._base_forward = base_forward
        self._pack_output = pack_output
        self.added_bias = added_bias  # the bias the base layer adds into its output, if any
        self.returned_bias = returned_bias  # the bias it returns beside its output instead, if any
        self.output_size = sum(p.size for p in projections)

    def forward(self, x: torch.Tensor) -> object:
        routing = self.state.routing
        if routing is None or not routing.has_adapters:
            return self.base_layer(x)
        replaced = [rows.rows for rows in routing.slots if self._replaces_all(rows)]
        y, bias = self._base_output(x, replaced)
        for projection in self.projections:
            self._apply_projection(x, y, projection, routing.slots)
        return self._pack_output(self.base_layer, y, bias)

    def _weights(self, slot_rows: SlotRows, projection: str) -> ProjectionWeights | None:
        slot = self.state.slots[slot_rows.slot]
        return slot.projections.get((self.layer_index, projection))

    def _replaces_all(self, slot_rows: SlotRows) -> bool:
        """True when MoORE replaces every projection of this layer for these rows: no base matmul needed."""
        return all(isinstance(self._weights(slot_rows, p.name), MooreProjection) for p in self.projections)

    def _base_output(
        self, x: torch.Tensor, replaced: list[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if not replaced:
            return self._base_forward(self.base_layer, x)
        keep = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
        keep[torch.cat(replaced)] = False
        base_rows = keep.nonzero().squeeze(1)
        y = x.new_empty(x.shape[0], self.output_size)
        bias = self.returned_bias
        if base_rows.numel():
            base_y, bias = self._base_forward(self.base_layer, x.index_select(0, base_rows))
            y.index_copy_(0, base_rows, base_y)
        return y, bias

    def _apply_projection(
        self, x: torch.Tensor, y: torch.Tensor, projection: Projection, slots: tuple[SlotRows, ...]
    ) -> None:
        columns = y.narrow(1, projection.start, projection.size)  # view into y
        moore: list[tuple[SlotRows, MooreProjection]] = []
        deltas: list[tuple[SlotRows, torch.Tensor]] = []
        for slot_rows in slots:
            weights = self._weights(slot_rows, projection.name)
            if isinstance(weights, MooreProjection):
                moore.append((slot_rows, weights))
            elif isinstance(weights, BaditProjection):
                group = BaditGroup(weights, slot_rows.task_index, slot_rows.segment, slot_rows.num_segments)
                deltas.append((slot_rows, badit_delta(self._rows_of(x, slot_rows), group)))
            elif isinstance(weights, LoraProjection):
                deltas.append((slot_rows, lora_delta(self._rows_of(x, slot_rows), weights)))
        if moore:
            factors = self.state.factors[(self.layer_index, projection.name)]
            self._apply_moore(x, columns, projection, factors, moore)
        if deltas:
            columns.add_(self._scatter(x.shape[0], projection.size, deltas))

    @staticmethod
    def _covers(x: torch.Tensor, slot_rows: SlotRows) -> bool:
        """True when these rows are the whole batch, in order: no gather or scatter needed."""
        return slot_rows.is_prefix and slot_rows.rows.numel() == x.shape[0]

    def _rows_of(self, x: torch.Tensor, slot_rows: SlotRows) -> torch.Tensor:
        return x if self._covers(x, slot_rows) else x.index_select(0, slot_rows.rows)

    def _scatter(self, n: int, size: int, deltas: list[tuple[SlotRows, torch.Tensor]]) -> torch.Tensor:
        """Per-slot deltas laid out as one contiguous (n, size) tensor (slots own disjoint rows)."""
        if len(deltas) == 1 and deltas[0][1].shape[0] == n:
            return deltas[0][1]
        out = deltas[0][1].new_zeros(n, size)
        for slot_rows, delta in deltas:
            out.index_copy_(0, slot_rows.rows, delta)
        return out

    def _apply_moore(
        self,
        x: torch.Tensor,
        columns: torch.Tensor,
        projection: Projection,
        factors: ServingFactors,
        entries: list[tuple[SlotRows, MooreProjection]],
    ) -> None:
        if len(entries) == 1 and self._covers(x, entries[0][0]):
            slot_rows, weights = entries[0]
            rows, xs, groups = None, x, [MooreGroup(weights, None, slot_rows.task_index)]
        else:
            rows = torch.cat([slot_rows.rows for slot_rows, _ in entries])
            xs, groups, offset = x.index_select(0, rows), [], 0
            for slot_rows, weights in entries:
                count = slot_rows.rows.numel()
                local = torch.arange(offset, offset + count, device=x.device)
                groups.append(MooreGroup(weights, local, slot_rows.task_index))
                offset += count
        out = moore_output(xs, factors, groups)  # (n, size)
        if self.added_bias is not None:
            out = out + self.added_bias.narrow(0, projection.start, projection.size)
        if rows is None:
            columns.copy_(out)
        else:
            columns.index_copy_(0, rows, out)
