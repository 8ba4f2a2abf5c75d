"""`orthoserve bench-many-sets` registers more sets than slots, runs its three workloads over HTTP and
reports throughput, swap-ins and host copies."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from server.cli import app
from server.tools.many_sets_bench import histogram_quantile


def test_bench_many_sets_reports_every_workload(tiny_model_dir: Path, tmp_path: Path) -> None:
    json_out = tmp_path / "many.json"
    result = CliRunner().invoke(
        app,
        [
            "bench-many-sets", "--model", str(tiny_model_dir), "--sets", "12", "--slots", "3", "--num-requests", "24",
            "--concurrency", "6", "--prompt-len", "8", "--output-len", "4", "--work-dir", str(tmp_path / "work"),
            "--json-out", str(json_out), "--cache-dir", str(tmp_path / "cache"),
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(json_out.read_text())
    assert set(report["results"]) == {"base", "uniform", "zipf (alpha 1)"}
    assert report["results"]["base"]["swap_ins"] == 0
    assert report["results"]["uniform"]["swap_ins"] > 0 and report["results"]["uniform"]["distinct_sets"] > 3
    assert all(0 < ratio for ratio in report["ratios"].values())
    assert sum(report["tiers"].values()) == 12 and report["tiers"]["slot"] <= 3
    assert report["tiers"]["host"] > 0 and report["host_bytes_per_set"] > 0
    assert report["registration_seconds"] > 0
    uniform = report["results"]["uniform"]
    assert 0 < uniform["swap_in_p50"] <= uniform["swap_in_p99"] and report["results"]["base"]["swap_in_p50"] is None
    idle_from_host = report["idle_swap_in"]["host"]
    assert idle_from_host["swap_ins"] > 0 and 0 < idle_from_host["p50"] <= idle_from_host["p99"]
    assert "| uniform |" in result.output


def test_histogram_quantile_interpolates_inside_the_bucket() -> None:
    buckets = {0.01: 2.0, 0.02: 6.0, 0.05: 10.0, float("inf"): 10.0}  # 2 under 10 ms, 4 in 10–20 ms, 4 in 20–50 ms
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.01 + 0.01 * (5 - 2) / 4)
    assert histogram_quantile(0.1, buckets) == pytest.approx(0.005)
    assert histogram_quantile(0.99, buckets) == pytest.approx(0.02 + 0.03 * (9.9 - 6) / 4)
    assert histogram_quantile(0.5, {0.01: 0.0, float("inf"): 0.0}) is None
    assert histogram_quantile(0.99, {0.01: 1.0, float("inf"): 4.0}) == 0.01  # past the last finite bound
