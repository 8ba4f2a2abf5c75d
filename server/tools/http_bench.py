"""HTTP benchmark: orthoserve against vLLM's own OpenAI server, same model, engine settings and workload.

Each server runs alone (one after the other, repeats interleaved) as a subprocess on 127.0.0.1. The
client sends `num_requests` streamed completions of `prompt_len` random token ids, `concurrency` at a
time, each generating exactly `output_len` tokens (`ignore_eos`), through the official async `openai`
client. Reported per server: output tokens per second over the batch, and time to first token (p50,
p90), the best repeat counting; then the ratios orthoserve / vLLM.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
import openai

from server.engine.vllm import engine as vllm_engine
from server.settings import export_environment

START_TIMEOUT_S = 900
SERVED_NAME = "bench-model"


@dataclass(frozen=True)
class HttpBenchConfig:
    model_dir: Path
    num_requests: int = 128
    concurrency: int = 32
    prompt_len: int = 32
    output_len: int = 64
    repeats: int = 2
    max_model_len: int = 2048
    kv_cache_gib: float = 1.0
    dtype: str = "auto"
    cpu_threads: int = 1
    log_dir: Path = Path("bench-results")  # each server's log goes here


@dataclass(frozen=True)
class RunResult:
    server: str
    tokens_per_second: float
    ttft_p50: float
    ttft_p90: float
    ttft_p99: float
    seconds: float
    output_tokens: int


def server_commands(config: HttpBenchConfig, port: int) -> dict[str, list[str]]:
    """Both servers with the same engine settings (orthoserve's whole-prompt prefill included)."""
    common = ["--port", str(port), "--host", "127.0.0.1", "--served-model-name", SERVED_NAME,
              "--max-model-len", str(config.max_model_len), "--dtype", config.dtype]  # fmt: skip
    return {
        "orthoserve": [sys.executable, "-m", "server.cli", "serve", "--model", str(config.model_dir), *common,
                       "--kv-cache-gib", str(config.kv_cache_gib), "--cpu-threads", str(config.cpu_threads)],
        "vllm": [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(config.model_dir), *common,
                 "--kv-cache-memory-bytes", str(int(config.kv_cache_gib * (1 << 30))), "--enforce-eager",
                 "--no-enable-chunked-prefill", "--max-num-batched-tokens", str(max(config.max_model_len, 2048))],
    }  # fmt: skip


def run_http_bench(config: HttpBenchConfig, log: Callable[[str], None] = print) -> dict:
    # The vLLM server gets the CPU worker environment orthoserve's engine sets for itself.
    if vllm_engine.is_cpu_platform():
        export_environment(vllm_engine.cpu_worker_thread_env(config.cpu_threads))
    prompts = _prompts(config)
    runs: list[RunResult] = []
    for repeat in range(config.repeats):
        for name, command in server_commands(config, free_port()).items():
            port = int(command[command.index("--port") + 1])
            with serving(command, port, config.log_dir / f"{name}.log", log):
                asyncio.run(run_load(port, prompts[:8], config))  # warm-up
                result = asyncio.run(run_load(port, prompts, config))
            run = summarise(name, *result)
            log(f"repeat {repeat + 1} {name}: {run.tokens_per_second:.1f} tok/s, TTFT p50 {run.ttft_p50 * 1000:.0f} ms")
            runs.append(run)
    best = {name: max((r for r in runs if r.server == name), key=lambda r: r.tokens_per_second) for name in ("orthoserve", "vllm")}
    return {
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()},
        "runs": [asdict(run) for run in runs],
        "best": {name: asdict(run) for name, run in best.items()},
        "throughput_ratio": best["orthoserve"].tokens_per_second / best["vllm"].tokens_per_second,
        "ttft_p50_ratio": best["orthoserve"].ttft_p50 / best["vllm"].ttft_p50,
    }


def render_table(report: dict) -> str:
    rows = ["| server | tok/s | TTFT p50 (ms) | TTFT p90 (ms) |", "|---|---:|---:|---:|"]
    for name, run in report["best"].items():
        rows.append(f"| {name} | {run['tokens_per_second']:.1f} | {run['ttft_p50'] * 1000:.0f} | {run['ttft_p90'] * 1000:.0f} |")
    rows += ["", "| ratio orthoserve / vLLM | value | target |", "|---|---:|---:|",
             f"| throughput | {report['throughput_ratio']:.3f} | ≥ 0.97 |",
             f"| TTFT p50 | {report['ttft_p50_ratio']:.3f} | ≤ 1.10 |"]  # fmt: skip
    return "\n".join(rows)


def write_json(report: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2))


def _prompts(config: HttpBenchConfig) -> list[list[int]]:
    vocab = json.loads((config.model_dir / "config.json").read_text())["vocab_size"]
    rng = random.Random(0)
    return [[rng.randrange(100, vocab) for _ in range(config.prompt_len)] for _ in range(config.num_requests)]


async def run_load(
    port: int, prompts: list[list[int]], config: HttpBenchConfig, models: list[str] | None = None
) -> tuple[float, list[float], int]:
    """Wall seconds, per-request TTFTs and output tokens of one batch; `models[i]` is prompt i's
    `model` (default: the served base model)."""
    client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=600)
    gate = asyncio.Semaphore(config.concurrency)

    async def one(prompt: list[int], model: str) -> tuple[float, int]:
        async with gate:
            sent = time.perf_counter()
            first, tokens = None, 0
            stream = await client.completions.create(
                model=model, prompt=prompt, max_tokens=config.output_len, temperature=0, stream=True,
                stream_options={"include_usage": True}, extra_body={"ignore_eos": True},
            )  # fmt: skip
            async for chunk in stream:
                if first is None and chunk.choices and chunk.choices[0].text:
                    first = time.perf_counter() - sent
                if chunk.usage is not None:
                    tokens = chunk.usage.completion_tokens
            return first or 0.0, tokens

    started = time.perf_counter()
    results = await asyncio.gather(*(one(prompt, model) for prompt, model in zip(prompts, models or [SERVED_NAME] * len(prompts))))
    seconds = time.perf_counter() - started
    await client.close()
    return seconds, [ttft for ttft, _ in results], sum(tokens for _, tokens in results)


def summarise(name: str, seconds: float, ttfts: list[float], tokens: int) -> RunResult:
    percentiles = statistics.quantiles(ttfts, n=100)
    return RunResult(name, tokens / seconds, statistics.median(ttfts), percentiles[89], percentiles[98], seconds, tokens)


@contextlib.contextmanager
def serving(command: list[str], port: int, log_path: Path, log: Callable[[str], None]) -> Iterator[subprocess.Popen]:
    """`command` running, healthy on `port`, until the block ends."""
    log(f"starting {' '.join(command[1:4])} on port {port} (log: {log_path})")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _healthy(port):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{command[1:4]} did not start (exit code {process.poll()})")
            time.sleep(2)
        yield process
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _healthy(port: int) -> bool:
    with contextlib.suppress(httpx.HTTPError):
        return httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200
    return False


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
