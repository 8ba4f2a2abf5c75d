"""Prometheus metrics: per adapter set and task latency histograms, token counters, residency gauges.

Every series lives in a `CollectorRegistry` owned by one `ServingMetrics`, so several apps (or tests)
in one process never collide. `GET /metrics` renders it (with the server process's `process_*` and
`python_*` metrics). vLLM's engine logger publishes its own `vllm:`-prefixed metrics in the
process-global registry; they are rendered separately (`GET /metrics/vllm`) because Prometheus'
linter reserves `:` for recording rules and the main endpoint stays lint-clean.

Labels. Request metrics carry `set` and `task` from the request's resolved `RouteTarget`
(`set="base", task="base"` for the base model). Client errors raised before a request resolved to
a target are counted under `set="_unknown", task="_unknown"`.

Label folding (bounded cardinality). At most `max_tasks` distinct (set, task) pairs get their own
series, first come first served for the lifetime of the process; a request of any later pair is
counted under the same set with `task="_other"`. The reserved pairs (base, base) and
(_unknown, _unknown) and the folded (set, _other) pairs do not count against the limit, so the
worst case is max_tasks + resident sets + 2 label pairs per metric.

Clocks. Two clock domains are used and never mixed within one difference:
- the server's monotonic clock (`time.monotonic()`), from the moment a request record is started
  to the arrival of engine outputs at the server: e2e latency, time to first token and inter-token
  latency. These are what a client sees, minus network time. Inter-token latency is observed once
  per output token after the first output; an output that carries k tokens (the server fell behind
  the engine) spreads its gap evenly over them.
- vLLM's engine-core monotonic timestamps on `RequestOutput.metrics` (`queued_ts`, `scheduled_ts`,
  `first_token_ts`, `last_token_ts`; populated only when the engine logs stats): queue, prefill and
  decode time. vLLM's `arrival_time` is wall-clock time and is not used.

Latency histograms describe requests that completed (`outcome="ok"`); cancelled and failed requests
are counted in `orthoserve_requests_total` and their generated tokens in the token counters.

Running/waiting gauges come from the server's own request tracking: a request is *waiting* from the
start of its record until its first output token reaches the server (queueing and prefill), and
*running* from then until it ends, whatever the outcome.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from types import TracebackType
from typing import Literal, Protocol

from prometheus_client import (
    CONTENT_TYPE_LATEST,
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

Outcome = Literal["ok", "client_error", "server_error", "cancelled"]

DEFAULT_LATENCY_BUCKETS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 60.0, 120.0,
)
DEFAULT_MAX_TASKS = 256

BASE_LABEL = "base"
UNKNOWN_LABEL = "_unknown"
OTHER_TASK_LABEL = "_other"
_RESERVED_PAIRS = ((BASE_LABEL, BASE_LABEL), (UNKNOWN_LABEL, UNKNOWN_LABEL))


class LabelledTarget(Protocol):
    """What a request resolved to (`router.target.RouteTarget`), as far as metrics care."""

    @property
    def metric_labels(self) -> tuple[str, str]: ...


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
        self._engine_metrics = None if engine_registry is None else _PrefixedFamilies(engine_registry, "vllm:")
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
            "orthoserve_adapter_sets_resident", "Adapter-set versions in engine memory.", registry=self.registry
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
        self._resident: dict[str, dict[int, int]] = defaultdict(dict)  # set → version → bytes

    # -- requests -------------------------------------------------------------------------------

    def label_values(self, target: LabelledTarget | None) -> tuple[str, str]:
        """(set, task) label values for a target after folding; None means it never resolved."""
        if target is None:
            return UNKNOWN_LABEL, UNKNOWN_LABEL
        return self.labels.resolve(*target.metric_labels)

    def start_request(self, target: LabelledTarget, arrived: float | None = None) -> RequestRecord:
        """Begin tracking one request; `arrived` is its `time.monotonic()` arrival, default now."""
        return RequestRecord(self, self.label_values(target), time.monotonic() if arrived is None else arrived)

    def request_rejected(self, target: LabelledTarget | None, outcome: Outcome = "client_error") -> None:
        """Count a request that failed before it was tracked (bad input, unknown adapter set...)."""
        self.requests.labels(*self.label_values(target), outcome).inc()

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

    def _publish_residency(self, set_name: str) -> None:
        versions = self._resident[set_name]
        if versions:
            self.set_bytes.labels(set_name).set(sum(versions.values()))
        else:
            del self._resident[set_name]
            self.set_bytes.remove(set_name)
        self.sets_resident.set(sum(len(versions) for versions in self._resident.values()))

    # -- exposition -----------------------------------------------------------------------------

    content_type = CONTENT_TYPE_LATEST

    def render(self) -> bytes:
        """The text exposition of orthoserve's metrics."""
        return generate_latest(self.registry)

    def render_engine(self) -> bytes:
        """The text exposition of vLLM's own `vllm:` metrics (empty without an engine registry)."""
        return b"" if self._engine_metrics is None else generate_latest(self._engine_metrics)


class _PrefixedFamilies:
    """The metric families of a registry whose names start with a prefix."""

    def __init__(self, registry: Collector, prefix: str) -> None:
        self._registry = registry
        self._prefix = prefix

    def collect(self) -> Iterable[Metric]:
        return (family for family in self._registry.collect() if family.name.startswith(self._prefix))


class RequestRecord:
    """One request's life: gauges while in flight, histograms and counters once it ends.

    Use as a context manager around the request: leaving it unfinished through `CancelledError` or
    `GeneratorExit` (a client that disconnected) counts as cancelled, through any other exception as
    a server error. `finish` is idempotent: only the first call counts.
    """

    def __init__(self, metrics: ServingMetrics, labels: tuple[str, str], arrived: float) -> None:
        self._metrics = metrics
        self.labels = labels
        self._arrived = arrived
        self._first_token_at: float | None = None
        self._last_token_at: float | None = None
        self._token_gaps: list[tuple[float, int]] = []  # (gap to previous output, tokens in it)
        self._tokens_seen = 0
        self._finished = False
        metrics.waiting.inc()

    @property
    def finished(self) -> bool:
        return self._finished

    def tokens_arrived(self, count: int, at: float | None = None) -> None:
        """Record an engine output carrying `count` new tokens, arrived at monotonic time `at`."""
        if count <= 0 or self._finished:
            return
        now = time.monotonic() if at is None else at
        if self._last_token_at is None:
            self._first_token_at = now
            self._metrics.waiting.dec()
            self._metrics.running.inc()
        else:
            self._token_gaps.append((now - self._last_token_at, count))
        self._last_token_at = now
        self._tokens_seen += count

    def finish(
        self,
        outcome: Outcome,
        prompt_tokens: int = 0,
        completion_tokens: int | None = None,
        engine_stats: EngineRequestStats | None = None,
    ) -> None:
        """End the request. `completion_tokens` defaults to the tokens seen by `tokens_arrived`."""
        if self._finished:
            return
        self._finished = True
        metrics, labels = self._metrics, self.labels
        (metrics.running if self._first_token_at is not None else metrics.waiting).dec()
        metrics.requests.labels(*labels, outcome).inc()
        metrics.prompt_tokens.labels(*labels).inc(prompt_tokens)
        generated = self._tokens_seen if completion_tokens is None else completion_tokens
        metrics.generation_tokens.labels(*labels).inc(generated)
        if outcome == "ok":
            self._observe_latencies(engine_stats)

    def _observe_latencies(self, engine_stats: EngineRequestStats | None) -> None:
        metrics, labels = self._metrics, self.labels
        ended = time.monotonic() if self._last_token_at is None else self._last_token_at
        metrics.e2e_latency.labels(*labels).observe(ended - self._arrived)
        if self._first_token_at is not None:
            metrics.time_to_first_token.labels(*labels).observe(self._first_token_at - self._arrived)
        itl = metrics.inter_token_latency.labels(*labels)
        for gap, tokens in self._token_gaps:
            # An output carrying several tokens (the consumer fell behind) spreads its gap over them.
            for _ in range(tokens):
                itl.observe(gap / tokens)
        if engine_stats is not None:
            self._observe_engine_times(engine_stats)

    def _observe_engine_times(self, stats: EngineRequestStats) -> None:
        metrics, labels = self._metrics, self.labels
        # A zero timestamp means the engine never recorded that event (stats logging off).
        if stats.queued_ts and stats.scheduled_ts:
            metrics.queue_time.labels(*labels).observe(stats.scheduled_ts - stats.queued_ts)
        if stats.scheduled_ts and stats.first_token_ts:
            metrics.prefill_time.labels(*labels).observe(stats.first_token_ts - stats.scheduled_ts)
        if stats.first_token_ts and stats.last_token_ts:
            metrics.decode_time.labels(*labels).observe(stats.last_token_ts - stats.first_token_ts)

    def __enter__(self) -> RequestRecord:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._finished:
            return
        # Leaving without `finish` and without an exception is a bug in the caller: count it as ours.
        cancelled = exc_type is not None and issubclass(exc_type, (asyncio.CancelledError, GeneratorExit))
        self.finish("cancelled" if cancelled else "server_error")
