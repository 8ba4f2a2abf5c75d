"""Client side of scripts/image-check.sh: requests to the server in the container, from the host's venv.

    python scripts/image_check_client.py chat --url URL --set csr --task boolq
    python scripts/image_check_client.py load --url URL --token TOKEN --set mtl --path /adapter-sets/mtl --task piqa
    python scripts/image_check_client.py metrics --url URL --set csr --task boolq
    python scripts/image_check_client.py prometheus --url URL --prometheus PROM_URL --set mtl --task winogrande

Each command exits non-zero with a message when its check fails.
"""

from __future__ import annotations

import argparse
import sys
import time

import httpx
from openai import OpenAI
from prometheus_client.parser import text_string_to_metric_families

ADAPTER_HEADER = "x-orthoserve-adapter-set"


def client(url: str) -> OpenAI:
    return OpenAI(base_url=f"{url}/v1", api_key="unused", timeout=120, max_retries=0)


def base_model(url: str) -> str:
    models = client(url).models.list().data
    base = [m.id for m in models if (m.model_extra or {}).get("orthoserve") is None]
    if len(base) != 1:
        sys.exit(f"expected one base model in /v1/models, got {[m.id for m in models]}")
    return base[0]


def chat_task(url: str, set_name: str, task: str) -> None:
    """One chat request to `set/task`; the reply must come from that set (response header)."""
    raw = client(url).chat.completions.with_raw_response.create(
        model=f"{set_name}/{task}",
        messages=[{"role": "user", "content": "Is Paris the capital of France? Answer yes or no."}],
        max_tokens=8,
        temperature=0,
    )
    reply = raw.parse()
    served_by = raw.headers.get(ADAPTER_HEADER, "")
    if not served_by.startswith(f"{set_name}@"):
        sys.exit(f"{set_name}/{task}: {ADAPTER_HEADER} is {served_by!r}")
    if reply.model != f"{set_name}/{task}" or not reply.choices[0].message.content:
        sys.exit(f"{set_name}/{task}: unexpected reply {reply}")
    print(f"{set_name}/{task} ({served_by}): {reply.choices[0].message.content!r}")


def chat(args: argparse.Namespace) -> None:
    model = base_model(args.url)
    reply = client(args.url).chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "What is the capital of France? Answer in one sentence."}],
        max_tokens=30,
        temperature=0,
    )
    answer = reply.choices[0].message.content or ""
    # The baked-in SmolLM2-135M-Instruct answers this one right; a broken model or tokenizer does not.
    if "Paris" not in answer:
        sys.exit(f"base model {model}: unexpected answer {answer!r}")
    print(f"{model}: {answer!r}")
    chat_task(args.url, args.set, args.task)


def load(args: argparse.Namespace) -> None:
    admin = httpx.Client(base_url=args.url, timeout=600)
    unauthorized = admin.post("/v1/adapter-sets", json={"name": args.set, "path": args.path})
    if unauthorized.status_code != 401:
        sys.exit(f"POST /v1/adapter-sets without the token: {unauthorized.status_code}, expected 401")
    headers = {"Authorization": f"Bearer {args.token}"}
    response = admin.post("/v1/adapter-sets", json={"name": args.set, "path": args.path}, headers=headers)
    if response.status_code != 201:
        sys.exit(f"POST /v1/adapter-sets: {response.status_code} {response.text}")
    loaded = response.json()
    if loaded["name"] != args.set or args.task not in loaded["tasks"]:
        sys.exit(f"POST /v1/adapter-sets: unexpected body {loaded}")
    print(f"loaded {args.set}: kind {loaded['kind']}, tasks {loaded['tasks']}, {loaded['load_seconds']:.2f}s")
    listed = admin.get("/v1/adapter-sets", headers=headers).json()
    if args.set not in str(listed):
        sys.exit(f"GET /v1/adapter-sets does not list {args.set}: {listed}")
    chat_task(args.url, args.set, args.task)


def metrics(args: argparse.Namespace) -> None:
    response = httpx.get(f"{args.url}/metrics", timeout=30)
    response.raise_for_status()
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    orthoserve = sorted(name for name in families if name.startswith("orthoserve_"))
    if not orthoserve:
        sys.exit("/metrics has no orthoserve_ series")
    latency = families.get("orthoserve_e2e_request_latency_seconds")
    counts = [
        s for s in (latency.samples if latency else [])
        if s.name.endswith("_count") and s.labels.get("set") == args.set and s.labels.get("task") == args.task
    ]
    if not counts or counts[0].value < 1:
        sys.exit(f"/metrics: no e2e latency sample for set={args.set} task={args.task}")
    print(f"/metrics: {len(orthoserve)} orthoserve families")


def query(prometheus: str, expr: str) -> list[dict]:
    response = httpx.get(f"{prometheus}/api/v1/query", params={"query": expr}, timeout=10)
    body = response.json()
    if response.status_code != 200 or body.get("status") != "success":
        sys.exit(f"Prometheus query {expr!r}: {response.status_code} {body}")
    return body["data"]["result"]


def wait_for(prometheus: str, expr: str, timeout_s: float = 90) -> list[dict]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            result = query(prometheus, expr)
        except httpx.TransportError:
            result = []  # not listening yet
        if result:
            return result
        time.sleep(1)
    sys.exit(f"Prometheus: no result for {expr!r} within {timeout_s:.0f}s")


def prometheus(args: argparse.Namespace) -> None:
    wait_for(args.prometheus, 'up{job="orthoserve"} == 1')
    wait_for(args.prometheus, 'up{job="orthoserve-vllm"} == 1')
    # A request of this task only now, while Prometheus scrapes: its histogram must arrive.
    chat_task(args.url, args.set, args.task)
    selector = f'set="{args.set}",task="{args.task}"'
    wait_for(args.prometheus, f"orthoserve_e2e_request_latency_seconds_count{{{selector}}} >= 1")
    buckets = query(args.prometheus, f"orthoserve_e2e_request_latency_seconds_bucket{{{selector}}}")
    bounds = {b["metric"]["le"] for b in buckets}
    if "+Inf" not in bounds or len(bounds) < 2:
        sys.exit(f"Prometheus: the histogram of {selector} has buckets {sorted(bounds)}")
    p95 = query(
        args.prometheus,
        f"histogram_quantile(0.95, sum by (le) (orthoserve_e2e_request_latency_seconds_bucket{{{selector}}}))",
    )
    print(f"Prometheus: {len(bounds)} buckets for {selector}, p95 bound {p95[0]['value'][1]}s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("chat", "load", "metrics", "prometheus"):
        command = commands.add_parser(name)
        command.add_argument("--url", required=True)
        command.add_argument("--set", required=True)
        command.add_argument("--task", required=True)
    commands.choices["load"].add_argument("--token", required=True)
    commands.choices["load"].add_argument("--path", required=True)
    commands.choices["prometheus"].add_argument("--prometheus", required=True)
    args = parser.parse_args()
    {"chat": chat, "load": load, "metrics": metrics, "prometheus": prometheus}[args.command](args)


if __name__ == "__main__":
    main()
