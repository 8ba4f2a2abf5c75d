"""vLLM's LoRA metrics, published from orthoserve's adapter registry (the model-server protocol).

Routers that balance LoRA adapters (the Gateway API Inference Extension / llm-d endpoint picker, vLLM
production-stack) read adapter residency from `vllm:` series. orthoserve has one registry for every
kind (LoRA, MoORE, BADIT), so every set is reported as a LoRA adapter, under every name a request may
use for it: the set name and each `set/task`.

- `vllm:lora_requests_info{max_lora, running_lora_adapters, waiting_lora_adapters}`, value = the unix
  time of the snapshot (routers keep the series with the largest value). `running_lora_adapters`
  lists the names of the published sets in an engine slot; `waiting_lora_adapters` those of the sets
  requests wait for or that are being brought in; `max_lora` is the engine slot count (all kinds).
  vLLM itself lists adapters with requests in flight, so an idle resident adapter vanishes from its
  series; listing what is resident is what the router's scorer expects.
- `vllm:lora_adapter_loaded{adapter_name, level, pinned}` = 1 per name of a published set that is
  loaded: `level="gpu"` in an engine slot, `level="cpu"` a host copy (vLLM's CPU-side cache). A set
  only on disk has no series.
- `vllm:num_gpu_loaded_lora_adapters` / `vllm:num_cpu_loaded_lora_adapters`: sets (not names) at each
  level, comparable with `max_lora`.

A scrape runs in a worker thread while the event loop changes the registry; a snapshot that raced a
change is taken again.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from prometheus_client.metrics_core import GaugeMetricFamily, Metric

from router.registry import AdapterRegistry
from router.resident import ResidentVersion

LORA_REQUESTS_INFO = "vllm:lora_requests_info"
LORA_ADAPTER_LOADED = "vllm:lora_adapter_loaded"
NUM_GPU_LOADED = "vllm:num_gpu_loaded_lora_adapters"
NUM_CPU_LOADED = "vllm:num_cpu_loaded_lora_adapters"
# vLLM's own engine logger may publish these; orthoserve's replace them so no name is emitted twice.
PUBLISHED_NAMES = frozenset({LORA_REQUESTS_INFO, LORA_ADAPTER_LOADED, NUM_GPU_LOADED, NUM_CPU_LOADED})

_SNAPSHOT_TRIES = 5


def request_names(entry: ResidentVersion) -> list[str]:
    """Every `model` a request may name to reach this set: the set and each `set/task`."""
    return [entry.name, *(f"{entry.name}/{task}" for task in entry.tasks)]


@dataclass(frozen=True)
class ResidencySnapshot:
    max_lora: int
    in_slot: tuple[ResidentVersion, ...]
    waiting: tuple[ResidentVersion, ...]
    host: tuple[ResidentVersion, ...]

    @classmethod
    def of(cls, registry: AdapterRegistry) -> ResidencySnapshot:
        published = {id(entry) for entry in registry.published()}
        versions = [entry for entry in registry.resident() if id(entry) in published]
        waiting_ids = {id(entry) for entry in registry.slots.waiting()}
        return cls(
            max_lora=sum(limits.slots for limits in registry.slots.limits.values()),
            in_slot=tuple(entry for entry in versions if entry.residency == "slot"),
            waiting=tuple(entry for entry in versions if entry.residency != "slot" and id(entry) in waiting_ids),
            host=tuple(entry for entry in versions if entry.residency == "host"),
        )


class LoraProtocolMetrics:
    """A prometheus_client collector of the LoRA series, reading the registry at each scrape."""

    def __init__(self) -> None:
        self._registry: AdapterRegistry | None = None

    def attach(self, registry: AdapterRegistry) -> None:
        self._registry = registry

    def collect(self) -> Iterator[Metric]:
        if self._registry is None:
            return iter(())
        return iter(_families(self._snapshot(self._registry), time.time()))

    def _snapshot(self, registry: AdapterRegistry) -> ResidencySnapshot:
        for _ in range(_SNAPSHOT_TRIES - 1):
            try:
                return ResidencySnapshot.of(registry)
            except RuntimeError:  # a dict changed size under the iteration: take it again
                continue
        return ResidencySnapshot.of(registry)


def _families(snapshot: ResidencySnapshot, now: float) -> Iterable[Metric]:
    info = GaugeMetricFamily(
        LORA_REQUESTS_INFO,
        "Adapters in engine slots and adapters being brought in (every adapter-set name and set/task); "
        "value: unix time of the snapshot.",
        labels=("max_lora", "running_lora_adapters", "waiting_lora_adapters"),
    )
    info.add_metric((str(snapshot.max_lora), _names(snapshot.in_slot), _names(snapshot.waiting)), now)
    loaded = GaugeMetricFamily(
        LORA_ADAPTER_LOADED,
        "Loaded adapters (value 1): level gpu = in an engine slot, cpu = a host copy.",
        labels=("adapter_name", "level", "pinned"),
    )
    for level, entries in (("gpu", snapshot.in_slot), ("cpu", snapshot.host)):
        for entry in entries:
            for name in request_names(entry):
                loaded.add_metric((name, level, str(entry.pinned).lower()), 1.0)
    yield info
    yield loaded
    yield GaugeMetricFamily(NUM_GPU_LOADED, "Adapter sets in engine slots.", value=len(snapshot.in_slot))
    yield GaugeMetricFamily(NUM_CPU_LOADED, "Adapter sets held as host copies.", value=len(snapshot.host))


def _names(entries: Iterable[ResidentVersion]) -> str:
    return ",".join(name for entry in sorted(entries, key=lambda e: e.name) for name in request_names(entry))
