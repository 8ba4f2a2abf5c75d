"""The layer that stands in for a (possibly fused) base linear inside the engine's model.

It is installed when the model loads, before vLLM compiles the model, and its forward is one opaque
custom op (`orthoserve::adapted_linear`), so the compiler treats the whole adapter computation as a
single call: the op reads the step's routing (built before the step, never from device data) and
runs, per method present in the step, one grouped pass per projection. Base rows get the base layer's
output untouched; rows of methods that replace the output (MoORE) skip the base GEMM.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from adapters.serving.bank import ProjectionBank
from server.engine.worker.step_routing import StepRouting


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
        banks: dict[str, dict[str, ProjectionBank]],
        slots_per_kind: dict[str, int],
        routing: Callable[[], StepRouting | None],
        base_forward: Callable[[nn.Module, torch.Tensor], torch.Tensor],
        pack_output: Callable[[nn.Module, torch.Tensor], object],
    ) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.layer_index = layer_index
        self.projections = projections
        self.banks = banks  # kind → projection name → bank
        self.output_size = sum(p.size for p in projections)
        self._routing = routing
        self._base_forward = base_forward
        self._pack_output = pack_output
        # targets[kind][projection][slot]: the slot's set adapts this projection
        self.targets = {kind: {p.name: np.zeros(n, dtype=bool) for p in projections} for kind, n in slots_per_kind.items()}
        self.layer_id = _register(self)

    def forward(self, x: torch.Tensor) -> object:
        return self._pack_output(self.base_layer, torch.ops.orthoserve.adapted_linear(x, self.layer_id))

    def mark(self, kind: str, slot: int, projection: str, adapted: bool) -> None:
        self.targets[kind][projection][slot] = adapted

    def compute(self, x: torch.Tensor) -> torch.Tensor:
        routing = self._routing()
        if routing is None or not routing.kinds:
            return self._base_forward(self.base_layer, x)
        y = self._base_output(x, routing)
        for kind, by_projection in self.banks.items():
            for projection in self.projections:
                rows = routing.rows(kind, self.targets[kind][projection.name])
                if rows is not None:
                    columns = y.narrow(1, projection.start, projection.size)  # view into y
                    by_projection[projection.name].apply(x, columns, rows)
        return y

    def _base_output(self, x: torch.Tensor, routing: StepRouting) -> torch.Tensor:
        keep = routing.base_rows(self._replacing_slots())
        if keep is None:
            return self._base_forward(self.base_layer, x)
        y = x.new_empty(x.shape[0], self.output_size)
        if keep.numel():
            y.index_copy_(0, keep, self._base_forward(self.base_layer, x.index_select(0, keep)))
        return y

    def _replacing_slots(self) -> dict[str, np.ndarray]:
        """Per method whose banks replace the output: slots that adapt every projection of this layer."""
        return {
            kind: np.logical_and.reduce([self.targets[kind][p.name] for p in self.projections])
            for kind, by_projection in self.banks.items()
            if next(iter(by_projection.values())).replaces_base
        }


ADAPTED_LINEAR_OP = "orthoserve::adapted_linear"
"""The custom op every adapted layer's forward is; engines keep it out of captured graphs."""

# Layers by id, for the custom op: compiled graphs carry only the id, the op finds the layer here.
_LAYERS: dict[int, AdaptedLinear] = {}


def _register(layer: AdaptedLinear) -> int:
    layer_id = len(_LAYERS)
    _LAYERS[layer_id] = layer
    return layer_id


@torch.library.custom_op(ADAPTED_LINEAR_OP, mutates_args=())
def adapted_linear(x: torch.Tensor, layer_id: int) -> torch.Tensor:
    return _LAYERS[layer_id].compute(x)


@adapted_linear.register_fake
def _(x: torch.Tensor, layer_id: int) -> torch.Tensor:
    return x.new_empty(x.shape[0], _LAYERS[layer_id].output_size)
