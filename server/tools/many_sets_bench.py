"""`orthoserve bench-many-sets`: more registered adapter sets than engine slots, over HTTP.

One orthoserve server registers `sets` sets of one kind at start (`--adapter-sets`) with `slots`
engine slots for that kind. The same streamed workload as `bench-http` then runs three times, one
after the other: every request on the base model; each request on a set drawn uniformly from all
sets; and on a set drawn from a Zipf law (rank r with weight 1/r^alpha), the way a few adapters take
most traffic. Reported: throughput against base, TTFT p50/p99, swap-ins per second and swap-in
latency p50/p99 (read from the server's histogram, interpolated inside its buckets; under load it
includes the wait for the engine step under way), swap-in latency per source on an idle engine, the
time to register the sets at start, and host memory per host copy.
"""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
import psutil
import torch
from prometheus_client.parser import text_string_to_metric_families

from adapters.base_model import BaseModelInfo, describe_base_model
from adapters.errors import AdapterError
from adapters.format import AdapterSet, load_adapter_set, read_manifest, save_adapter_set
from adapters.initialise import init_adapter_set
from server.tools.http_bench import SERVED_NAME, HttpBenchConfig, free_port, run_load, serving, summarise

ADMIN_TOKEN = "bench-many-sets"
TASKS = {"lora": ["chat"], "moore": ["t0"], "badit": ["default"]}


@dataclass(frozen=True)
class ManySetsConfig:
    load: HttpBenchConfig
    kind: str = "lora"
    sets: int = 1000
    slots: int = 64
    zipf_alpha: float = 1.0
    work_dir: Path = Path("bench-results/many-sets")
    cache_dir: Path | None = None  # the server's --cache-dir (None: its default)
    svd_cache_dir: Path | None = None  # where the sets' base factors are cached (MoORE, BADIT)


def make_sets(config: ManySetsConfig, log: Callable[[str], None]) -> Path:
    """`config.sets` random sets of `config.kind` under the work folder (kept between runs). The first
    is initialised at random; each other one is that set with every tensor's entries flipped in sign at
    random (seeded by its index): as many distinct sets of the same scale, made without re-reading
    the base weights for each."""
    base = describe_base_model(config.load.model_dir)
    root = config.work_dir / f"{config.kind}-sets"
    paths = [root / f"{config.kind}-{index:04d}" for index in range(config.sets)]
    first = _made_for(paths[0], base)
    if first is None:
        first = init_adapter_set(
            paths[0], kind=config.kind, base=base, tasks=TASKS[config.kind], mode="random", cache_dir=config.svd_cache_dir,
            overwrite=True,
        )  # fmt: skip
    made = 0
    for index, path in enumerate(paths[1:], start=1):
        if _made_for(path, base) is not None:
            continue
        generator = torch.Generator().manual_seed(index)
        signs = {name: torch.randint(0, 2, t.shape, generator=generator).to(t.dtype) * 2 - 1 for name, t in first.tensors.items()}
        save_adapter_set(
            path, name=path.name, config=first.config, base=base, target_modules=first.target_modules,
            tasks=first.tasks, tensors={name: t * signs[name] for name, t in first.tensors.items()}, overwrite=True,
        )  # fmt: skip
        made += 1
    log(f"{config.sets} {config.kind} sets under {root} ({made} written now)")
    return root


def _made_for(path: Path, base: BaseModelInfo) -> AdapterSet | None:
    """The set at `path` if a previous run left one for `base` there."""
    try:
        return load_adapter_set(path, base)
    except (AdapterError, OSError):
        return None


def run_many_sets_bench(config: ManySetsConfig, log: Callable[[str], None] = print) -> dict:
    sets_dir = make_sets(config, log)
    names = sorted(path.name for path in sets_dir.iterdir() if (path / "manifest.json").is_file())[: config.sets]
    rng = random.Random(0)
    load = config.load
    prompts = [[rng.randrange(100, _vocab(load.model_dir)) for _ in range(load.prompt_len)] for _ in range(load.num_requests)]
    weights = [1 / (rank + 1) ** config.zipf_alpha for rank in range(len(names))]
    workloads = {
        "base": [SERVED_NAME] * load.num_requests,
        "uniform": [rng.choice(names) for _ in prompts],
        f"zipf (alpha {config.zipf_alpha:g})": rng.choices(names, weights=weights, k=load.num_requests),
    }
    port = free_port()
    command = _server_command(config, sets_dir, port)
    started = time.perf_counter()
    results: dict[str, dict] = {}
    with serving(command, port, load.log_dir / f"many-sets-{config.kind}.log", log) as process:
        start_seconds = time.perf_counter() - started
        listing = _listing(port)
        registration = sum(entry["load_seconds"] for entry in listing["data"])
        rss_registered = _tree_rss(process)
        log(f"{len(listing['data'])} sets registered in {registration:.1f} s (server ready after {start_seconds:.1f} s)")
        asyncio.run(run_load(port, prompts[:8], load, [SERVED_NAME] * 8))  # warm-up
        for name, models in workloads.items():
            before = _swap_in_buckets(port)
            seconds, ttfts, tokens = asyncio.run(run_load(port, prompts, load, models))
            run = summarise(name, seconds, ttfts, tokens)
            during = {bound: count - before.get(bound, 0.0) for bound, count in _swap_in_buckets(port).items()}
            swap_ins = during.get(float("inf"), 0.0)
            results[name] = asdict(run) | {
                "swap_ins": swap_ins, "swap_ins_per_second": swap_ins / seconds,
                "swap_in_p50": histogram_quantile(0.5, during), "swap_in_p99": histogram_quantile(0.99, during),
                "distinct_sets": len(set(models) - {SERVED_NAME}),
            }  # fmt: skip
            log(f"{name}: {run.tokens_per_second:.1f} tok/s, TTFT p50 {run.ttft_p50 * 1000:.0f} ms, {swap_ins:.0f} swap-ins")
        idle = {source: _idle_swap_ins(port, _listing(port), source) for source in ("host", "disk")}
        log("idle engine swap-ins: " + ", ".join(f"{source} p50 {_ms(v['p50'])} ms" for source, v in idle.items()))
        listing = _listing(port)
        rss_after = _tree_rss(process)
    host_copies = [entry for entry in listing["data"] if entry["tier"] == "host"]
    base_tps = results["base"]["tokens_per_second"]
    return {
        "config": {"kind": config.kind, "sets": config.sets, "slots": config.slots, "zipf_alpha": config.zipf_alpha}
        | {k: str(v) if isinstance(v, Path) else v for k, v in asdict(load).items()},
        "registration_seconds": registration,
        "server_start_seconds": start_seconds,
        "results": results,
        "ratios": {name: result["tokens_per_second"] / base_tps for name, result in results.items() if name != "base"},
        "idle_swap_in": idle,
        "tiers": {tier: sum(entry["tier"] == tier for entry in listing["data"]) for tier in ("slot", "host", "disk")},
        "host_bytes": listing["host_bytes"],
        "host_bytes_per_set": listing["host_bytes"] / len(host_copies) if host_copies else 0.0,
        "rss_registered": rss_registered,
        "rss_after": rss_after,
    }


def render_table(report: dict) -> str:
    config = report["config"]
    lines = [
        f"{config['sets']} {config['kind']} sets registered, {config['slots']} engine slots; "
        f"registration at start {report['registration_seconds']:.1f} s",
        "",
        "| workload | tok/s | × base | TTFT p50 (ms) | TTFT p99 (ms) | swap-ins/s | swap-in p50 (ms) | swap-in p99 (ms) | distinct sets |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, result in report["results"].items():
        ratio = report["ratios"].get(name, 1.0)
        lines.append(
            f"| {name} | {result['tokens_per_second']:.1f} | {ratio:.3f} | {result['ttft_p50'] * 1000:.0f} | "
            f"{result['ttft_p99'] * 1000:.0f} | {result['swap_ins_per_second']:.2f} | {_ms(result['swap_in_p50'])} | "
            f"{_ms(result['swap_in_p99'])} | {result['distinct_sets']} |"
        )
    tiers = report["tiers"]
    lines += [
        "",
        "swap-in latency on an idle engine (a copy from the host, or a read of the set's file): "
        + "; ".join(
            f"{source} p50 {_ms(v['p50'])} ms, p99 {_ms(v['p99'])} ms ({v['swap_ins']:.0f} swap-ins)"
            for source, v in report["idle_swap_in"].items()
        ),
        f"tiers after the run: {tiers['slot']} in slots, {tiers['host']} host copies, {tiers['disk']} on disk; "
        f"host copies {report['host_bytes'] / 2**20:.1f} MiB ({report['host_bytes_per_set'] / 2**20:.2f} MiB per set); "
        f"server RSS {report['rss_registered'] / 2**20:.0f} MiB registered, {report['rss_after'] / 2**20:.0f} MiB after",
    ]
    return "\n".join(lines)


def _ms(seconds: float | None) -> str:
    return "–" if seconds is None else f"{seconds * 1000:.0f}"


def write_json(report: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2))


def _server_command(config: ManySetsConfig, sets_dir: Path, port: int) -> list[str]:
    load = config.load
    command = [
        "-m", "server.cli", "serve", "--model", str(load.model_dir), "--port", str(port), "--host", "127.0.0.1",
        "--served-model-name", SERVED_NAME, "--max-model-len", str(load.max_model_len), "--dtype", load.dtype,
        "--kv-cache-gib", str(load.kv_cache_gib), "--cpu-threads", str(load.cpu_threads),
        "--adapter-sets", str(sets_dir), "--admin-token", ADMIN_TOKEN, "--adapter-kind", config.kind,
        f"--max-{config.kind}-sets", str(config.slots),
    ]  # fmt: skip
    if config.cache_dir is not None:
        command += ["--cache-dir", str(config.cache_dir)]
    return [sys.executable, *command]


def _idle_swap_ins(port: int, listing: dict, source: str, count: int = 24) -> dict:
    """Swap-in latency on an otherwise idle engine: one-token requests one after the other, each for
    a set that waits in `source` (host or disk), so each is one swap-in with no step to wait for."""
    names = [entry["name"] for entry in listing["data"] if entry["tier"] == source][:count]
    before = _swap_in_buckets(port, source)
    with httpx.Client(timeout=120) as http:
        for name in names:
            reply = http.post(f"http://127.0.0.1:{port}/v1/completions", json={"model": name, "prompt": "a", "max_tokens": 1})
            reply.raise_for_status()
    during = {bound: count - before.get(bound, 0.0) for bound, count in _swap_in_buckets(port, source).items()}
    return {"swap_ins": during.get(float("inf"), 0.0), "p50": histogram_quantile(0.5, during), "p99": histogram_quantile(0.99, during)}


def _vocab(model_dir: Path) -> int:
    return json.loads((model_dir / "config.json").read_text())["vocab_size"]


def _listing(port: int) -> dict:
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    return httpx.get(f"http://127.0.0.1:{port}/v1/adapter-sets", headers=headers, timeout=60).json()


def _swap_in_buckets(port: int, source: str | None = None) -> dict[float, float]:
    """The server's swap-in latency histogram, of one source (host, disk) or of all, every kind
    together: upper bound → cumulative count."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=60).text
    buckets: dict[float, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "orthoserve_adapter_swap_in_seconds_bucket" and source in (None, sample.labels["source"]):
                bound = float(sample.labels["le"])
                buckets[bound] = buckets.get(bound, 0.0) + sample.value
    return buckets


def histogram_quantile(q: float, buckets: dict[float, float]) -> float | None:
    """The q-quantile of a cumulative histogram, interpolated linearly inside its bucket (as
    Prometheus's `histogram_quantile`); None for an empty one. Past the last finite bound: that bound."""
    bounds = sorted(buckets)
    total = buckets[bounds[-1]] if bounds else 0.0
    if total == 0:
        return None
    rank, lower, below = q * total, 0.0, 0.0
    for bound in bounds:
        if buckets[bound] >= rank:
            if bound == float("inf"):
                return lower
            return lower + (bound - lower) * (rank - below) / (buckets[bound] - below)
        lower, below = bound, buckets[bound]
    return lower


def _tree_rss(process: subprocess.Popen) -> int:
    parent = psutil.Process(process.pid)
    return sum(member.memory_info().rss for member in [parent, *parent.children(recursive=True)])
