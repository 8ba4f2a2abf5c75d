"""`orthoserve eval --scoring loglikelihood` against a real server (tiny Llama, real HTTP, the openai
client inside the command), with the PyTorch reference scoring the same items for fidelity."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from adapters.initialise import init_adapter_set

SET = "eval-moore"


@pytest.fixture(scope="module")
def moore_set(server, adapter_root, tiny_base, test_svd_cache) -> Path:
    set_dir = adapter_root / SET
    # Random init: the set computes a function other than the base model's.
    init_adapter_set(set_dir, kind="moore", base=tiny_base, tasks=["arc-e", "piqa"], mode="random", cache_dir=test_svd_cache, seed=3, overwrite=True)
    headers = {"Authorization": f"Bearer {server.admin_token}"}
    with httpx.Client(base_url=server.base_url, headers=headers, timeout=300) as http:
        response = http.post("/v1/adapter-sets", json={"name": SET, "path": str(set_dir)})
        assert response.status_code == 201, response.text
        yield set_dir
        http.delete(f"/v1/adapter-sets/{SET}", params={"wait": True})


def run_eval(server, tiny_model_dir: Path, model: str, out: Path, *extra: str) -> list[dict]:
    command = [
        sys.executable, "-m", "server.cli", "eval", "--base-model", str(tiny_model_dir), "--model", model,
        "--tasks", "arc-e,copa", "--limit", "3", "--route-task", "copa=piqa", "--base-url", f"{server.base_url}/v1",
        "--jsonl-out", str(out), *extra,
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    assert "| arc-e | 3 | 0 |" in done.stdout and "| copa | 3 | 0 |" in done.stdout, done.stdout
    return [json.loads(line) for line in out.read_text().splitlines()]


def test_served_loglikelihoods_match_the_reference_and_differ_from_the_base(
    server, moore_set, tiny_model_dir, test_svd_cache, tmp_path
) -> None:
    fidelity = tmp_path / "fidelity.jsonl"
    rows = run_eval(
        server, tiny_model_dir, f"{SET}/{{task}}", tmp_path / "set.jsonl",
        "--reference", "--set-dir", str(moore_set), "--cache-dir", str(test_svd_cache), "--fidelity-out", str(fidelity),
    )  # fmt: skip
    base = run_eval(server, tiny_model_dir, server.model, tmp_path / "base.jsonl", "--set-name", "base")
    assert [(r["set"], r["task"]) for r in rows] == [(SET, "arc-e")] * 3 + [(SET, "copa")] * 3
    assert [r["set"] for r in base] == ["base"] * 6
    for row in rows:
        assert len(row["loglikelihoods"]) == (4 if row["task"] == "arc-e" else 2)
        assert all(isinstance(value, float) and value < 0 for value in row["loglikelihoods"] + row["letter_loglikelihoods"])
        assert row["pred"] == max(range(len(row["loglikelihoods"])), key=row["loglikelihoods"].__getitem__)
        assert row["correct"] == (row["pred"] == row["gold"])
    # The set is not the base model: a fidelity check that could not tell them apart would prove nothing.
    gaps = [abs(a - b) for s, t in zip(rows, base) for a, b in zip(s["loglikelihoods"], t["loglikelihoods"])]
    assert max(gaps) > 0.05
    records = [json.loads(line) for line in fidelity.read_text().splitlines()]
    assert len(records) == 6
    for record in records:
        for key in ("", "_letter"):
            assert record[f"served{key}"] == pytest.approx(record[f"reference{key}"], abs=2e-3)
