"""The capacity settings of the registered adapter methods, derived from their capacity classes.

Every field `max_<limit>` of a method's capacity class (adapters/<method>/serving.py) is the setting
`max_<kind>_<limit>` and the serve flag `--max-<kind>-<limit>`: unset by default (the field's default
then applies), checked like the field, and described by it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

import typer
from pydantic import Field, create_model
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings

from adapters.registry import registered_methods

Command = TypeVar("Command", bound=Callable[..., Any])


@dataclass(frozen=True)
class CapacitySetting:
    name: str  # max_<kind>_<limit>
    field: FieldInfo  # the capacity class's field it sets

    @property
    def description(self) -> str:
        return f"{(self.field.description or '').rstrip('.')} (default {self.field.default})."

    @property
    def annotation(self) -> Any:
        """The field's type and constraints, or None."""
        return Annotated[self.field.annotation, *self.field.metadata] | None


def setting_name(kind: str, field: str) -> str:
    """The setting of capacity field `field` of method `kind`."""
    return f"max_{kind}_{field.removeprefix('max_')}"


def capacity_settings() -> list[CapacitySetting]:
    return [
        CapacitySetting(setting_name(kind, name), field)
        for kind, method in registered_methods().items()
        for name, field in method.serving.capacity_cls.model_fields.items()
    ]


CapacitySettings = create_model(
    "CapacitySettings",
    __base__=BaseSettings,
    **{s.name: (s.annotation, Field(default=None, description=s.description)) for s in capacity_settings()},
)


def capacity_flags(after: str) -> Callable[[Command], Command]:
    """Give a typer command that takes `**capacity` one option per capacity setting, placed after its
    parameter `after`; typer reads the signature set here, and the options' values arrive in `capacity`."""

    def add_flags(command: Command) -> Command:
        signature = inspect.signature(command, eval_str=True)
        params = [p for p in signature.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
        at = [p.name for p in params].index(after) + 1
        flags = [
            inspect.Parameter(
                s.name,
                inspect.Parameter.POSITIONAL_OR_KEYWORD,
                default=None,
                annotation=Annotated[s.field.annotation | None, typer.Option(help=s.description)],
            )
            for s in capacity_settings()
        ]
        command.__signature__ = signature.replace(parameters=[*params[:at], *flags, *params[at:]])  # type: ignore[attr-defined]
        return command

    return add_flags
