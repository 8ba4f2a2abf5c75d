"""`orthoserve bench-many-sets` registers more sets than slots, runs its three workloads over HTTP and
reports throughput, swap-ins and host copies."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from server.cli import app


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
    assert "| uniform |" in result.output
