"""Prometheus metrics: per adapter set and task latency histograms, token counters, residency gauges.

Every orthoserve series lives in a `CollectorRegistry` owned by one `ServingMetrics`, so several apps
(or tests) in one process never collide. `GET /metrics` renders it (with the server process's
`process_*` and `python_*` metrics), followed by the `vllm:` series: those vLLM's engine logger
publishes in the process-global registry (queue, running, KV cache, latency histograms) and the LoRA
series of the model-server protocol, published from the adapter registry (`server.lora_metrics`).
Routers and vLLM's dashboards read `vllm:` names from the API's own `/metrics`, so they are kept
there under vLLM's names. Prometheus' linter (`promtool check metrics`) reserves `:` for recording
rules and flags exactly those names; orthoserve's own families stay lint-clean, and
`GET /metrics/vllm` still serves the `vllm:` series alone.

Labels. Request metrics carry `set` and `task` from the request's resolved target
(`RouteTarget.metric_labels`; `set="base", task="base"` for the base model). A request that failed
before it resolved to a target (unknown set or task, malformed body) is counted under
`set="_unknown", task="_unknown"`.

Label folding (bounded cardinality). At most `max_tasks` distinct (set, task) pairs get their own
series, first come first served for the lifetime of the process; a request of any later pair is
counted under its set with `task="_other"`. The reserved pairs (base, base) and
(_unknown, _unknown) and the folded (set, _other) pairs do not count against the limit, so a
request metric has at most max_tasks + (sets ever served) + 2 label pairs.

Clocks. Two clock domains are used and never mixed within one difference:
- the server's monotonic clock (`time.monotonic()`, stamped by `server.lifecycle`): e2e latency
  (request arrival at the engine service to its end, i.e. after the last token was handed to the
  client), time to first token (arrival to the first output carrying a token reaching the server)
  and inter-token latency (between consecutive outputs; an output that carries k tokens, because the
  server fell behind the engine or the request has several choices, spreads its gap over them).
- vLLM's engine-core monotonic timestamps on `RequestOutput.metrics` (`queued_ts`, `scheduled_ts`,
  `first_token_ts`, `last_token_ts`; populated only when the engine logs stats): queue, prefill and
  decode time. vLLM's `arrival_time` is wall-clock time and is not used.

Latency histograms describe requests that completed (`outcome="ok"`); cancelled and failed requests
are counted in `orthoserve_requests_total` and their generated tokens in the token counters.
Requests refused by admission control never reach the engine: they are counted with
`outcome="rejected"`, under their set (if it is resident) and `task="_unknown"`.

Running/waiting gauges come from the server's own request tracking: a request is *waiting* from its
arrival until its first output token reaches the server (queueing and prefill), and *running* from
then until it ends, whatever the outcome.
"""

from __future__ import annotations

import math
import threading
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Protocol

from prometheus_client import (
    CONTENT_TYPE_PLAIN_0_0_4,
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from router.registry import AdapterRegistry
from router.target import RouteTarget
from server.lifecycle import RequestRecord
from server.lora_metrics import PUBLISHED_NAMES, LoraProtocolMetrics

DEFAULT_LATENCY_BUCKETS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 60.0, 120.0,
)
DEFAULT_MAX_TASKS = 256
SWAP_IN_BUCKETS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0,
    2.5, 5.0, 10.0,
)  # fmt: skip
"""Swap-ins take milliseconds to a few hundred: finer buckets than request latencies, so that
quantiles read from them (as `histogram_quantile` does) are worth reporting."""

BASE_LABEL = "base"
UNKNOWN_LABEL = "_unknown"
OTHER_TASK_LABEL = "_other"
_RESERVED_PAIRS = ((BASE_LABEL, BASE_LABEL), (UNKNOWN_LABEL, UNKNOWN_LABEL))


class EngineRequestStats(Protocol):
    """vLLM's per-request stats (`RequestOutput.metrics`); all four are engine-core monotonic times."""

    queued_ts: float
    scheduled_ts: float
    first_token_ts: float
    last_token_ts: float


def parse_buckets(text: str) -> tuple[float, ...]:
    """Parse a comma-separated list of histogram bucket upper bounds in seconds ("0.001,0.01,0.1")."""
    try:
        bounds = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ValueError(f"histogram buckets must be comma-separated numbers, got {text!r}") from None
    if not bounds:
        raise ValueError("histogram buckets must list at least one upper bound")
    if not all(math.isfinite(bound) and bound > 0 for bound in bounds):
        raise ValueError(f"histogram buckets must be finite and positive, got {text!r}")
    if any(low >= high for low, high in zip(bounds, bounds[1:])):
        raise ValueError(f"histogram buckets must be strictly increasing, got {text!r}")
    return bounds


class TaskLabels:
    """First-come admission of (set, task) label pairs, folding the overflow into task="_other"."""

    def __init__(self, max_tasks: int) -> None:
        if max_tasks < 1:
            raise ValueError(f"max_tasks must be at least 1, got {max_tasks}")
        self.max_tasks = max_tasks
        self._admitted: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    def resolve(self, set_name: str, task: str) -> tuple[str, str]:
        pair = (set_name, task)
        if pair in _RESERVED_PAIRS or pair in self._admitted:
            return pair
        with self._lock:
            if len(self._admitted) < self.max_tasks:
                self._admitted.add(pair)
                return pair
        return set_name, OTHER_TASK_LABEL

    @property
    def admitted(self) -> int:
        return len(self._admitted)


class ServingMetrics:
    """All orthoserve metrics, and one method per lifecycle event the server reports."""

    def __init__(
        self,
        *,
        max_tasks: int = DEFAULT_MAX_TASKS,
        buckets: Sequence[float] = DEFAULT_LATENCY_BUCKETS,
        engine_registry: CollectorRegistry | None = None,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            self.registry.register(collector)
        self.labels = TaskLabels(max_tasks)
        self.lora = LoraProtocolMetrics()
        engine_families = () if engine_registry is None else (_PrefixedFamilies(engine_registry, "vllm:", PUBLISHED_NAMES),)
        self._vllm = _Chained((*engine_families, self.lora))
        self._everything = _Chained((self.registry, self._vllm))
        task_labels = ("set", "task")

        def histogram(name: str, documentation: str, labels: Sequence[str] = task_labels) -> Histogram:
            return Histogram(name, documentation, labels, buckets=tuple(buckets), registry=self.registry)

        self.e2e_latency = histogram(
            "orthoserve_e2e_request_latency_seconds", "Request arrival to last token (server clock)."
        )
        self.time_to_first_token = histogram(
            "orthoserve_time_to_first_token_seconds", "Request arrival to first token (server clock)."
        )
        self.inter_token_latency = histogram(
            "orthoserve_inter_token_latency_seconds", "Time between consecutive output tokens (server clock)."
        )
        self.queue_time = histogram(
            "orthoserve_request_queue_time_seconds", "Engine queued to first scheduled (engine clock)."
        )
        self.prefill_time = histogram(
            "orthoserve_request_prefill_time_seconds", "Engine first scheduled to first token (engine clock)."
        )
        self.decode_time = histogram(
            "orthoserve_request_decode_time_seconds", "Engine first token to last token (engine clock)."
        )
        self.requests = Counter(
            "orthoserve_requests", "Requests by outcome.", (*task_labels, "outcome"), registry=self.registry
        )
        self.prompt_tokens = Counter(
            "orthoserve_prompt_tokens", "Prompt tokens processed.", task_labels, registry=self.registry
        )
        self.generation_tokens = Counter(
            "orthoserve_generation_tokens", "Output tokens generated.", task_labels, registry=self.registry
        )
        self.running = Gauge(
            "orthoserve_requests_running", "Requests that have produced a token and not ended.", registry=self.registry
        )
        self.waiting = Gauge(
            "orthoserve_requests_waiting", "Requests accepted that have not produced a token yet.",
            registry=self.registry,
        )
        self.sets_resident = Gauge(
            "orthoserve_adapter_sets_resident", "Adapter-set versions registered (engine slot, host copy or disk).", registry=self.registry
        )
        self.set_bytes = Gauge(
            "orthoserve_adapter_set_bytes", "Engine bytes held by an adapter set's resident versions.", ("set",),
            registry=self.registry,
        )
        self.set_info = Gauge(
            "orthoserve_adapter_set_info", "Resident adapter-set versions (value 1).", ("set", "kind", "version"),
            registry=self.registry,
        )
        self.set_load_seconds = histogram(
            "orthoserve_adapter_set_load_seconds", "Adapter-set load time, validation included.", ("kind",)
        )
        self.set_load_failures = Counter(
            "orthoserve_adapter_set_load_failures", "Failed adapter-set loads by error code.", ("code",),
            registry=self.registry,
        )
        self.swap_ins = Counter(
            "orthoserve_adapter_swap_ins", "Set versions brought into an engine slot, by where from (host, disk).",
            ("kind", "source"), registry=self.registry,
        )
        self.evictions = Counter(
            "orthoserve_adapter_evictions", "Set versions evicted from an engine slot, by where to (host, disk).",
            ("kind", "to"), registry=self.registry,
        )
        self.swap_in_seconds = Histogram(
            "orthoserve_adapter_swap_in_seconds",
            "Time to bring a set version into an engine slot: the engine call that moves it, waiting for the step under way included.",
            ("kind", "source"), buckets=SWAP_IN_BUCKETS, registry=self.registry,
        )
        self._resident: dict[str, dict[int, int]] = defaultdict(dict)  # set → version → bytes

    # -- requests -------------------------------------------------------------------------------

    def label_values(self, target: RouteTarget | None) -> tuple[str, str]:
        """(set, task) label values for a target after folding; None means it never resolved."""
        if target is None:
            return UNKNOWN_LABEL, UNKNOWN_LABEL
        return self.labels.resolve(*target.metric_labels)

    # `server.lifecycle.RequestObserver`: the engine service reports every request through these.

    def on_arrival(self, request: RequestRecord) -> None:
        self.waiting.inc()

    def on_first_token(self, request: RequestRecord) -> None:
        self.waiting.dec()
        self.running.inc()

    def request_rejected(self, set_name: str) -> None:
        """A request refused by admission control before it reached the engine (its task is not resolved)."""
        labels = (BASE_LABEL, BASE_LABEL) if set_name == BASE_LABEL else (set_name, UNKNOWN_LABEL)
        self.requests.labels(*labels, "rejected").inc()

    def on_finish(self, request: RequestRecord) -> None:
        (self.running if request.first_token_time is not None else self.waiting).dec()
        labels = self.label_values(request.target)
        self.requests.labels(*labels, request.outcome).inc()
        self.prompt_tokens.labels(*labels).inc(request.prompt_tokens)
        self.generation_tokens.labels(*labels).inc(request.generated_tokens)
        if request.outcome == "ok":
            self._observe_server_times(labels, request)
            self._observe_engine_times(labels, request.engine_stats)

    def _observe_server_times(self, labels: tuple[str, str], request: RequestRecord) -> None:
        if request.finish_time is not None:
            self.e2e_latency.labels(*labels).observe(request.finish_time - request.arrival_time)
        if request.first_token_time is not None:
            self.time_to_first_token.labels(*labels).observe(request.first_token_time - request.arrival_time)
        itl = self.inter_token_latency.labels(*labels)
        for (previous, _), (arrived, tokens) in zip(request.output_times, request.output_times[1:]):
            # An output carrying several tokens (the server fell behind the engine) spreads its gap.
            for _ in range(tokens):
                itl.observe((arrived - previous) / tokens)

    def _observe_engine_times(self, labels: tuple[str, str], stats: Sequence[EngineRequestStats]) -> None:
        # A request with several prompts is several engine requests: take the first event of each
        # kind and the last token over all of them. A zero timestamp is an event never recorded.
        def first(values: Iterable[float]) -> float:
            return min((value for value in values if value), default=0.0)

        queued = first(s.queued_ts for s in stats)
        scheduled = first(s.scheduled_ts for s in stats)
        first_token = first(s.first_token_ts for s in stats)
        last_token = max((s.last_token_ts for s in stats), default=0.0)
        if queued and scheduled:
            self.queue_time.labels(*labels).observe(scheduled - queued)
        if scheduled and first_token:
            self.prefill_time.labels(*labels).observe(first_token - scheduled)
        if first_token and last_token:
            self.decode_time.labels(*labels).observe(last_token - first_token)

    # -- adapter-set residency ------------------------------------------------------------------

    def set_loaded(self, set_name: str, kind: str, version: int, nbytes: int, seconds: float) -> None:
        self.set_load_seconds.labels(kind).observe(seconds)
        self._resident[set_name][version] = nbytes
        self.set_info.labels(set_name, kind, str(version)).set(1)
        self._publish_residency(set_name)

    def set_unloaded(self, set_name: str, kind: str, version: int) -> None:
        versions = self._resident.get(set_name, {})
        if versions.pop(version, None) is None:
            return
        self.set_info.remove(set_name, kind, str(version))
        self._publish_residency(set_name)

    def set_load_failed(self, kind: str | None, code: str) -> None:
        """Count a failed load by its error `code`; `kind` is None when validation failed before it was known."""
        self.set_load_failures.labels(code).inc()

    def swapped_in(self, kind: str, source: str, seconds: float) -> None:
        self.swap_ins.labels(kind, source).inc()
        self.swap_in_seconds.labels(kind, source).observe(seconds)

    def evicted(self, kind: str, to: str) -> None:
        self.evictions.labels(kind, to).inc()

    def _publish_residency(self, set_name: str) -> None:
        versions = self._resident[set_name]
        if versions:
            self.set_bytes.labels(set_name).set(sum(versions.values()))
        else:
            del self._resident[set_name]
            self.set_bytes.remove(set_name)
        self.sets_resident.set(sum(len(versions) for versions in self._resident.values()))

    # -- exposition -----------------------------------------------------------------------------

    content_type = CONTENT_TYPE_PLAIN_0_0_4  # the text format every Prometheus version reads

    def watch_registry(self, registry: AdapterRegistry) -> None:
        """Publish the adapter registry's residency as vLLM's LoRA series from now on."""
        self.lora.attach(registry)

    def render(self) -> bytes:
        """The text exposition of orthoserve's metrics, then every `vllm:` series."""
        return generate_latest(self._everything)

    def render_engine(self) -> bytes:
        """The text exposition of the `vllm:` series alone: vLLM's engine metrics and the LoRA series."""
        return generate_latest(self._vllm)


class _PrefixedFamilies:
    """The metric families of a registry whose names start with a prefix, less some replaced names."""

    def __init__(self, registry: Collector, prefix: str, replaced: frozenset[str] = frozenset()) -> None:
        self._registry = registry
        self._prefix = prefix
        self._replaced = replaced

    def collect(self) -> Iterable[Metric]:
        return (
            family
            for family in self._registry.collect()
            if family.name.startswith(self._prefix) and family.name not in self._replaced
        )


class _Chained:
    """Several collectors rendered as one, in order."""

    def __init__(self, collectors: Sequence[Collector]) -> None:
        self._collectors = tuple(collectors)

    def collect(self) -> Iterable[Metric]:
        for collector in self._collectors:
            yield from collector.collect()
