"""Adapter methods by name: each method folder registers one `MethodSpec` when imported.

A spec is everything the format, the reference and the CLI need to know about a method; nothing
outside the method folder branches on the kind.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict

from adapters.errors import MethodRegistrationError, UnknownKind
from adapters.serving.bank import MethodServing

_METHOD_NAME = re.compile(r"^[a-z][a-z0-9_]{1,31}$")
InitMode = Literal["paper", "random"]


class MethodConfig(BaseModel):
    """Hyper-parameters of one method; stored under `hyper_parameters` in a set's manifest."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class BaseProjection:
    """What a reference layer may use of the base linear it replaces: W and, lazily, its SVD."""

    weight: torch.Tensor  # (out, in)
    factors: Callable[[], Any]  # () -> SvdFactors, loaded from the shared cache on first use


@dataclass(frozen=True)
class MethodSpec:
    name: str
    config_cls: type[MethodConfig]
    # (config, base, target_modules, n_tasks) -> {tensor name: shape}
    expected_tensors: Callable[..., dict[str, tuple[int, ...]]]
    # (tensors of the set, layer, proj, config) -> typed per-module view
    module_view: Callable[..., Any]
    # (config, tasks) -> None, raises TaskListInvalid
    check_tasks: Callable[..., None]
    # (name, tensor, config) -> None, raises TensorValueInvalid for method-specific value rules
    check_values: Callable[..., None]
    # (x (n, in), token_mask (n,), module view, task_index, BaseProjection) -> y (n, out), the WHOLE output
    reference_forward: Callable[..., torch.Tensor]
    # (base, config, target_modules, tasks, mode, factors | None, generator) -> {name: tensor}
    initialise: Callable[..., dict[str, torch.Tensor]]
    needs_factors: bool
    default_targets: tuple[str, ...]
    serving: MethodServing
    fp32_params: tuple[str, ...] = ()
    # True when the set routes on the input, so a request need not name a task.
    input_routed: Callable[[Any], bool] = lambda config: False


_METHODS: dict[str, MethodSpec] = {}


def register_method(spec: MethodSpec) -> None:
    if not _METHOD_NAME.match(spec.name):
        raise MethodRegistrationError(f"Method name '{spec.name}' is not a lower-case identifier.")
    if spec.name in _METHODS:
        raise MethodRegistrationError(f"Method '{spec.name}' is already registered.")
    kind_field = spec.config_cls.model_fields.get("kind")
    if kind_field is None or kind_field.default != spec.name:
        raise MethodRegistrationError(f"Config of method '{spec.name}' must have kind = '{spec.name}'.")
    _METHODS[spec.name] = spec


def get_method(name: str) -> MethodSpec:
    _load_builtin_methods()
    if name not in _METHODS:
        raise UnknownKind(
            f"Unknown adapter kind '{name}'; known kinds: {', '.join(sorted(_METHODS))}.", field="kind"
        )
    return _METHODS[name]


def registered_methods() -> Mapping[str, MethodSpec]:
    _load_builtin_methods()
    return dict(_METHODS)


def _load_builtin_methods() -> None:
    # Importing the method packages registers them; imports are cached, so this runs once.
    import adapters.badit  # noqa: F401
    import adapters.lora  # noqa: F401
    import adapters.moore  # noqa: F401
