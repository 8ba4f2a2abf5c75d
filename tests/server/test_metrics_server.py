"""/metrics of a real server: consistent with what clients were told, lint-clean, queryable by Prometheus.

Other tests share the session server, so every check compares two scrapes (before and after its own
traffic), never absolute values.
"""

from __future__ import annotations

import math
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.router.adapter_sets import make_broken_set
from server_process import RunningServer, engine_core, engine_frozen, free_port

PROMPT = "The quick brown fox"
MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]
MAX_HANG_UPS = 3
MAX_ADAPTER_TASKS = 2  # enough to tell tasks apart, few enough to stay quick
LATENCY_HISTOGRAMS = (
    "orthoserve_e2e_request_latency_seconds",
    "orthoserve_time_to_first_token_seconds",
    "orthoserve_request_queue_time_seconds",
    "orthoserve_request_prefill_time_seconds",
    "orthoserve_request_decode_time_seconds",
)


@dataclass(frozen=True)
class ServedTask:
    """A `model` (and `task`) clients can ask for, and the (set, task) labels its requests get."""

    model: str
    task: str | None
    labels: dict[str, str]

    @property
    def extra_body(self) -> dict[str, str] | None:
        return None if self.task is None else {"task": self.task}


@pytest.fixture(scope="module")
def served_tasks(server: RunningServer) -> list[ServedTask]:
    """The base model, then the first adapter-set tasks the shared server lists in /v1/models."""
    tasks = [ServedTask(server.model, None, {"set": "base", "task": "base"})]
    for card in httpx.get(f"{server.base_url}/v1/models", timeout=30).json()["data"]:
        set_name, _, task = card["id"].partition("/")
        if task and card.get("parent") == set_name:
            tasks.append(ServedTask(card["id"], None, {"set": set_name, "task": task}))
    return tasks[: 1 + MAX_ADAPTER_TASKS]


@pytest.fixture(scope="module")
def client(server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0, timeout=120)


class Scrape:
    """One scrape of /metrics: the raw text and every sample by (name, labels)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                self.samples[sample.name, frozenset(sample.labels.items())] = sample.value

    def value(self, name: str, **labels: str) -> float:
        return self.samples.get((name, frozenset(labels.items())), 0.0)

    def delta(self, before: Scrape, name: str, **labels: str) -> float:
        return self.value(name, **labels) - before.value(name, **labels)


def scrape(server: RunningServer) -> Scrape:
    response = httpx.get(f"{server.base_url}/metrics", timeout=30)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return Scrape(response.text)


def scrape_until(server: RunningServer, done: Callable[[Scrape], bool], timeout: float = 30.0) -> Scrape:
    """Scrape until `done` holds: a request is counted once its stream is closed, a moment after the client."""
    deadline = time.monotonic() + timeout
    while True:
        current = scrape(server)
        if done(current) or time.monotonic() > deadline:
            return current
        time.sleep(0.2)


def request_count(task: ServedTask, outcome: str = "ok") -> Callable[[Scrape], float]:
    return lambda s: s.value("orthoserve_requests_total", outcome=outcome, **task.labels)


def ended(after: Scrape, before: Scrape, task: ServedTask) -> float:
    """Requests of `task` that ended ok or cancelled between two scrapes."""
    return sum(after.delta(before, "orthoserve_requests_total", outcome=o, **task.labels) for o in ("ok", "cancelled"))


def completion(client: openai.OpenAI, task: ServedTask, max_tokens: int = 8) -> openai.types.CompletionUsage:
    result = client.completions.create(
        model=task.model, prompt=PROMPT, max_tokens=max_tokens, temperature=0, extra_body=task.extra_body
    )
    return result.usage


def streamed_chat(client: openai.OpenAI, task: ServedTask, max_tokens: int = 8) -> openai.types.CompletionUsage:
    chunks = list(
        client.chat.completions.create(
            model=task.model, messages=MESSAGES, max_tokens=max_tokens, temperature=0, extra_body=task.extra_body,
            stream=True, stream_options={"include_usage": True},
        )
    )  # fmt: skip
    assert chunks[-1].usage is not None
    return chunks[-1].usage


def hang_up_a_stream(server: RunningServer, task: ServedTask) -> None:
    """Start a long chat stream, read its first event, and hang up with the engine stopped (SIGSTOP)
    until the server has ended the request: the stream cannot run on while the server reads the
    hang-up. (On a loaded machine it may still have ended between its first event and the stop.)

    Eight sampled choices of up to 400 tokens: an early end-of-sequence in one choice cannot end the
    request early.
    """
    engine = engine_core(server)  # looked up first, so that the stop follows the first event at once
    before = scrape(server)
    body = {
        "model": task.model, "messages": MESSAGES, "max_tokens": 400, "n": 8, "temperature": 1.0, "stream": True,
        **(task.extra_body or {}),
    }  # fmt: skip
    url = f"{server.base_url}/v1/chat/completions"
    with httpx.Client(timeout=60) as http, http.stream("POST", url, json=body) as response:
        assert response.status_code == 200
        assert next(line for line in response.iter_lines() if line.startswith("data:"))
        with engine_frozen(engine):
            response.close()
            assert ended(scrape_until(server, lambda s: ended(s, before, task) == 1), before, task) == 1


# -- consistency ----------------------------------------------------------------------------------


def test_counts_and_tokens_match_what_clients_were_told(client, server, served_tasks) -> None:
    for task in served_tasks:
        before = scrape(server)
        usages = [completion(client, task, max_tokens) for max_tokens in (4, 8, 12)]
        usages += [streamed_chat(client, task, max_tokens) for max_tokens in (6, 10)]
        ok_before = request_count(task)(before)
        after = scrape_until(server, lambda s: request_count(task)(s) - ok_before >= len(usages))

        assert after.delta(before, "orthoserve_requests_total", outcome="ok", **task.labels) == len(usages)
        for name in LATENCY_HISTOGRAMS:
            assert after.delta(before, f"{name}_count", **task.labels) == len(usages), name
            assert after.delta(before, f"{name}_bucket", le="+Inf", **task.labels) == len(usages), name
        prompt_tokens = sum(usage.prompt_tokens for usage in usages)
        completion_tokens = sum(usage.completion_tokens for usage in usages)
        assert after.delta(before, "orthoserve_prompt_tokens_total", **task.labels) == prompt_tokens
        assert after.delta(before, "orthoserve_generation_tokens_total", **task.labels) == completion_tokens
        # One inter-token gap per token after each request's first output.
        itl_count = after.delta(before, "orthoserve_inter_token_latency_seconds_count", **task.labels)
        assert 0 < itl_count <= completion_tokens - len(usages)
        ttft = after.delta(before, "orthoserve_time_to_first_token_seconds_sum", **task.labels)
        e2e = after.delta(before, "orthoserve_e2e_request_latency_seconds_sum", **task.labels)
        assert 0 < ttft <= e2e


@pytest.mark.parametrize("send", [completion, streamed_chat], ids=["completion", "streamed-chat"])
def test_each_request_times_nest_inside_its_end_to_end_latency(client, server, served_tasks, send) -> None:
    task = served_tasks[0]
    before = scrape(server)
    send(client, task, 16)
    ok_before = request_count(task)(before)
    after = scrape_until(server, lambda s: request_count(task)(s) - ok_before >= 1)
    one = {name: after.delta(before, f"{name}_sum", **task.labels) for name in LATENCY_HISTOGRAMS}
    e2e = one["orthoserve_e2e_request_latency_seconds"]
    assert 0 < one["orthoserve_time_to_first_token_seconds"] <= e2e
    # Engine-clock durations happen inside the server's window for the request (durations compared,
    # never timestamps of the two clocks).
    engine_total = sum(one[f"orthoserve_request_{part}_time_seconds"] for part in ("queue", "prefill", "decode"))
    assert 0 < engine_total <= e2e


# -- outcomes and lint ----------------------------------------------------------------------------


def test_mixed_traffic_counts_every_outcome_and_passes_promtool(client, server, served_tasks) -> None:
    task = served_tasks[0]
    unknown = {"set": "_unknown", "task": "_unknown"}
    before = scrape(server)
    completion(client, task)
    streamed_chat(client, task)
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="no-such-model", prompt=PROMPT, max_tokens=4)
    malformed = httpx.post(f"{server.base_url}/v1/chat/completions", json={"model": task.model}, timeout=30)
    assert malformed.status_code == 400
    after, hang_ups = scrape_until(server, lambda s: ended(s, before, task) == 2), 0
    while after.delta(before, "orthoserve_requests_total", outcome="cancelled", **task.labels) == 0:
        assert hang_ups < MAX_HANG_UPS, "no hung-up stream was counted as cancelled"
        hang_up_a_stream(server, task)
        hang_ups += 1
        after = scrape(server)

    assert ended(after, before, task) == 2 + hang_ups
    assert after.delta(before, "orthoserve_requests_total", outcome="cancelled", **task.labels) == 1
    assert after.delta(before, "orthoserve_requests_total", outcome="client_error", **unknown) == 2
    assert after.delta(before, "orthoserve_generation_tokens_total", **task.labels) > 0
    assert after.value("orthoserve_requests_running") == 0 and after.value("orthoserve_requests_waiting") == 0

    promtool = shutil.which("promtool")
    assert promtool, "promtool (Debian package prometheus; scripts/install.sh --with-prometheus) is required"
    # vLLM's `vllm:` names (kept for routers and vLLM's dashboards) are the only ones promtool may flag.
    check = subprocess.run([promtool, "check", "metrics"], input=after.text.encode(), capture_output=True, timeout=60)
    problems = (check.stdout + check.stderr).decode().splitlines()
    assert all(line.startswith("vllm:") for line in problems), problems


def test_engine_metrics_are_served_apart_under_their_own_prefix(server) -> None:
    response = httpx.get(f"{server.base_url}/metrics/vllm", timeout=30)
    assert response.status_code == 200
    names = {family.name for family in text_string_to_metric_families(response.text)}
    assert "vllm:num_requests_running" in names
    assert all(name.startswith("vllm:") for name in names)


# -- adapter-set residency ------------------------------------------------------------------------


def test_adapter_set_loads_unloads_and_failures_are_metered(server, admin, write_set, adapter_root) -> None:
    before = scrape(server)
    good = write_set("metered", tasks=("alpha", "beta"), seed=11)
    info = admin.load("metered", good)
    version = {"set": "metered", "kind": info["kind"], "version": str(info["version"])}
    loaded = scrape(server)
    assert loaded.delta(before, "orthoserve_adapter_sets_resident") == 1
    assert loaded.value("orthoserve_adapter_set_info", **version) == 1
    assert loaded.value("orthoserve_adapter_set_bytes", set="metered") > 0
    assert loaded.delta(before, "orthoserve_adapter_set_load_seconds_count", kind=info["kind"]) == 1

    broken = make_broken_set(good, adapter_root / "metered-nan", "nan")
    refused = admin.http.post("/v1/adapter-sets", json={"name": "metered-nan", "path": str(broken)})
    assert refused.status_code == 422, refused.text
    code = refused.json()["error"]["code"]

    admin.unload("metered", wait=True)
    unloaded = scrape(server)
    assert unloaded.delta(before, "orthoserve_adapter_sets_resident") == 0
    assert unloaded.delta(before, "orthoserve_adapter_set_load_failures_total", code=code) == 1
    assert ("orthoserve_adapter_set_info", frozenset(version.items())) not in unloaded.samples
    assert ("orthoserve_adapter_set_bytes", frozenset({"set": "metered"}.items())) not in unloaded.samples


# -- a real Prometheus ----------------------------------------------------------------------------


@pytest.fixture
def prometheus(server: RunningServer, tmp_path: Path) -> Iterator[str]:
    """A Prometheus server scraping the shared orthoserve every second; yields its base URL."""
    binary = shutil.which("prometheus")
    assert binary, "prometheus (Debian package prometheus; scripts/install.sh --with-prometheus) is required"
    target = server.base_url.removeprefix("http://")
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        f"scrape_configs:\n  - job_name: orthoserve\n    static_configs:\n      - targets: ['{target}']\n"
    )
    port = free_port()
    log = tmp_path / "prometheus.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        until(lambda: query(url, 'up{job="orthoserve"} == 1'), 60, f"Prometheus never scraped {target}", log)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def query(prometheus_url: str, promql: str) -> list[dict]:
    try:
        response = httpx.get(f"{prometheus_url}/api/v1/query", params={"query": promql}, timeout=10)
    except httpx.HTTPError:
        return []  # not listening yet
    if response.status_code != 200:
        return []
    return response.json()["data"]["result"]


def until(probe: Callable[[], list], timeout: float, failure: str, log: Path) -> list:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := probe():
            return result
        time.sleep(0.5)
    pytest.fail(f"{failure}; Prometheus log:\n{log.read_text(errors='replace')[-4000:]}")


def test_prometheus_computes_the_median_time_to_first_token_per_task(client, prometheus, served_tasks, tmp_path):
    # Traffic spread over a few scrapes, so rate() sees the buckets grow between two samples.
    for _ in range(4):
        for task in served_tasks:
            completion(client, task)
            streamed_chat(client, task)
        time.sleep(0.6)
    promql = "histogram_quantile(0.5, sum by (le, set, task) (rate(orthoserve_time_to_first_token_seconds_bucket[1m])))"
    expected = {(task.labels["set"], task.labels["task"]) for task in served_tasks}

    def medians() -> dict[tuple[str, str], float]:
        return {
            (series["metric"]["set"], series["metric"]["task"]): float(series["value"][1])
            for series in query(prometheus, promql)
            if math.isfinite(float(series["value"][1]))
        }

    def every_task_has_a_median() -> list[dict]:
        return [medians()] if expected <= medians().keys() else []

    found = until(every_task_has_a_median, 60, f"no median TTFT for each of {expected}", tmp_path / "prometheus.log")[0]
    assert all(0 < found[pair] < 120 for pair in expected)
