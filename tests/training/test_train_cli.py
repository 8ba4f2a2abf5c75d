"""`orthoserve train` on the command line: a short run writes a valid set; bad input stops before training."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from adapters.base_model import describe_base_model
from adapters.format import load_adapter_set
from server.cli import app

runner = CliRunner()


def _train(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, ["train", *args])
    return result.exit_code, result.output


def test_train_command_writes_a_valid_set(tiny_model_dir, toy_data, tmp_path):
    out = tmp_path / "set"
    code, output = _train(
        "badit", "--base-model", str(tiny_model_dir), "--data", str(toy_data), "--out", str(out), "--batch-size", "8",
        "--epochs", "1", "--param", "route_top_k=3", "--cache-dir", str(tmp_path / "svd"), "--no-progress",
    )  # fmt: skip
    assert code == 0, output
    # Every default is printed, the overridden ones with their given value.
    assert "learning_rate=0.0002" in output and "schedule=cosine" in output and "batch_size=8" in output
    assert "route_top_k=3" in output and "dog=True" in output and "train_gate=True" in output
    assert "wrote badit set 'set'" in output and "4 steps" in output
    loaded = load_adapter_set(out, describe_base_model(tiny_model_dir))
    assert loaded.config.route_top_k == 3 and loaded.manifest.provenance["gate"] == "trained"


def _bad_data(tmp_path: Path, lines: list[str]) -> Path:
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize(
    ("kind", "extra", "lines", "message"),
    [
        ("moore", [], ['{"task": "a", "prompt": "x", "completion": " y"}', "{not json"], r"bad\.jsonl:2: not valid JSON"),
        ("moore", [], ['{"task": "a", "prompt": "x"}'], r"bad\.jsonl:1: field\(s\) completion missing"),
        ("moore", [], ['{"task": "a b", "prompt": "x", "completion": " y"}'], r"task name 'a b' is invalid"),
        ("moore", [], ['{"task": "a", "prompt": "x", "completion": " y", "label": 1}'], r"unknown field\(s\) label"),
        ("moore", ["--learning-rate", "-1"], None, r"--learning-rate: Input should be greater than 0"),
        ("moore", ["--schedule", "linear"], None, r"--schedule: Input should be 'constant' or 'cosine'"),
        ("moore", ["--param", "householder_count=0"], None, r"Invalid moore hyper-parameter"),
        ("moore", ["--match-params"], None, r"--match-params applies to LoRA only"),
        ("lora", ["--dog"], None, r"--dog applies to BADIT only"),
        ("badit", ["--param", "num_experts=64"], None, r"exceeds the rank"),
        ("badit", ["--param", "routing=task"], None, r"input-routed BADIT sets"),
        ("lora", ["--targets", "q_proj,lm_head"], None, r"Unknown target projection\(s\) lm_head"),
        ("lora", ["--max-length", "3"], None, r"leaves no room for its completion"),
        ("moore", ["--csr-tasks", "boolq"], None, r"exactly one of --data"),
    ],
)
def test_bad_input_stops_before_training(kind, extra, lines, message, tiny_model_dir, toy_data, tmp_path):
    data = _bad_data(tmp_path, lines) if lines else toy_data
    out = tmp_path / "out"
    code, output = _train(kind, "--base-model", str(tiny_model_dir), "--data", str(data), "--out", str(out), *extra)
    assert code == 2, output
    assert re.search(message, output), output
    assert "Loading weights" not in output and not out.exists()


def test_existing_output_needs_overwrite_and_missing_data_is_named(tiny_model_dir, toy_data, tmp_path):
    (tmp_path / "taken").mkdir()
    code, output = _train("lora", "--base-model", str(tiny_model_dir), "--data", str(toy_data), "--out", str(tmp_path / "taken"))
    assert code == 2 and "already exists; pass --overwrite" in output
    code, output = _train("lora", "--base-model", str(tiny_model_dir), "--data", str(tmp_path / "none.jsonl"), "--out", str(tmp_path / "o"))
    assert code == 2 and "none.jsonl does not exist" in output
