"""`orthoserve bench` runs every scenario on every engine and reports tok/s, ratios and resident bytes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from server.cli import app

pytestmark = pytest.mark.first


def test_bench_reports_every_scenario_and_ratio(tiny_model_dir: Path, tmp_path: Path) -> None:
    json_out = tmp_path / "bench.json"
    result = CliRunner().invoke(
        app,
        [
            "bench", "--model", str(tiny_model_dir), "--num-requests", "8", "--prompt-len", "8",
            "--output-len", "4", "--repeats", "1", "--moore-sets", "2", "--many-tasks", "40",
            "--lora-adapters", "8", "--lora-resident", "12", "--work-dir", str(tmp_path / "work"),
            "--json-out", str(json_out), "--cache-dir", str(tmp_path / "cache"),
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(json_out.read_text())
    by_engine = {}
    for row in report["rows"]:
        by_engine.setdefault(row["engine"], set()).add(row["scenario"])
    assert by_engine["orthoserve"] >= {
        "base", "moore, 1 set", "moore, 2 sets", "moore, 40 tasks", "badit", "lora, 1 adapter", "lora, 8 adapters",
        "lora, 8 adapters, 12 resident", "mixed (base+moore+badit+lora)",
    }  # fmt: skip
    assert by_engine["no adapter capacity"] == {"base"}
    assert by_engine["vllm (enable_lora)"] == {"base", "lora, 4 adapters", "lora, 8 adapters"}
    assert all(row["tokens_per_s"] > 0 for row in report["rows"])
    ratios = {ratio["name"]: ratio for ratio in report["ratios"]}
    assert all(ratio["value"] > 0 for ratio in ratios.values())
    assert "base: with adapter capacity / without" in ratios and "lora 8: orthoserve / vLLM stock" in ratios
    resident = report["resident_bytes"]
    assert resident["moore-0"] > resident["lora-0"] > 0
    assert resident["moore (many tasks)"] > resident["moore-0"], "each task adds its task vectors"
    assert resident["engine: base_factors"] > 0 and resident["engine: capacity"] > 0
    assert "lora, 8 adapters / base" in result.output
    hardware = report["hardware"]
    assert hardware["device"] == "cpu" and hardware["kernel"] == "torch._grouped_mm"
    assert hardware["bank_dtype"] in ("float32", hardware["model_dtype"])
    assert "bf16 matmul" in hardware["cpu"] and f"bank_dtype: {hardware['bank_dtype']}" in result.output
