"""What a request's `model` tag resolves to: the base model, or one task of one resident adapter-set version."""

from __future__ import annotations

from dataclasses import dataclass

AdapterKind = str  # the name of a registered adapter method (adapters/registry.py)

BASE_LABEL = "base"


@dataclass(frozen=True)
class RouteTarget:
    """The resolved target of one request.

    `slot` identifies one loaded *version* of a set inside the engine; slots are never reused, so a
    request that started on version 3 keeps computing with version 3 after version 4 is published.
    """

    set_name: str | None = None
    version: int | None = None
    kind: AdapterKind | None = None
    task: str | None = None
    task_index: int = 0
    slot: int | None = None

    @property
    def is_base(self) -> bool:
        return self.slot is None

    @property
    def metric_labels(self) -> tuple[str, str]:
        """(set, task) label values for metrics; base requests are ("base", "base")."""
        if self.is_base:
            return BASE_LABEL, BASE_LABEL
        return self.set_name or "", self.task or ""

    @property
    def version_header(self) -> str | None:
        """Value of the `x-orthoserve-adapter-set` response header (`name@version`), None for base."""
        if self.is_base:
            return None
        return f"{self.set_name}@{self.version}"


BASE_TARGET = RouteTarget()
