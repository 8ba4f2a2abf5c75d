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

from adapters.batched.ops import BaditGroup, LoraGroup, MooreGroup, badit_delta, lora_delta, moore_output
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
    ) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.layer_index = layer_index
        self.projections = projections
        self.state = state
        self._base_forward = base_forward
        self._pack_output = pack_output
        self.added_bias = added_bias  # the bias the base layer adds into its output, if any
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
        bias = None
        if base_rows.numel():
            base_y, bias = self._base_forward(self.base_layer, x.index_select(0, base_rows))
            y.index_copy_(0, base_rows, base_y)
        return y, bias

    def _apply_projection(
        self, x: torch.Tensor, y: torch.Tensor, projection: Projection, slots: tuple[SlotRows, ...]
    ) -> None:
        columns = y.narrow(1, projection.start, projection.size)  # view into y
        moore: list[tuple[SlotRows, MooreProjection]] = []
        badit: list[BaditGroup] = []
        lora: list[LoraGroup] = []
        for slot_rows in slots:
            weights = self._weights(slot_rows, projection.name)
            if isinstance(weights, MooreProjection):
                moore.append((slot_rows, weights))
            elif isinstance(weights, BaditProjection):
                badit.append(
                    BaditGroup(weights, slot_rows.rows, slot_rows.task_index, slot_rows.segment, slot_rows.num_segments)
                )
            elif isinstance(weights, LoraProjection):
                lora.append(LoraGroup(weights, slot_rows.rows))
        factors = self.state.factors.get((self.layer_index, projection.name))
        if moore:
            self._apply_moore(x, columns, projection, factors, moore)
        if badit:
            badit_delta(x, badit, columns)
        if lora:
            lora_delta(x, lora, columns)

    def _apply_moore(
        self,
        x: torch.Tensor,
        columns: torch.Tensor,
        projection: Projection,
        factors: ServingFactors,
        entries: list[tuple[SlotRows, MooreProjection]],
    ) -> None:
        rows = torch.cat([slot_rows.rows for slot_rows, _ in entries])
        groups, offset = [], 0
        for slot_rows, weights in entries:
            count = slot_rows.rows.numel()
            local = torch.arange(offset, offset + count, device=x.device)
            groups.append(MooreGroup(weights, local, slot_rows.task_index))
            offset += count
        out = moore_output(x.index_select(0, rows), factors, groups)  # (n, size)
        if self.added_bias is not None:
            out = out + self.added_bias.narrow(0, projection.start, projection.size)
        columns.index_copy_(0, rows, out)
