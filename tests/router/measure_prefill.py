"""Measure what whole-prompt prefill (needed by BADIT) costs next to vLLM's chunked prefill (a manual
benchmark, not a test).

    python -m tests.router.measure_prefill --model ~/.cache/orthoserve/models/SmolLM2-135M-Instruct

Starts two servers on the model, one with BADIT capacity (chunked prefill off) and one without
(`--adapter-kind moore --adapter-kind lora`: vLLM's chunked prefill), and runs the same load on each:
`--decoders` streaming requests with short prompts generate while `--long` requests of
`--long-tokens` prompt tokens arrive. Prints, per server, the long requests' time to first token and
the decoders' inter-token latency (p50, p99, max) while the long prompts are prefilled.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from server_process import start_server  # noqa: E402


async def stream(client: httpx.AsyncClient, model: str, prompt: list[int], max_tokens: int) -> list[float]:
    """Arrival times of the request's start and of each streamed token."""
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True, "ignore_eos": True}
    times = [time.perf_counter()]
    async with client.stream("POST", "/v1/completions", json=body) as response:
        async for line in response.aiter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                times.append(time.perf_counter())
    return times


async def run_load(base_url: str, model: str, args: argparse.Namespace) -> dict[str, float]:
    async with httpx.AsyncClient(base_url=base_url, timeout=600) as client:
        decoders = [
            asyncio.create_task(stream(client, model, [100 + i, 200, 300, 400], args.decode_tokens)) for i in range(args.decoders)
        ]
        await asyncio.sleep(args.warmup)
        burst_start = time.perf_counter()
        longs = await asyncio.gather(
            *(stream(client, model, [(7 * i + 13 * j) % 40000 + 50 for j in range(args.long_tokens)], 4) for i in range(args.long))
        )
        burst_end = time.perf_counter()
        decoded = await asyncio.gather(*decoders)
    ttft = [times[1] - times[0] for times in longs]
    gaps = [b - a for times in decoded for a, b in zip(times[1:], times[2:]) if burst_start <= b <= burst_end]
    return {
        "long TTFT p50": statistics.median(ttft),
        "long TTFT max": max(ttft),
        "decoder ITL p50": statistics.median(gaps) if gaps else float("nan"),
        "decoder ITL p99": sorted(gaps)[int(0.99 * (len(gaps) - 1))] if gaps else float("nan"),
        "decoder ITL max": max(gaps) if gaps else float("nan"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--decoders", type=int, default=8)
    parser.add_argument("--decode-tokens", type=int, default=200)
    parser.add_argument("--long", type=int, default=2)
    parser.add_argument("--long-tokens", type=int, default=1500)
    parser.add_argument("--warmup", type=float, default=3.0)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="orthoserve-prefill-"))
    configs = {
        "BADIT capacity (whole-prompt prefill)": [],
        "no BADIT capacity (chunked prefill)": ["--adapter-kind", "moore", "--adapter-kind", "lora"],
    }
    results = {}
    for label, flags in configs.items():
        extra = ["--max-model-len", "2048", *flags]
        with start_server(args.model, "base", work / f"{len(results)}.log", extra) as server:
            results[label] = asyncio.run(run_load(server.base_url, "base", args))
    for label, numbers in results.items():
        print(label)
        for name, seconds in numbers.items():
            print(f"  {name:18} {seconds * 1000:9.1f} ms")


if __name__ == "__main__":
    main()
