"""Measure adapter-set load and replace latency and resident memory on a real server (a manual
benchmark, not a test).

    python -m tests.router.measure_load --model ~/.cache/orthoserve/models/SmolLM2-135M-Instruct

Writes MoORE sets (paper hyper-parameters, 1 and 9 tasks) for the model, starts `orthoserve serve`
with an admin token, loads one set once to warm the SVD factor cache, then loads it `--loads` times
under fresh names (each unloaded again, while a 1-task set stays resident), then replaces one name
`--loads` times (`"replace": true`, alternating two 9-task sets), and prints p50/p95 of the
server-side load and replace times, the engine bytes per resident set and per task, and the RSS of
the server's process tree with one set resident.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from server_process import start_server  # noqa: E402

from adapters.base_model import describe_base_model  # noqa: E402
from adapters.initialise import init_adapter_set  # noqa: E402

CSR_TASKS = ["arc-e", "arc-c", "boolq", "obqa", "piqa", "siqa", "hellaswag", "winogrande", "csqa"]


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def tree_rss(pid: int) -> int:
    process = psutil.Process(pid)
    return sum(member.memory_info().rss for member in [process, *process.children(recursive=True)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--loads", type=int, default=20)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="orthoserve-load-"))
    base = describe_base_model(args.model)
    nine = init_adapter_set(work / "sets" / "csr9", kind="moore", base=base, tasks=CSR_TASKS)
    nine_b = init_adapter_set(work / "sets" / "csr9b", kind="moore", base=base, tasks=CSR_TASKS, mode="random", seed=1)
    one = init_adapter_set(work / "sets" / "csr1", kind="moore", base=base, tasks=CSR_TASKS[:1])
    with start_server(args.model, "base", work / "server.log", ["--adapter-root", str(work / "sets")]) as server:
        admin = httpx.Client(
            base_url=server.base_url, headers={"Authorization": f"Bearer {server.admin_token}"}, timeout=600
        )
        rss_before = tree_rss(server.process.pid)
        cold = admin.post("/v1/adapter-sets", json={"name": "warmup", "path": str(nine.path)}).json()
        rss_loaded = tree_rss(server.process.pid)
        admin.delete("/v1/adapter-sets/warmup", params={"wait": True})
        # One set stays resident so the shared base factors stay loaded; each timed load is then the set's own cost.
        single = admin.post("/v1/adapter-sets", json={"name": "one", "path": str(one.path)}).json()
        server_seconds, client_seconds = [], []
        for index in range(args.loads):
            started = time.perf_counter()
            info = admin.post("/v1/adapter-sets", json={"name": f"s{index}", "path": str(nine.path)}).json()
            client_seconds.append(time.perf_counter() - started)
            server_seconds.append(info["load_seconds"])
            admin.delete(f"/v1/adapter-sets/s{index}", params={"wait": True})
        replace_seconds = []
        for index in range(args.loads):
            path = (nine, nine_b)[index % 2].path
            response = admin.post("/v1/adapter-sets", json={"name": "mtl", "path": str(path), "replace": True}).json()
            replace_seconds.append(response["load_seconds"])
    per_task = (info["bytes"] - single["bytes"]) / (len(CSR_TASKS) - 1)
    print(f"first load (cold SVD cache unless already cached): {cold['load_seconds']:.2f} s")
    print(
        f"warm load over {args.loads}: server p50 {statistics.median(server_seconds):.3f} s, "
        f"p95 {percentile(server_seconds, 0.95):.3f} s; client p50 {statistics.median(client_seconds):.3f} s, "
        f"p95 {percentile(client_seconds, 0.95):.3f} s"
    )
    print("server load seconds:", " ".join(f"{value:.2f}" for value in server_seconds))
    print(
        f"replace over {args.loads}: server p50 {statistics.median(replace_seconds):.3f} s, "
        f"p95 {percentile(replace_seconds, 0.95):.3f} s"
    )
    print(f"engine bytes per resident set: 9 tasks {info['bytes']:,}, 1 task {single['bytes']:,}")
    print(f"engine bytes per task: {per_task:,.0f}")
    print(f"server tree RSS: {rss_before:,} before, {rss_loaded:,} with the first set (incl. shared SVD factors)")


if __name__ == "__main__":
    main()
