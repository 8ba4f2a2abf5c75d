"""Request guards on the real server: body limit, admission control, deadlines, disconnects, probes,
the admin API on its own port with a token file, the default context length, and a dead engine.

One server for the module, on a tiny model whose context (1536) is shorter than the default 2048. The
module's last test kills its engine.
"""

from __future__ import annotations

import concurrent.futures
import http.client
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
from server_process import (
    RunningServer,
    engine_core,
    engine_frozen,
    free_port,
    requests_in_flight,
    start_server,
    wait_until,
)

from adapters.base_model import describe_base_model
from server.engine_watch import ENGINE_DEAD_EXIT_CODE
from tests.router.adapter_sets import make_set
from tests.tiny_model import build_tiny_llama

MODEL = "ctx1536"
CONTEXT = 1536  # shorter than the default 2048, and room for streams that outlast any scheduling delay
MAX_BYTES = 16 * 1024
MAX_QUEUED = 6
MAX_QUEUED_PER_SET = 3
TOKEN = "token-from-a-file"
SET = "guarded-set"
LONG_PROMPT = "The quick brown fox jumps over the lazy dog. " * 14  # about 300 tokens
EXIT_AFTER_ENGINE_DEATH_S = 2
MAX_TRIES = 3  # of the stream tests below, whose premise (an early stream) a loaded machine can miss


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory, test_svd_cache: Path) -> Iterator[tuple[RunningServer, str]]:
    work = tmp_path_factory.mktemp("guards")
    model_dir = build_tiny_llama(work / "model", max_position_embeddings=CONTEXT)
    startup_sets_dir = work / "sets"
    make_set(startup_sets_dir / SET, describe_base_model(model_dir), kind="lora", tasks=("boolq",), svd_cache_dir=test_svd_cache)
    token_file = work / "admin-token"
    token_file.write_text(f"  {TOKEN}\n")
    admin_port = free_port()
    extra = [
        "--max-request-bytes", str(MAX_BYTES),
        "--max-queued-requests", str(MAX_QUEUED),
        "--max-queued-requests-per-set", str(MAX_QUEUED_PER_SET),
        "--admin-token-file", str(token_file),
        "--admin-port", str(admin_port),
        "--adapter-sets", str(startup_sets_dir),
        "--engine-death-exit-seconds", str(EXIT_AFTER_ENGINE_DEATH_S),
    ]  # fmt: skip
    with start_server(model_dir, MODEL, work / "server.log", extra, max_model_len=None) as server:
        yield server, f"http://127.0.0.1:{admin_port}"


def completion(server: RunningServer, model: str = MODEL, **fields) -> dict:
    return {"model": model, "prompt": "Hello there", "max_tokens": 8, "temperature": 0, **fields}


def assert_envelope(response: httpx.Response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and error["message"] and error["type"] and "param" in error
    return error


def metric(server: RunningServer, path: str, name: str, labels: str = "") -> float:
    """Sum of the samples of `name` whose label text contains `labels`."""
    total = 0.0
    for line in httpx.get(f"{server.base_url}{path}", timeout=30).text.splitlines():
        series, _, value = line.rpartition(" ")
        if not line.startswith("#") and series.split("{", 1)[0] == name and labels in series:
            total += float(value)
    return total


def test_context_defaults_to_the_models_own_when_shorter_than_2048(guarded):
    server, _ = guarded
    card = httpx.get(f"{server.base_url}/v1/models", timeout=30).json()["data"][0]
    assert card["id"] == MODEL and card["max_model_len"] == CONTEXT


def test_probes(guarded):
    server, _ = guarded
    assert httpx.get(f"{server.base_url}/health", timeout=30).json() == {"status": "ok"}
    assert httpx.get(f"{server.base_url}/ready", timeout=30).json() == {"status": "ready"}


def test_body_over_the_limit_is_413_before_parsing(guarded):
    server, _ = guarded
    url = f"{server.base_url}/v1/completions"
    # Not even JSON: the limit answers before the parser would have said 400.
    assert_envelope(httpx.post(url, content=b"{" * (MAX_BYTES + 1), timeout=30), 413, "request_too_large")
    chunked = (b"x" * 1024 for _ in range(MAX_BYTES // 1024 + 2))  # no Content-Length
    assert_envelope(httpx.post(url, content=chunked, timeout=30), 413, "request_too_large")
    # The admin listener has the same limit.
    _, admin = guarded
    big = {"name": "x" * MAX_BYTES, "path": "p"}
    response = httpx.post(f"{admin}/v1/adapter-sets", json=big, headers={"Authorization": f"Bearer {TOKEN}"})
    assert_envelope(response, 413, "request_too_large")
    # Just under the limit is served.
    ok = httpx.post(url, json=completion(server, prompt="a " * 100), timeout=60)
    assert ok.status_code == 200, ok.text


def _ended(server: RunningServer, outcome: str) -> float:
    """Requests that ended with `outcome`, so far."""
    return metric(server, "/metrics", "orthoserve_requests_total", f'outcome="{outcome}"')


def _burst(server: RunningServer, bodies: list[dict]) -> list[httpx.Response]:
    """Send every request while the engine is frozen, so that none leaves the queue (its first token)
    before the last one has been admitted or refused, however fast or loaded the machine; then read
    every answer."""
    _wait_idle(server)
    rejected_before = _ended(server, "rejected")
    host, port = server.base_url.removeprefix("http://").split(":")
    connections = [socket.create_connection((host, int(port)), timeout=300) for _ in bodies]
    with engine_frozen(engine_core(server)):
        for connection, body in zip(connections, bodies):
            content = json.dumps(body).encode()
            head = (
                f"POST /v1/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(content)}\r\nConnection: close\r\n\r\n"
            )
            connection.sendall(head.encode() + content)

        def taken() -> float:
            return requests_in_flight(server) + _ended(server, "rejected") - rejected_before

        wait_until(lambda: taken() >= len(bodies), timeout=30, interval=0.1, state=taken)
    responses = []
    for connection in connections:
        raw = http.client.HTTPResponse(connection)
        raw.begin()
        responses.append(httpx.Response(raw.status, headers=raw.getheaders(), content=raw.read()))
        connection.close()
    return responses


def _prompt(index: int) -> str:
    """A long prompt of its own (no shared prefix to take from the cache)."""
    return f"{index} " + LONG_PROMPT


def test_a_burst_past_the_queue_limit_gets_429_and_is_counted(guarded):
    server, _ = guarded
    rejected_before = _ended(server, "rejected")
    responses = _burst(server, [completion(server, prompt=_prompt(index), max_tokens=4) for index in range(24)])
    refused = [r for r in responses if r.status_code == 429]
    served = [r for r in responses if r.status_code == 200]
    assert len(refused) + len(served) == len(responses), [r.text for r in responses]
    assert len(served) == MAX_QUEUED_PER_SET  # none started while the burst arrived
    for response in refused:
        assert_envelope(response, 429, "server_overloaded")
        assert int(response.headers["retry-after"]) >= 1
    rejected = _ended(server, "rejected") - rejected_before
    assert rejected == len(refused)
    assert metric(server, "/metrics", "orthoserve_requests_total", 'outcome="rejected",set="base",task="base"') >= rejected


def test_one_hot_set_cannot_starve_another(guarded):
    server, _ = guarded
    hot = [completion(server, prompt=_prompt(index), max_tokens=4) for index in range(16)]
    other = completion(server, model=f"{SET}/boolq", prompt=_prompt(99), max_tokens=4)
    responses = _burst(server, [*hot[:8], other, *hot[8:]])
    assert any(r.status_code == 429 for r in responses)
    assert responses[8].status_code == 200, responses[8].text
    assert responses[8].headers["x-orthoserve-adapter-set"].startswith(f"{SET}@")


def _engine_idle(server: RunningServer) -> bool:
    return (
        metric(server, "/metrics/vllm", "vllm:num_requests_running") == 0
        and metric(server, "/metrics/vllm", "vllm:num_requests_waiting") == 0
        and metric(server, "/metrics", "orthoserve_requests_running") == 0
        and metric(server, "/metrics", "orthoserve_requests_waiting") == 0
    )


def _wait_idle(server: RunningServer) -> None:
    wait_until(lambda: _engine_idle(server), timeout=20, interval=0.2, state=lambda: "the engine still runs a request")


def test_deadline_aborts_the_engine_work_and_answers_504(guarded):
    server, _ = guarded
    url = f"{server.base_url}/v1/completions"
    started = time.monotonic()
    body = completion(server, max_tokens=CONTEXT - 8)
    response = httpx.post(url, json=body, headers={"x-request-timeout": "0.2"}, timeout=60)
    assert_envelope(response, 504, "request_timeout")
    assert time.monotonic() - started < 5
    _wait_idle(server)


def test_deadline_ends_a_started_stream_with_an_error_event(guarded):
    server, _ = guarded
    body = completion(server, max_tokens=CONTEXT - 8, stream=True, ignore_eos=True)
    for _ in range(MAX_TRIES):
        events = _stream_past_its_deadline(server, body)
        if events is not None:
            break
    else:
        pytest.fail(f"none of {MAX_TRIES} streams sent its first token within its deadline")
    assert len(events) >= 3  # the first token, the error, [DONE]
    assert events[-1] == "[DONE]"
    assert '"code": "request_timeout"' in events[-2]
    _wait_idle(server)


def _stream_past_its_deadline(server: RunningServer, body: dict) -> list[str] | None:
    """The events of a stream with a 1 s deadline whose engine is stopped from its first token on, so
    that the deadline falls mid-stream however fast the machine. None where the deadline passed before
    the first token (the server then answers 504, rightly): a loaded machine can take that long."""
    _wait_idle(server)
    url = f"{server.base_url}/v1/completions"
    with httpx.stream("POST", url, json=body, headers={"x-request-timeout": "1"}, timeout=60) as response:
        if response.status_code == 504:
            response.read()
            assert response.json()["error"]["code"] == "request_timeout"
            return None
        assert response.status_code == 200
        lines = (line.removeprefix("data: ") for line in response.iter_lines() if line.startswith("data: "))
        first = next(lines)
        with engine_frozen(engine_core(server)):
            return [first, *lines]


@pytest.mark.parametrize("value", ["soon", "0", "-1", "nan", "1e9"])
def test_a_bad_deadline_header_is_400(guarded, value):
    server, _ = guarded
    response = httpx.post(f"{server.base_url}/v1/completions", json=completion(server), headers={"x-request-timeout": value})
    assert_envelope(response, 400, "invalid_request_timeout")


def test_a_client_that_disconnects_aborts_its_engine_work(guarded):
    server, _ = guarded
    body = completion(server, max_tokens=CONTEXT - 8, stream=True, ignore_eos=True)
    for _ in range(MAX_TRIES):
        _wait_idle(server)  # an earlier stream has ended and is counted
        cancelled_before = _ended(server, "cancelled")
        generated_before = _generated(server)
        if _hang_up_mid_stream(server, body, cancelled_before, generated_before):
            break
    else:
        pytest.fail(f"each of {MAX_TRIES} streams had generated half its tokens before the engine could be stopped")
    _wait_idle(server)
    # The engine stopped generating for it, well before its max_tokens, and it is counted as cancelled.
    generated = _generated(server) - generated_before
    assert 1 <= generated < body["max_tokens"] / 2, generated
    assert _ended(server, "cancelled") == cancelled_before + 1


def _generated(server: RunningServer) -> float:
    return metric(server, "/metrics/vllm", "vllm:generation_tokens_total")


def _hang_up_mid_stream(server: RunningServer, body: dict, cancelled_before: float, generated_before: float) -> bool:
    """Hang up a stream while its engine is stopped, and wait until the server has counted it cancelled.

    The engine is stopped from the stream's first token until then, so the count of tokens does not
    depend on how fast this machine generates them. False (and nothing is asserted) where the engine
    had already generated half the stream when it was stopped: on a loaded machine this client can be
    held back for the seconds the whole stream takes."""
    with httpx.stream("POST", f"{server.base_url}/v1/completions", json=body, timeout=60) as response:
        assert response.status_code == 200
        next(line for line in response.iter_lines() if line.startswith("data: "))  # generating
        with engine_frozen(engine_core(server)):
            if _generated(server) - generated_before >= body["max_tokens"] / 2:
                response.close()
                return False
            response.close()  # the client hangs up
            wait_until(
                lambda: _ended(server, "cancelled") > cancelled_before,
                timeout=20,
                interval=0.1,
                state=lambda: {"in flight": requests_in_flight(server), "ok": _ended(server, "ok")},
            )
    return True


def test_admin_api_is_on_its_own_port_with_the_token_from_the_file(guarded):
    server, admin = guarded
    headers = {"Authorization": f"Bearer {TOKEN}"}
    listing = httpx.get(f"{admin}/v1/adapter-sets", headers=headers, timeout=30)
    assert listing.status_code == 200 and SET in {entry["name"] for entry in listing.json()["data"]}
    assert httpx.get(f"{admin}/v1/adapter-sets", headers={"Authorization": "Bearer nope"}).status_code == 401
    public = httpx.get(f"{server.base_url}/v1/adapter-sets", headers=headers, timeout=30)
    assert public.status_code == 404
    admin_routes = {"/v1/adapter-sets", "/v1/adapter-sets/{name}", "/v1/load_lora_adapter", "/v1/unload_lora_adapter"}
    assert not admin_routes & set(httpx.get(f"{server.base_url}/openapi.json").json()["paths"])
    admin_paths = httpx.get(f"{admin}/openapi.json").json()["paths"]
    assert set(admin_paths) == admin_routes  # vLLM's adapter endpoints are admin operations too
    # The admin listener serves nothing else.
    assert httpx.post(f"{admin}/v1/completions", json=completion(server)).status_code == 404


# Long enough (ignoring EOS; seconds of work) that no stream finishes between its first token and the
# engine being frozen.
UNTIL_THE_CONTEXT_ENDS = {"model": MODEL, "prompt": "Once upon a time", "max_tokens": CONTEXT - 16, "ignore_eos": True}


def _stream_until_the_context_ends(base_url: str, started: threading.Event) -> list[str]:
    events = []
    body = {**UNTIL_THE_CONTEXT_ENDS, "stream": True}
    with httpx.stream("POST", f"{base_url}/v1/completions", json=body, timeout=60) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: "):
                events.append(line.removeprefix("data: "))
                started.set()
    return events


def _until_the_context_ends(base_url: str) -> httpx.Response:
    return httpx.post(f"{base_url}/v1/completions", json=UNTIL_THE_CONTEXT_ENDS, timeout=60)


def _wait_in_flight(server: RunningServer, count: int) -> None:
    wait_until(lambda: requests_in_flight(server) == count, timeout=30, state=lambda: requests_in_flight(server))


def _two_streams_frozen_mid_way(
    server: RunningServer, engine: psutil.Process, pool: concurrent.futures.Executor
) -> list[concurrent.futures.Future[list[str]]]:
    """Two streams that have sent tokens, with the engine stopped (SIGSTOP) before either ended.

    They reach the engine while it is stopped, so they start in the same step and stay about one
    context length (seconds of work) from their end; the engine is stopped again once both have
    sent their first token."""
    started = [threading.Event() for _ in range(2)]
    with engine_frozen(engine):
        streams = [pool.submit(_stream_until_the_context_ends, server.base_url, event) for event in started]
        _wait_in_flight(server, 2)
    assert all(event.wait(60) for event in started), "the streams never started"
    engine.suspend()
    assert not any(stream.done() for stream in streams)
    _wait_in_flight(server, 2)  # neither ended on the server's side either
    return streams


def test_killing_the_engine_process_fails_requests_fast_and_exits_non_zero(guarded):
    """Last in the module: the engine-core process is killed under load, as an OOM kill would.

    /health and /ready turn 503 at once, in-flight requests (streamed or not) end with 503 / an error
    event, new requests get 503, and the server exits with its engine-death status within 30 s.
    """
    server, _ = guarded
    engine = engine_core(server)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        streams = _two_streams_frozen_mid_way(server, engine, pool)
        # No request can finish before the kill however slow this machine is. Two plain requests
        # queue up behind the streams.
        plains = [pool.submit(_until_the_context_ends, server.base_url) for _ in range(2)]
        _wait_in_flight(server, 4)
        engine.kill()
        killed_at = time.monotonic()

        health = None
        while time.monotonic() - killed_at < 3:
            health = httpx.get(f"{server.base_url}/health", timeout=5)
            if health.status_code == 503:
                break
            time.sleep(0.05)
        assert health is not None and health.status_code == 503, health and health.text
        assert health.json()["error"]["code"] == "engine_unavailable"
        assert httpx.get(f"{server.base_url}/ready", timeout=5).status_code == 503

        assert_envelope(_until_the_context_ends(server.base_url), 503, "engine_unavailable")

        # Never a hang and never a cut-short success: every request in flight ends with 503
        # `engine_unavailable`, a started stream with that error event.
        for future in plains:
            assert_envelope(future.result(timeout=30), 503, "engine_unavailable")
        for future in streams:
            events = future.result(timeout=30)
            assert events[-1] == "[DONE]", events[-3:]
            assert json.loads(events[-2])["error"]["code"] == "engine_unavailable", events[-3:]

    assert server.process.wait(timeout=60) == ENGINE_DEAD_EXIT_CODE
    assert time.monotonic() - killed_at < 30
    assert "The engine process has died" in server.log_path.read_text(errors="replace")
