"""The adapter capacity an engine is started with: per method, how many set versions it holds and the
largest shapes a slot takes. It sizes the banks every worker preallocates, decides the engine options
adapters need, and refuses (507) a set that does not fit, before anything is loaded."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from adapters.manifest import Manifest
from adapters.registry import get_method
from adapters.serving.bank import BankDtype, MethodCapacity, compute_dtype
from router.errors import AdapterCapacityExceeded
from router.ports import SlotLimits
from server.capacity_settings import setting_name
from server.engine.vllm import engine as vllm_engine
from server.engine.worker.adapted_linear import ADAPTED_LINEAR_OP
from server.engine.worker.extension import BANK_DTYPE_KEY, CAPACITY_KEY
from server.settings import Settings

WORKER_EXTENSION = "server.engine.worker.extension.OrthoserveWorkerExtension"
_MIN_BATCHED_TOKENS = 2048


@dataclass(frozen=True)
class AdapterCapacity:
    methods: Mapping[str, MethodCapacity]  # kind → capacity; no entry: the engine serves no such sets
    bank_dtype: BankDtype = "auto"

    @classmethod
    def build(cls, fields: Mapping[str, Mapping[str, Any]], bank_dtype: BankDtype = "auto") -> AdapterCapacity:
        return cls({kind: get_method(kind).serving.capacity_cls(**values) for kind, values in fields.items()}, bank_dtype)

    @property
    def enabled(self) -> bool:
        return bool(self.methods)

    def engine_options(self, max_model_len: int) -> dict[str, Any]:
        """Engine arguments for this capacity: none without adapters (the stock engine); otherwise the
        capacity for the workers, a compilation that never captures the adapter op in a graph (it
        reads each step's routing on the host, which a replayed CUDA graph would not), and, with
        BADIT capacity, whole-prompt prefill."""
        if not self.enabled:
            return {}
        options: dict[str, Any] = {
            "worker_extension_cls": WORKER_EXTENSION,
            "additional_config": {
                CAPACITY_KEY: {kind: c.model_dump() for kind, c in self.methods.items()},
                BANK_DTYPE_KEY: self.bank_dtype,
            },
            "compilation_config": vllm_engine.compilation_outside_graphs([ADAPTED_LINEAR_OP]),
        }
        if any(get_method(kind).serving.whole_prompt_prefill for kind in self.methods):
            options["enable_chunked_prefill"] = False
            options["max_num_batched_tokens"] = max(max_model_len, _MIN_BATCHED_TOKENS)
        return options

    def slot_limits(self) -> dict[str, SlotLimits]:
        """Per method: versions in engine slots at once (its capacity), and the task rows they share."""
        return {kind: SlotLimits(c.max_sets, getattr(c, "max_tasks", 0)) for kind, c in self.methods.items()}

    def check_limits(self, manifest: Manifest) -> None:
        """Raise AdapterCapacityExceeded naming the limit a set of `manifest` exceeds in any slot."""
        kind = manifest.kind
        capacity = self.methods.get(kind)
        if capacity is None:
            raise AdapterCapacityExceeded(f"This server was started without capacity for {kind} sets.")
        config = manifest.method_config()
        for limit, needed, allowed in get_method(kind).serving.capacity_limits(capacity, config, len(manifest.tasks)):
            if needed > allowed:
                raise AdapterCapacityExceeded(f"The {kind} set needs {limit} = {needed}; this server allows {allowed}.")

    def adapter_dtype(self, model_dtype: torch.dtype) -> torch.dtype:
        """Dtype the engine keeps adapter weights in (what a set's footprint is estimated at)."""
        return compute_dtype(torch.device("cpu" if vllm_engine.is_cpu_platform() else "cuda"), model_dtype, self.bank_dtype)


def capacity_from_settings(settings: Settings) -> AdapterCapacity:
    """Capacity for the methods in `adapter_kinds`, when the server can load sets at all (an admin
    API or start-up sets); otherwise none, and the engine is the stock model."""
    if not (settings.admin_token or settings.adapter_sets or settings.adapter_resolver_root):
        return AdapterCapacity({}, settings.adapter_dtype)
    fields = {}
    for kind in settings.adapter_kinds:
        given = {}
        for name in get_method(kind).serving.capacity_cls.model_fields:
            value = getattr(settings, setting_name(kind, name), None)
            if name == "max_sets":
                value = value or settings.max_adapter_sets
            if value is not None:
                given[name] = value
        fields[kind] = given
    return AdapterCapacity.build(fields, settings.adapter_dtype)
