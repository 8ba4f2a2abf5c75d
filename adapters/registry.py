"""Adapter methods by name, discovered rather than listed.

A method is one folder: a package `adapters/<name>/` whose `method.py` defines `METHOD`, a `MethodSpec`.
Methods of other distributions are found through the entry-point group `orthoserve.methods`, each entry
naming its method and pointing at its spec (`toy = "toy_method.method:METHOD"`). A spec is everything
the format, the reference, the engine and training need to know about a method; nothing outside the
method folder branches on the kind.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict

from adapters.errors import MethodRegistrationError, UnknownKind
from adapters.serving.bank import MethodServing
from adapters.training.method_training import MethodTraining

ENTRY_POINT_GROUP = "orthoserve.methods"
_METHOD_NAME = re.compile(r"^[a-z][a-z0-9_]{1,31}$")
_FOLDERS = Path(__file__).parent
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
    title: str  # how messages and help name the method ("MoORE")
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
    training: MethodTraining | None = None  # None: sets of this method are made or imported, not trained
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
    if name not in _METHODS:
        _discover()  # again: the method may have been installed since
    if name not in _METHODS:
        raise UnknownKind(
            f"Unknown adapter kind '{name}'; known kinds: {', '.join(sorted(_METHODS))}.", field="kind"
        )
    return _METHODS[name]


def registered_methods() -> Mapping[str, MethodSpec]:
    """Every method found: the folders in name order, then other distributions' by entry-point name."""
    _discover_once()
    return dict(_METHODS)


@functools.cache
def _discover_once() -> None:
    _discover()


def _discover() -> None:
    """Register every method not registered yet. Loading a spec twice gives the same object (modules
    are imported once), so a second pass registers only methods installed since the first."""
    folders = sorted(path.parent.name for path in _FOLDERS.glob("*/method.py"))
    found = [(name, lambda name=name: importlib.import_module(f"adapters.{name}.method").METHOD) for name in folders]
    entry_points = sorted(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda entry: entry.name)
    found += [(entry.name, entry.load) for entry in entry_points]
    for name, load in found:
        spec = load()
        if spec.name != name:
            raise MethodRegistrationError(f"Method '{name}' is found under that name but its spec is named '{spec.name}'.")
        if _METHODS.get(name) is not spec:
            register_method(spec)
