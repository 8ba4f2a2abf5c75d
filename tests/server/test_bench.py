"""`orthoserve bench` runs every scenario on both engines and reports tok/s, ratios and resident bytes."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from server.cli import app


def test_bench_reports_every_scenario_and_ratio(tiny_model_dir: Path, tmp_path: Path) -> None:
    json_out = tmp_path / "bench.json"
    result = CliRunner().invoke(
        app,
        [
            "bench", "--model", str(tiny_model_dir), "--num-requests", "4", "--prompt-len", "8",
            "--output-len", "4", "--repeats", "1", "--num-lora", "2", "--work-dir", str(tmp_path / "work"),
            "--json-out", str(json_out), "--cache-dir", str(tmp_path / "cache"),
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(json_out.read_text())
    scenarios = {(row["engine"], row["scenario"]) for row in report["rows"]}
    assert {scenario for _, scenario in scenarios} >= {
        "base", "moore (1 task)", "moore (8 tasks mixed)", "badit", "lora", "lora (vLLM stock path)",
    }
    assert all(row["tokens_per_s"] > 0 for row in report["rows"])
    assert len(report["ratios"]) == 6 and all(ratio["value"] > 0 for ratio in report["ratios"])
    assert report["resident_bytes"]["moore"] > report["resident_bytes"]["lora-0"] > 0
    assert report["resident_bytes"]["shared base factors (MoORE)"] > 0
    assert "lora: orthoserve / vLLM stock" in result.output
