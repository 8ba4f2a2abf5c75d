"""Tensor names inside an adapter set: `layers.{i}.{proj}.{param}`."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

from adapters.base_model import PROJECTIONS, BaseModelInfo

TENSOR_NAME = re.compile(r"^layers\.(\d+)\.(" + "|".join(PROJECTIONS) + r")\.([A-Za-z_]+)$")


def tensor_name(layer: int, proj: str, param: str) -> str:
    return f"layers.{layer}.{proj}.{param}"


def per_module_shapes(
    base: BaseModelInfo,
    target_modules: Iterable[str],
    module_shapes: Callable[[int, int, int], dict[str, tuple[int, ...]]],
) -> dict[str, tuple[int, ...]]:
    """Expand `module_shapes(out, in, d) -> {param: shape}` over every layer and targeted projection."""
    shapes: dict[str, tuple[int, ...]] = {}
    for layer in range(base.num_layers):
        for proj in target_modules:
            out_features, in_features = base.shape(proj)
            for param, shape in module_shapes(out_features, in_features, base.rank(proj)).items():
                shapes[tensor_name(layer, proj, param)] = shape
    return shapes
