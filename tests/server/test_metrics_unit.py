"""ServingMetrics on its own: label folding, bucket configuration, lifecycle accounting, exposition."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.parser import text_string_to_metric_families

from router.target import BASE_TARGET, RouteTarget
from server.engine.vllm.engine import RequestStateStats
from server.lifecycle import Outcome, RequestLifecycle, RequestRecord
from server.metrics import DEFAULT_LATENCY_BUCKETS, ServingMetrics, parse_buckets

LATENCY_HISTOGRAMS = (
    "orthoserve_e2e_request_latency_seconds",
    "orthoserve_time_to_first_token_seconds",
    "orthoserve_inter_token_latency_seconds",
    "orthoserve_request_queue_time_seconds",
    "orthoserve_request_prefill_time_seconds",
    "orthoserve_request_decode_time_seconds",
)
CONTRACT_FAMILIES = {
    **{name: "histogram" for name in LATENCY_HISTOGRAMS},
    "orthoserve_adapter_set_load_seconds": "histogram",
    "orthoserve_requests": "counter",
    "orthoserve_prompt_tokens": "counter",
    "orthoserve_generation_tokens": "counter",
    "orthoserve_adapter_set_load_failures": "counter",
    "orthoserve_requests_running": "gauge",
    "orthoserve_requests_waiting": "gauge",
    "orthoserve_adapter_sets_resident": "gauge",
    "orthoserve_adapter_set_bytes": "gauge",
    "orthoserve_adapter_set_info": "gauge",
}


def task_target(set_name: str, task: str, version: int = 1) -> RouteTarget:
    return RouteTarget(set_name=set_name, version=version, kind="lora", task=task, slot=version)


def sample(metrics: ServingMetrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def families(metrics: ServingMetrics) -> dict[str, object]:
    return {family.name: family for family in text_string_to_metric_families(metrics.render().decode())}


# -- label folding --------------------------------------------------------------------------------


def test_pairs_beyond_the_limit_fold_into_other_keeping_the_set() -> None:
    metrics = ServingMetrics(max_tasks=2)
    assert metrics.label_values(task_target("a", "t1")) == ("a", "t1")
    assert metrics.label_values(task_target("a", "t2")) == ("a", "t2")
    assert metrics.label_values(task_target("a", "t3")) == ("a", "_other")
    assert metrics.label_values(task_target("b", "t1")) == ("b", "_other")
    # Admission is first come, for good: the first pairs keep their own series.
    assert metrics.label_values(task_target("a", "t1", version=2)) == ("a", "t1")
    assert metrics.labels.admitted == 2


def test_base_and_unknown_are_reserved_and_never_fold() -> None:
    metrics = ServingMetrics(max_tasks=1)
    metrics.label_values(task_target("a", "t1"))
    assert metrics.label_values(BASE_TARGET) == ("base", "base")
    assert metrics.label_values(None) == ("_unknown", "_unknown")
    assert metrics.labels.admitted == 1


def test_max_tasks_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_tasks"):
        ServingMetrics(max_tasks=0)


# -- buckets --------------------------------------------------------------------------------------


def test_default_buckets_span_a_millisecond_to_two_minutes_log_spaced() -> None:
    assert DEFAULT_LATENCY_BUCKETS[0] == 0.001 and DEFAULT_LATENCY_BUCKETS[-1] == 120.0
    ratios = [high / low for low, high in zip(DEFAULT_LATENCY_BUCKETS, DEFAULT_LATENCY_BUCKETS[1:])]
    assert all(2.0 <= ratio <= 2.5 for ratio in ratios)


def test_parse_buckets_accepts_a_comma_separated_list() -> None:
    assert parse_buckets("0.005, 0.05,0.5 ,5") == (0.005, 0.05, 0.5, 5.0)


@pytest.mark.parametrize("text", ["", "0.1,abc", "0.1,0.1", "1,0.5", "-1,2", "0,1", "0.1,inf", "nan"])
def test_parse_buckets_rejects_bad_lists(text: str) -> None:
    with pytest.raises(ValueError, match="buckets"):
        parse_buckets(text)


def test_configured_buckets_are_the_exposed_bounds() -> None:
    metrics = ServingMetrics(buckets=parse_buckets("0.01,0.1,1"))
    run_through(metrics, request(BASE_TARGET, "ok"))
    histogram = families(metrics)["orthoserve_time_to_first_token_seconds"]
    bounds = [s.labels["le"] for s in histogram.samples if s.name.endswith("_bucket")]
    assert bounds == ["0.01", "0.1", "1.0", "+Inf"]


# -- request lifecycle ----------------------------------------------------------------------------


def request(
    target: RouteTarget | None,
    outcome: Outcome,
    *,
    arrival: float = 100.0,
    outputs: tuple[tuple[float, int], ...] = ((100.5, 1),),
    finish: float = 101.0,
    prompt_tokens: int = 3,
    engine_stats: tuple[RequestStateStats, ...] = (),
) -> RequestRecord:
    """A request record as the engine service hands it to observers at its finish, with chosen times."""
    return RequestRecord(
        request_id="req-1",
        endpoint="completions",
        model="m",
        stream=False,
        arrival_time=arrival,
        target=target,
        first_token_time=outputs[0][0] if outputs else None,
        finish_time=finish,
        output_times=list(outputs),
        prompt_tokens=prompt_tokens,
        generated_tokens=sum(tokens for _, tokens in outputs),
        outcome=outcome,
        engine_stats=list(engine_stats),
    )


def engine_stats(queued: float, scheduled: float, first: float, last: float) -> RequestStateStats:
    return RequestStateStats(queued_ts=queued, scheduled_ts=scheduled, first_token_ts=first, last_token_ts=last)


def run_through(metrics: ServingMetrics, record: RequestRecord) -> None:
    metrics.on_arrival(record)
    if record.first_token_time is not None:
        metrics.on_first_token(record)
    metrics.on_finish(record)


def test_folded_requests_are_counted_under_other() -> None:
    metrics = ServingMetrics(max_tasks=1)
    for task in ("t1", "t2", "t3"):
        run_through(metrics, request(task_target("a", task), "ok"))
    assert sample(metrics, "orthoserve_requests_total", set="a", task="t1", outcome="ok") == 1
    assert sample(metrics, "orthoserve_requests_total", set="a", task="_other", outcome="ok") == 2
    assert sample(metrics, "orthoserve_e2e_request_latency_seconds_count", set="a", task="_other") == 2
    series = {s.labels["task"] for s in families(metrics)["orthoserve_requests"].samples}
    assert series == {"t1", "_other"}


def test_a_completed_request_is_observed_on_both_clocks() -> None:
    metrics = ServingMetrics()
    labels = {"set": "s", "task": "t"}
    record = request(
        task_target("s", "t"),
        "ok",
        arrival=100.0,
        # one output carrying two tokens: its 0.3 s gap is split between them
        outputs=((100.5, 1), (100.7, 1), (101.0, 2)),
        finish=101.25,
        prompt_tokens=7,
        engine_stats=(engine_stats(5.0, 5.25, 5.75, 6.75),),
    )
    metrics.on_arrival(record)
    assert sample(metrics, "orthoserve_requests_waiting") == 1
    metrics.on_first_token(record)
    assert (sample(metrics, "orthoserve_requests_waiting"), sample(metrics, "orthoserve_requests_running")) == (0, 1)
    metrics.on_finish(record)

    assert sample(metrics, "orthoserve_requests_running") == 0
    assert sample(metrics, "orthoserve_requests_total", outcome="ok", **labels) == 1
    assert sample(metrics, "orthoserve_prompt_tokens_total", **labels) == 7
    assert sample(metrics, "orthoserve_generation_tokens_total", **labels) == 4
    assert sample(metrics, "orthoserve_e2e_request_latency_seconds_sum", **labels) == pytest.approx(1.25)
    assert sample(metrics, "orthoserve_time_to_first_token_seconds_sum", **labels) == pytest.approx(0.5)
    assert sample(metrics, "orthoserve_inter_token_latency_seconds_count", **labels) == 3  # tokens after the first
    assert sample(metrics, "orthoserve_inter_token_latency_seconds_sum", **labels) == pytest.approx(0.5)
    assert sample(metrics, "orthoserve_request_queue_time_seconds_sum", **labels) == pytest.approx(0.25)
    assert sample(metrics, "orthoserve_request_prefill_time_seconds_sum", **labels) == pytest.approx(0.5)
    assert sample(metrics, "orthoserve_request_decode_time_seconds_sum", **labels) == pytest.approx(1.0)
    for name in LATENCY_HISTOGRAMS:
        if name != "orthoserve_inter_token_latency_seconds":
            assert sample(metrics, f"{name}_count", **labels) == 1, name


def test_the_lifecycle_drives_the_gauges_and_the_histograms() -> None:
    metrics = ServingMetrics()
    lifecycle = RequestLifecycle()
    lifecycle.add_observer(metrics)
    record = lifecycle.arrive("req-1", "chat", "m", stream=True)
    record.target = task_target("s", "t")
    assert sample(metrics, "orthoserve_requests_waiting") == 1
    lifecycle.tokens_arrived(record, 0)  # an output without tokens is not a first token
    assert sample(metrics, "orthoserve_requests_waiting") == 1
    for _ in range(3):
        lifecycle.tokens_arrived(record, 1)
    assert (sample(metrics, "orthoserve_requests_waiting"), sample(metrics, "orthoserve_requests_running")) == (0, 1)
    record.prompt_tokens, record.generated_tokens = 5, 3
    lifecycle.finish(record, "ok")
    labels = {"set": "s", "task": "t"}
    assert sample(metrics, "orthoserve_requests_running") == 0
    assert sample(metrics, "orthoserve_inter_token_latency_seconds_count", **labels) == 2
    ttft = sample(metrics, "orthoserve_time_to_first_token_seconds_sum", **labels)
    assert 0 < ttft <= sample(metrics, "orthoserve_e2e_request_latency_seconds_sum", **labels)


def test_a_request_refused_before_it_was_read_is_an_unknown_client_error() -> None:
    metrics = ServingMetrics()
    lifecycle = RequestLifecycle()
    lifecycle.add_observer(metrics)
    lifecycle.reject("chat", ValueError("body is not JSON"))
    assert sample(metrics, "orthoserve_requests_total", set="_unknown", task="_unknown", outcome="client_error") == 1
    assert sample(metrics, "orthoserve_requests_waiting") == 0


def test_engine_times_of_several_prompts_span_all_their_engine_requests() -> None:
    metrics = ServingMetrics()
    stats = (engine_stats(1.0, 1.5, 2.0, 4.0), engine_stats(1.25, 1.75, 2.5, 5.0))
    run_through(metrics, request(BASE_TARGET, "ok", engine_stats=stats))
    base = {"set": "base", "task": "base"}
    assert sample(metrics, "orthoserve_request_queue_time_seconds_sum", **base) == pytest.approx(0.5)
    assert sample(metrics, "orthoserve_request_prefill_time_seconds_sum", **base) == pytest.approx(0.5)
    assert sample(metrics, "orthoserve_request_decode_time_seconds_sum", **base) == pytest.approx(3.0)
    assert sample(metrics, "orthoserve_request_decode_time_seconds_count", **base) == 1


def test_engine_times_are_skipped_when_the_engine_did_not_record_them() -> None:
    metrics = ServingMetrics()
    run_through(metrics, request(BASE_TARGET, "ok", engine_stats=(engine_stats(0.0, 0.0, 0.0, 0.0),)))
    assert sample(metrics, "orthoserve_e2e_request_latency_seconds_count", set="base", task="base") == 1
    assert sample(metrics, "orthoserve_request_queue_time_seconds_count", set="base", task="base") == 0


@pytest.mark.parametrize("outcome", ["cancelled", "server_error", "client_error"])
def test_unsuccessful_requests_count_their_tokens_but_no_latency(outcome: Outcome) -> None:
    metrics = ServingMetrics()
    run_through(metrics, request(task_target("s", "t"), outcome, outputs=((100.5, 1), (100.6, 1))))
    assert sample(metrics, "orthoserve_requests_total", set="s", task="t", outcome=outcome) == 1
    assert sample(metrics, "orthoserve_generation_tokens_total", set="s", task="t") == 2
    for name in LATENCY_HISTOGRAMS:
        assert sample(metrics, f"{name}_count", set="s", task="t") == 0
    assert (sample(metrics, "orthoserve_requests_waiting"), sample(metrics, "orthoserve_requests_running")) == (0, 0)


def test_a_request_that_ends_before_its_first_token_leaves_the_waiting_gauge() -> None:
    metrics = ServingMetrics()
    run_through(metrics, request(None, "client_error", outputs=()))
    assert sample(metrics, "orthoserve_requests_total", set="_unknown", task="_unknown", outcome="client_error") == 1
    assert (sample(metrics, "orthoserve_requests_waiting"), sample(metrics, "orthoserve_requests_running")) == (0, 0)


def test_a_client_error_after_resolution_keeps_the_target_labels() -> None:
    metrics = ServingMetrics()
    run_through(metrics, request(task_target("s", "t"), "client_error", outputs=()))
    assert sample(metrics, "orthoserve_requests_total", set="s", task="t", outcome="client_error") == 1


# -- adapter-set residency ------------------------------------------------------------------------


def test_residency_follows_loads_swaps_and_unloads() -> None:
    metrics = ServingMetrics()
    metrics.set_loaded("a", "moore", 1, 1000, 0.5)
    metrics.set_loaded("b", "lora", 1, 10, 0.02)
    metrics.set_loaded("a", "moore", 2, 3000, 0.7)  # hot swap: v1 drains while v2 serves
    assert sample(metrics, "orthoserve_adapter_sets_resident") == 3
    assert sample(metrics, "orthoserve_adapter_set_bytes", set="a") == 4000
    assert sample(metrics, "orthoserve_adapter_set_info", set="a", kind="moore", version="2") == 1
    assert sample(metrics, "orthoserve_adapter_set_load_seconds_count", kind="moore") == 2
    assert sample(metrics, "orthoserve_adapter_set_load_seconds_sum", kind="moore") == pytest.approx(1.2)

    metrics.set_unloaded("a", "moore", 1)
    assert sample(metrics, "orthoserve_adapter_set_bytes", set="a") == 3000
    assert metrics.registry.get_sample_value("orthoserve_adapter_set_info", {"set": "a", "kind": "moore",
                                                                              "version": "1"}) is None
    metrics.set_unloaded("a", "moore", 2)
    metrics.set_unloaded("a", "moore", 2)  # a repeated event changes nothing
    assert sample(metrics, "orthoserve_adapter_sets_resident") == 1
    assert metrics.registry.get_sample_value("orthoserve_adapter_set_bytes", {"set": "a"}) is None


def test_load_failures_are_counted_by_code() -> None:
    metrics = ServingMetrics()
    metrics.set_load_failed(None, "adapter_invalid")
    metrics.set_load_failed("lora", "adapter_invalid")
    metrics.set_load_failed("badit", "memory_budget_exceeded")
    assert sample(metrics, "orthoserve_adapter_set_load_failures_total", code="adapter_invalid") == 2
    assert sample(metrics, "orthoserve_adapter_set_load_failures_total", code="memory_budget_exceeded") == 1


# -- exposition -----------------------------------------------------------------------------------


def populated_metrics() -> ServingMetrics:
    engine_registry = CollectorRegistry()
    Counter("vllm:request_success", "Engine-side successes.", registry=engine_registry).inc()
    metrics = ServingMetrics(engine_registry=engine_registry)
    stats = (engine_stats(1.0, 2.0, 3.0, 4.0),)
    run_through(metrics, request(task_target("s", "t"), "ok", outputs=((100.5, 1), (100.6, 1)), engine_stats=stats))
    run_through(metrics, request(None, "client_error", outputs=()))
    metrics.set_loaded("s", "lora", 1, 100, 0.1)
    metrics.set_load_failed("lora", "adapter_invalid")
    return metrics


def test_exposition_parses_and_holds_every_contract_metric() -> None:
    parsed = families(populated_metrics())
    for name, kind in CONTRACT_FAMILIES.items():
        assert parsed[name].type == kind, name
    assert "process_resident_memory_bytes" in parsed
    assert parsed["vllm:request_success"].type == "counter"  # the engine's series follow orthoserve's
    histogram = parsed["orthoserve_e2e_request_latency_seconds"]
    counts = [s.value for s in histogram.samples if s.name.endswith("_bucket") and s.labels["task"] == "t"]
    assert counts == sorted(counts) and counts[-1] == 1  # cumulative buckets, +Inf holds the one request


def test_exposition_passes_promtool() -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool (Debian package prometheus) is required"
    check = subprocess.run(
        [promtool, "check", "metrics"], input=populated_metrics().render(), capture_output=True, timeout=30
    )
    problems = (check.stdout + check.stderr).decode().splitlines()
    # vLLM's names, kept as routers and vLLM's dashboards read them, are the only ones it may flag.
    assert problems and all(line.startswith("vllm:") for line in problems), problems


def test_engine_exposition_holds_only_the_engine_prefixed_families() -> None:
    engine = {family.name for family in text_string_to_metric_families(populated_metrics().render_engine().decode())}
    assert "vllm:request_success" in engine and all(name.startswith("vllm:") for name in engine)
    assert ServingMetrics().render_engine() == b""


def test_two_instances_do_not_collide() -> None:
    first, second = ServingMetrics(), ServingMetrics()
    run_through(first, request(None, "client_error", outputs=()))
    assert sample(first, "orthoserve_requests_total", set="_unknown", task="_unknown", outcome="client_error") == 1
    assert sample(second, "orthoserve_requests_total", set="_unknown", task="_unknown", outcome="client_error") == 0
