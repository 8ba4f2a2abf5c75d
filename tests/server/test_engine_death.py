"""A dead engine is noticed: the engine-core process is killed under load, as an OOM kill would.

/health and /ready turn 503 at once, in-flight requests (streamed or not) end with 503 / an error
event, new requests get 503, and the server exits with its engine-death status within 30 s.
"""

from __future__ import annotations

import concurrent.futures
import json
import threading
import time
from pathlib import Path

import httpx
import psutil

from server.engine_watch import ENGINE_DEAD_EXIT_CODE
from tests.server_process import TINY_MODEL_NAME, start_server
from tests.tiny_model import build_tiny_llama

EXIT_AFTER_SECONDS = 2
CONTEXT = 2048  # the server default caps the context at 2048

# Long enough (ignoring EOS; seconds of work) that no request can finish between the streams starting
# and the kill.
LONG = {"model": TINY_MODEL_NAME, "prompt": "Once upon a time", "max_tokens": CONTEXT - 16, "ignore_eos": True}


def _stream(base_url: str, started: threading.Event) -> list[str]:
    body = {**LONG, "stream": True}
    events = []
    with httpx.stream("POST", f"{base_url}/v1/completions", json=body, timeout=60) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: "):
                events.append(line.removeprefix("data: "))
                started.set()
    return events


def _plain(base_url: str) -> httpx.Response:
    return httpx.post(f"{base_url}/v1/completions", json=LONG, timeout=60)


def _in_flight(base_url: str) -> float:
    total = 0.0
    for line in httpx.get(f"{base_url}/metrics", timeout=10).text.splitlines():
        if line.startswith(("orthoserve_requests_running ", "orthoserve_requests_waiting ")):
            total += float(line.split()[-1])
    return total


def test_killing_the_engine_process_fails_requests_fast_and_exits_non_zero(tmp_path: Path):
    model_dir = build_tiny_llama(tmp_path / "model", max_position_embeddings=CONTEXT)
    extra = ["--engine-death-exit-seconds", str(EXIT_AFTER_SECONDS)]
    with start_server(model_dir, TINY_MODEL_NAME, tmp_path / "server.log", extra, max_model_len=None) as server:
        engine_cores = [child for child in psutil.Process(server.process.pid).children() if "EngineCore" in child.name()]
        assert len(engine_cores) == 1, [child.name() for child in psutil.Process(server.process.pid).children()]
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            started = [threading.Event() for _ in range(2)]
            streams = [pool.submit(_stream, server.base_url, event) for event in started]
            assert all(event.wait(60) for event in started), "the streams never started"
            plains = [pool.submit(_plain, server.base_url) for _ in range(2)]
            # Give the plain requests a moment to reach the engine (the streams, which need longer
            # than that to finish, are in flight already).
            deadline = time.monotonic() + 0.2
            while _in_flight(server.base_url) < 4 and time.monotonic() < deadline:
                time.sleep(0.01)
            engine_cores[0].kill()
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

            fresh = _plain(server.base_url)
            assert fresh.status_code == 503 and fresh.json()["error"]["code"] == "engine_unavailable"

            # Never a hang. A request either finished whole before the kill, or ends with 503
            # `engine_unavailable` (a stream: with that error event); never a cut-short success.
            cut = 0
            for future in plains:
                response = future.result(timeout=30)
                if response.status_code == 200:
                    assert response.json()["usage"]["completion_tokens"] == LONG["max_tokens"], response.text[:300]
                else:
                    assert response.status_code == 503, response.text
                    assert response.json()["error"]["code"] == "engine_unavailable"
                    cut += 1
            for future in streams:
                events = future.result(timeout=30)
                assert events[-1] == "[DONE]", events[-3:]
                last = json.loads(events[-2])
                if "error" in last:
                    assert last["error"]["code"] == "engine_unavailable", events[-3:]
                    cut += 1
                else:
                    assert last["choices"][0]["finish_reason"] == "length", events[-3:]
            assert cut >= 1, "every request finished before the engine died"

        exit_code = server.process.wait(timeout=60)
        assert exit_code == ENGINE_DEAD_EXIT_CODE
        assert time.monotonic() - killed_at < 30
        log = server.log_path.read_text(errors="replace")
        assert "The engine process has died" in log
