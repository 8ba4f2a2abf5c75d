"""`manifest.json` of an adapter set: what it is, for which base, with which tasks and tensors.

Parsing checks the fields in the order that gives the most useful error first: format version,
kind, task list, then the full schema and the method's hyper-parameters, each failure a typed error
naming the field.
"""

from __future__ import annotations

import collections

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from adapters.errors import ManifestInvalid, TaskListInvalid, UnsupportedVersion
from adapters.registry import MethodConfig, MethodSpec, get_method, registered_methods

FORMAT_VERSION = 1
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
ProjectionName = Literal["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class TensorRecord(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    shape: tuple[int, ...]
    dtype: str


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    format_version: int
    name: str = Field(pattern=NAME_PATTERN.pattern, description="Set name (letters, digits, . _ -).")
    kind: str
    base_fingerprint: str = Field(min_length=8, description="Fingerprint of the base model the set was made for.")
    num_layers: int = Field(ge=1)
    target_modules: tuple[ProjectionName, ...] = Field(min_length=1)
    hyper_parameters: dict[str, Any]
    tasks: tuple[str, ...] = Field(min_length=1)
    tensors: dict[str, TensorRecord]
    provenance: dict[str, str] = Field(default_factory=dict, description="How the set was made (init, importer).")

    @field_validator("target_modules")
    @classmethod
    def _unique_targets(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(value)) != len(value):
            raise ValueError(f"target_modules repeats a projection: {list(value)}")
        return value

    def method(self) -> MethodSpec:
        return get_method(self.kind)

    def method_config(self) -> MethodConfig:
        return parse_method_config(self.kind, self.hyper_parameters)


def check_task_names(tasks: Any) -> list[str]:
    if not isinstance(tasks, list) or not tasks:
        raise TaskListInvalid("The manifest field 'tasks' must be a non-empty list of task names.", field="tasks")
    for task in tasks:
        if not isinstance(task, str) or not NAME_PATTERN.match(task):
            raise TaskListInvalid(
                f"Task name {task!r} is invalid: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit.",
                field="tasks",
            )
    duplicates = sorted(task for task, count in collections.Counter(tasks).items() if count > 1)
    if duplicates:
        raise TaskListInvalid(f"The task list repeats {', '.join(duplicates)}.", field="tasks")
    return tasks


def parse_method_config(kind: str, hyper_parameters: dict[str, Any]) -> MethodConfig:
    method = get_method(kind)
    try:
        return method.config_cls.model_validate({**hyper_parameters, "kind": kind})
    except ValidationError as error:
        raise ManifestInvalid(
            f"Invalid hyper-parameters for a {kind} set: {_describe(error, 'hyper_parameters')}",
            field=_first_field(error, "hyper_parameters"),
        ) from error


def parse_manifest(raw: Any) -> tuple[Manifest, MethodConfig]:
    """Validate a decoded manifest.json; returns it with the method's typed hyper-parameters."""
    if not isinstance(raw, dict):
        raise ManifestInvalid("manifest.json must hold a JSON object.")
    if "format_version" not in raw:
        raise ManifestInvalid("manifest.json has no 'format_version'.", field="format_version")
    if raw["format_version"] != FORMAT_VERSION:
        raise UnsupportedVersion(
            f"Adapter format version {raw['format_version']!r} is not supported; this orthoserve reads version {FORMAT_VERSION}.",
            field="format_version",
        )
    if not isinstance(raw.get("kind"), str):
        raise ManifestInvalid(f"manifest.json has no 'kind' ({', '.join(registered_methods())}).", field="kind")
    method = get_method(raw["kind"])
    tasks = check_task_names(raw.get("tasks"))
    try:
        manifest = Manifest.model_validate(raw)
    except ValidationError as error:
        raise ManifestInvalid(f"manifest.json is invalid: {_describe(error)}", field=_first_field(error)) from error
    config = parse_method_config(manifest.kind, manifest.hyper_parameters)
    method.check_tasks(config, tasks)
    return manifest, config


def hyper_parameters_of(config: MethodConfig) -> dict[str, Any]:
    return config.model_dump(exclude={"kind"})


def _first_field(error: ValidationError, prefix: str = "") -> str:
    loc = ".".join(str(part) for part in error.errors()[0]["loc"])
    return f"{prefix}.{loc}" if prefix else loc


def _describe(error: ValidationError, prefix: str = "") -> str:
    parts = []
    for item in error.errors():
        loc = ".".join(str(part) for part in item["loc"])
        parts.append(f"{prefix + '.' if prefix else ''}{loc}: {item['msg']}")
    return "; ".join(parts)
