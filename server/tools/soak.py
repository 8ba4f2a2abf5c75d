"""`orthoserve soak`: a long mixed load on a real server while adapter sets come and go.

It starts `orthoserve serve` in a subprocess (fp32, so greedy output is exact), or soaks a server
already running on this machine (`url`: it must serve the same base model in fp32, and `work_dir` must
lie under one of its adapter roots, since the soak writes its sets there). It writes random adapter
sets, records each set version's greedy *fingerprint* (the text each task gives for each prompt), and
then drives `requests` requests at `concurrency`: base, a MoORE set (several tasks), a BADIT set and a
LoRA set, streamed or not, some cancelled by the client. Meanwhile the MoORE set is replaced every
`replace_every` seconds (alternating between two weight folders) and the BADIT set is unloaded and
reloaded every `cycle_every` seconds. Every answer is checked against the fingerprint of the version
its `x-orthoserve-adapter-set` header names. Reported: failures, wrong-version answers, p50/p99
latency and the server's memory (RSS of the server and its engine processes) after warm-up and at
the end. The sets it loaded are unloaded at the end, so a running server is left as it was found.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import socket
import statistics
import subprocess
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import psutil

from adapters.base_model import describe_base_model
from adapters.initialise import init_adapter_set

ADMIN_TOKEN = "soak-admin-token"
BASE_MODEL = "soak-base"
PROMPTS = ("The quick brown fox", "Once upon a time", "The capital of France is")
MAX_TOKENS = 12
MOORE_TASKS = ("arc", "boolq", "piqa")
MOORE_SLOTS = 8
SWAPPED, CYCLED, STATIC = "swapped", "cycled", "static"


@dataclass(frozen=True)
class SoakConfig:
    model_dir: Path
    work_dir: Path
    requests: int = 2000
    concurrency: int = 32
    replace_every: float = 1.0
    cycle_every: float = 3.0
    cancel_fraction: float = 0.05
    stream_fraction: float = 0.5
    seed: int = 0
    url: str | None = None  # a running server to soak (None: start one)
    admin_token: str = ADMIN_TOKEN  # the running server's with `url`; else the one its own server is given


@dataclass
class SoakReport:
    requests: int = 0
    ok: int = 0
    cancelled: int = 0
    unloaded_404: int = 0
    failures: int = 0
    wrong_version: int = 0
    replacements: int = 0
    reloads: int = 0
    p50_seconds: float = 0.0
    p99_seconds: float = 0.0
    wall_seconds: float = 0.0
    rss_after_warmup_mib: float = 0.0
    rss_end_mib: float = 0.0
    rss_change_percent: float = 0.0
    by_target: dict[str, int] = field(default_factory=dict)
    failure_examples: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Target:
    model: str  # what the request's `model` field says
    set_name: str | None  # None for the base model
    task: str | None


@dataclass
class Answer:
    target: Target
    prompt: str
    version: str | None  # the `x-orthoserve-adapter-set` header, "name@version"
    text: str


def run_soak(config: SoakConfig, log: Any = print) -> SoakReport:
    if config.url:
        base_url = config.url.rstrip("/")
        pid = _listening_pid(base_url)  # before any set is written: a URL with no server here is refused at once
        return asyncio.run(_soak(config, base_url, pid, _write_sets(config), log))
    sets = _write_sets(config)
    port = _free_port()
    log_path = config.work_dir / "server.log"
    command = [
        sys.executable, "-m", "server.cli", "serve", "--model", str(config.model_dir), "--port", str(port),
        "--served-model-name", BASE_MODEL, "--dtype", "float32", "--kv-cache-gib", "0.5", "--admin-token", config.admin_token,
        "--adapter-root", str(config.work_dir / "sets"),
        # Replaced versions stay resident until their last request ends: leave room for several.
        "--max-moore-sets", str(MOORE_SLOTS),
    ]  # fmt: skip
    with open(log_path, "wb") as server_log:
        server = subprocess.Popen(command, stdout=server_log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        base_url = f"http://127.0.0.1:{port}"
        _wait_ready(base_url, server, log_path)
        return asyncio.run(_soak(config, base_url, server.pid, sets, log))
    finally:
        server.terminate()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()


def _write_sets(config: SoakConfig) -> dict[str, Path]:
    base = describe_base_model(config.model_dir)
    root = config.work_dir / "sets"
    specs = {
        "moore-a": ("moore", MOORE_TASKS, 1),
        "moore-b": ("moore", MOORE_TASKS, 2),
        "badit": ("badit", ("default",), 3),
        "lora": ("lora", ("chat",), 4),
    }
    for folder, (kind, tasks, seed) in specs.items():
        init_adapter_set(
            root / folder, kind=kind, base=base, tasks=list(tasks), mode="random", seed=seed,
            cache_dir=config.work_dir / "svd", overwrite=True,
        )  # fmt: skip
    return {folder: root / folder for folder in specs}


async def _soak(config: SoakConfig, base_url: str, pid: int, sets: dict[str, Path], log: Any) -> SoakReport:
    headers = {"Authorization": f"Bearer {config.admin_token}"}
    # Idle connections are dropped before uvicorn's 5 s keep-alive ends, so a request never goes out on
    # a connection the server is closing at that moment (a client-side race, not a server failure).
    limits = httpx.Limits(max_connections=config.concurrency + 8, keepalive_expiry=2.0)
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=120, limits=limits) as http:
        base_model = await _base_model(http)
        fingerprints = await _fingerprints(http, base_model, sets)
        await _load(http, SWAPPED, sets["moore-a"])
        await _load(http, CYCLED, sets["badit"])
        await _load(http, STATIC, sets["lora"])
        folder_of = {f"{SWAPPED}@1": "moore-a", f"{CYCLED}@1": "badit", f"{STATIC}@1": "lora"}
        targets = [
            Target(base_model, None, None),
            *(Target(f"{SWAPPED}/{task}", SWAPPED, task) for task in MOORE_TASKS),
            Target(CYCLED, CYCLED, "default"),
            Target(STATIC, STATIC, "chat"),
        ]
        report = SoakReport()
        answers: list[Answer] = []
        latencies: list[float] = []
        rng = random.Random(config.seed)
        done = asyncio.Event()
        churn = asyncio.gather(
            _replace_loop(http, sets, config.replace_every, folder_of, report, done),
            _cycle_loop(http, sets["badit"], config.cycle_every, folder_of, report, done),
        )
        queue: asyncio.Queue[int] = asyncio.Queue()
        for index in range(config.requests):
            queue.put_nowait(index)
        warmup_at = max(1, config.requests // 10)
        rss_after_warmup: list[float] = []
        started = time.monotonic()

        async def worker() -> None:
            while not queue.empty():
                index = queue.get_nowait()
                if index == warmup_at:
                    rss_after_warmup.append(_rss_mib(pid))
                target = rng.choice(targets)
                await _one_request(
                    http, target, rng.choice(PROMPTS), rng.random() < config.stream_fraction,
                    rng.random() < config.cancel_fraction, report, answers, latencies,
                )  # fmt: skip
                if index % 250 == 0:
                    log(f"soak: {index}/{config.requests} requests, {report.failures} failures")

        await asyncio.gather(*(worker() for _ in range(config.concurrency)))
        report.wall_seconds = round(time.monotonic() - started, 1)
        done.set()
        await churn
        for name in (SWAPPED, CYCLED, STATIC):
            (await http.delete(f"/v1/adapter-sets/{name}", params={"wait": True})).raise_for_status()
    report.requests = config.requests
    report.wrong_version = _check_answers(answers, fingerprints, folder_of, report)
    report.p50_seconds = round(statistics.median(latencies), 4) if latencies else 0.0
    report.p99_seconds = round(statistics.quantiles(latencies, n=100)[98], 4) if len(latencies) > 1 else 0.0
    report.rss_after_warmup_mib = round(rss_after_warmup[0] if rss_after_warmup else 0.0, 1)
    report.rss_end_mib = round(_rss_mib(pid), 1)
    if report.rss_after_warmup_mib:
        change = 100 * (report.rss_end_mib - report.rss_after_warmup_mib) / report.rss_after_warmup_mib
        report.rss_change_percent = round(change, 2)
    return report


async def _base_model(http: httpx.AsyncClient) -> str:
    """The served base model's name: the one model card without a parent."""
    response = await http.get("/v1/models")
    response.raise_for_status()
    return next(card["id"] for card in response.json()["data"] if card.get("parent") is None)


async def _fingerprints(
    http: httpx.AsyncClient, base_model: str, sets: dict[str, Path]
) -> dict[tuple[str, str | None, str], str]:
    """(folder, task, prompt) → greedy text; folder "base" for the base model."""
    prints: dict[tuple[str, str | None, str], str] = {}
    for prompt in PROMPTS:
        prints["base", None, prompt] = await _greedy(http, base_model, prompt)
    tasks = {"moore-a": MOORE_TASKS, "moore-b": MOORE_TASKS, "badit": ("default",), "lora": ("chat",)}
    for folder, folder_tasks in tasks.items():
        probe = f"probe-{folder}"
        await _load(http, probe, sets[folder])
        for task in folder_tasks:
            for prompt in PROMPTS:
                prints[folder, task, prompt] = await _greedy(http, f"{probe}/{task}", prompt)
        (await http.delete(f"/v1/adapter-sets/{probe}", params={"wait": True})).raise_for_status()
    return prints


async def _greedy(http: httpx.AsyncClient, model: str, prompt: str) -> str:
    response = await http.post("/v1/completions", json=_body(model, prompt, stream=False))
    response.raise_for_status()
    return response.json()["choices"][0]["text"]


def _body(model: str, prompt: str, *, stream: bool) -> dict[str, Any]:
    return {"model": model, "prompt": prompt, "max_tokens": MAX_TOKENS, "temperature": 0, "stream": stream}


async def _load(http: httpx.AsyncClient, name: str, path: Path, *, replace: bool = False) -> dict:
    response = await http.post("/v1/adapter-sets", json={"name": name, "path": str(path), "replace": replace})
    if response.status_code != 201:
        raise RuntimeError(f"loading {name} from {path} failed: {response.status_code} {response.text}")
    return response.json()


async def _replace_loop(
    http: httpx.AsyncClient, sets: dict[str, Path], every: float, folder_of: dict[str, str],
    report: SoakReport, done: asyncio.Event,
) -> None:  # fmt: skip
    folders = ("moore-b", "moore-a")
    while not await _wait(done, every):
        folder = folders[report.replacements % 2]
        response = await http.post("/v1/adapter-sets", json={"name": SWAPPED, "path": str(sets[folder]), "replace": True})
        if response.status_code != 201:
            raise RuntimeError(f"replacing {SWAPPED} failed: {response.status_code} {response.text}")
        folder_of[f"{SWAPPED}@{response.json()['version']}"] = folder
        report.replacements += 1


async def _cycle_loop(
    http: httpx.AsyncClient, path: Path, every: float, folder_of: dict[str, str], report: SoakReport, done: asyncio.Event
) -> None:
    while not await _wait(done, every):
        (await http.delete(f"/v1/adapter-sets/{CYCLED}", params={"wait": True})).raise_for_status()
        await asyncio.sleep(every / 4)
        info = await _load(http, CYCLED, path)
        folder_of[f"{CYCLED}@{info['version']}"] = "badit"
        report.reloads += 1


async def _wait(done: asyncio.Event, seconds: float) -> bool:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(done.wait(), seconds)
    return done.is_set()


async def _one_request(
    http: httpx.AsyncClient, target: Target, prompt: str, stream: bool, cancel: bool,
    report: SoakReport, answers: list[Answer], latencies: list[float],
) -> None:  # fmt: skip
    report.by_target[target.model] = report.by_target.get(target.model, 0) + 1
    started = time.monotonic()
    if cancel:
        # A request to be cancelled gets its own connection, so cancelling it never touches the pool.
        async with httpx.AsyncClient(base_url=http.base_url, timeout=120) as own:
            work = asyncio.ensure_future(_send(own, target, prompt, stream))
            await asyncio.sleep(random.uniform(0.0, 0.05))
            work.cancel()
            with contextlib.suppress(asyncio.CancelledError, httpx.HTTPError):
                await work
        report.cancelled += 1
        return
    work = asyncio.ensure_future(_send(http, target, prompt, stream))
    try:
        status, version, text, error = await work
    except httpx.HTTPError as exc:
        status, version, text, error = 0, None, "", repr(exc)
    if status == 404 and target.set_name == CYCLED and '"model_not_found"' in error:
        report.unloaded_404 += 1  # asked while the set was unloaded: the expected answer
        return
    if status != 200 or error:
        report.failures += 1
        if len(report.failure_examples) < 10:
            report.failure_examples.append(f"{target.model} stream={stream}: {status} {error[:300]}")
        return
    report.ok += 1
    latencies.append(time.monotonic() - started)
    answers.append(Answer(target, prompt, version, text))


async def _send(http: httpx.AsyncClient, target: Target, prompt: str, stream: bool) -> tuple[int, str | None, str, str]:
    """(status, version header, text, error text); a stream's error event counts as an error."""
    body = _body(target.model, prompt, stream=stream)
    if not stream:
        response = await http.post("/v1/completions", json=body)
        version = response.headers.get("x-orthoserve-adapter-set")
        if response.status_code != 200:
            return response.status_code, version, "", response.text
        return 200, version, response.json()["choices"][0]["text"], ""
    text = []
    async with http.stream("POST", "/v1/completions", json=body) as response:
        version = response.headers.get("x-orthoserve-adapter-set")
        if response.status_code != 200:
            return response.status_code, version, "", (await response.aread()).decode()
        async for line in response.aiter_lines():
            data = line.removeprefix("data: ")
            if not line.startswith("data: ") or data == "[DONE]":
                continue
            event = json.loads(data)
            if "error" in event:
                return 200, version, "", data
            text.extend(choice["text"] for choice in event["choices"])
    return 200, version, "".join(text), ""


def _check_answers(
    answers: list[Answer], fingerprints: dict[tuple[str, str | None, str], str], folder_of: dict[str, str],
    report: SoakReport,
) -> int:  # fmt: skip
    wrong = Counter()
    for answer in answers:
        if answer.target.set_name is None:
            expected = fingerprints["base", None, answer.prompt]
            ok = answer.version is None and answer.text == expected
        else:
            folder = folder_of.get(answer.version or "")
            ok = (
                answer.version is not None
                and answer.version.startswith(f"{answer.target.set_name}@")
                and folder is not None
                and answer.text == fingerprints[folder, answer.target.task, answer.prompt]
            )
        if not ok:
            wrong[answer.target.model] += 1
            if len(report.failure_examples) < 10:
                report.failure_examples.append(f"wrong answer {answer.target.model} {answer.version}: {answer.text!r}")
    return sum(wrong.values())


def _rss_mib(pid: int) -> float:
    process = psutil.Process(pid)
    tree = [process, *process.children(recursive=True)]
    total = 0
    for member in tree:
        with contextlib.suppress(psutil.NoSuchProcess):
            total += member.memory_info().rss
    return total / 2**20


def _listening_pid(base_url: str) -> int:
    """The process on this machine that listens on the URL's port: the server whose memory is measured."""
    parts = urlsplit(base_url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    for connection in psutil.net_connections(kind="tcp"):
        if connection.status == psutil.CONN_LISTEN and connection.laddr.port == port and connection.pid:
            return connection.pid
    raise RuntimeError(f"no process on this machine listens on the port of {base_url}: soak a server running here")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_ready(base_url: str, server: subprocess.Popen, log_path: Path, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited with {server.returncode}; see {log_path}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{base_url}/ready", timeout=5).status_code == 200:
                return
        time.sleep(1)
    raise RuntimeError(f"the server did not become ready in {timeout:.0f} s; see {log_path}")


def render_report(report: SoakReport) -> str:
    rows = [
        ("requests", report.requests), ("ok", report.ok), ("cancelled by the client", report.cancelled),
        ("404 while the cycled set was unloaded", report.unloaded_404), ("failures", report.failures),
        ("wrong-version answers", report.wrong_version), ("set replacements", report.replacements),
        ("set unload/reloads", report.reloads), ("p50 latency (s)", report.p50_seconds),
        ("p99 latency (s)", report.p99_seconds), ("wall time (s)", report.wall_seconds),
        ("RSS after warm-up (MiB)", report.rss_after_warmup_mib), ("RSS at the end (MiB)", report.rss_end_mib),
        ("RSS change (%)", report.rss_change_percent),
    ]  # fmt: skip
    lines = ["| measure | value |", "|---|---:|", *(f"| {name} | {value} |" for name, value in rows)]
    lines += [f"failure: {example}" for example in report.failure_examples]
    return "\n".join(lines)


def write_json(report: SoakReport, config: SoakConfig, path: Path) -> None:
    payload = {"config": {k: str(v) for k, v in asdict(config).items()}, "report": asdict(report)}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")
