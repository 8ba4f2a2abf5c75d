"""Start-up problems end with one clear line on stderr and a non-zero exit, never a traceback, and before
vLLM is imported (a bad configuration fails in seconds, not after the engine's imports)."""

from __future__ import annotations

import concurrent.futures
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from server_process import REPO_ROOT, TINY_MODEL_NAME, free_port, server_command

BAD_SETUPS = {
    # name → (how to change the command line, given a scratch folder, and words the error must name)
    "flag-not-a-number": (lambda cmd, tmp: [*cmd, "--max-queued-requests", "many"], "--max-queued-requests"),
    "flag-out-of-range": (lambda cmd, tmp: [*cmd, "--max-queued-requests", "-1"], "--max-queued-requests"),
    "unknown-flag": (lambda cmd, tmp: [*cmd, "--max-queue", "3"], "--max-queue"),
    "missing-model-folder": (lambda cmd, tmp: _with(cmd, "--model", str(tmp / "nowhere")), "no such directory"),
    "context-longer-than-the-model": (lambda cmd, tmp: _with(cmd, "--max-model-len", "1024"), "max_position_embeddings"),
    "unsupported-architecture": (lambda cmd, tmp: _with(cmd, "--model", str(_gpt2(_value(cmd, "--model"), tmp))), "gpt2"),
    "missing-adapter-sets-folder": (lambda cmd, tmp: [*cmd, "--adapter-sets", str(tmp / "no-sets")], "--adapter-sets"),
    "unreadable-admin-token-file": (
        lambda cmd, tmp: _without_token([*cmd, "--admin-token-file", str(tmp / "no-token")]), "no-token"
    ),
    "admin-token-given-twice": (lambda cmd, tmp: [*cmd, "--admin-token-file", str(tmp)], "not both"),
    "admin-port-without-token": (lambda cmd, tmp: _without_token([*cmd, "--admin-port", "0"]), "--admin-port"),
}


def _value(command: list[str], flag: str) -> str:
    return command[command.index(flag) + 1]


def _with(command: list[str], flag: str, value: str) -> list[str]:
    index = command.index(flag)
    return [*command[: index + 1], value, *command[index + 2 :]]


def _without_token(command: list[str]) -> list[str]:
    index = command.index("--admin-token")
    return [*command[:index], *command[index + 2 :]]


def _gpt2(source: str, tmp: Path) -> Path:
    """A copy of the model at `source` that says it is a GPT-2."""
    model = tmp / "gpt2-like"
    shutil.copytree(source, model)
    config = json.loads((model / "config.json").read_text())
    config.update(model_type="gpt2", architectures=["GPT2LMHeadModel"])
    (model / "config.json").write_text(json.dumps(config))
    return model


@pytest.fixture(scope="module")
def outcomes(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, subprocess.CompletedProcess]:
    """Every bad start-up, run side by side (each is a process that imports the CLI and exits)."""

    def run(case: str) -> subprocess.CompletedProcess:
        tmp = tmp_path_factory.mktemp(case)
        change, _ = BAD_SETUPS[case]
        command = change(server_command(tiny_model_dir, TINY_MODEL_NAME, free_port()), tmp)
        return subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)

    with concurrent.futures.ThreadPoolExecutor(os.cpu_count()) as pool:
        return dict(zip(BAD_SETUPS, pool.map(run, BAD_SETUPS)))


@pytest.mark.parametrize("case", sorted(BAD_SETUPS))
def test_bad_start_up_is_one_line_and_a_non_zero_exit(case: str, outcomes: dict[str, subprocess.CompletedProcess]):
    result, named = outcomes[case], BAD_SETUPS[case][1]
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("orthoserve: error: ")]
    assert len(errors) == 1, result.stderr
    assert named in errors[0], result.stderr
    assert "vllm" not in result.stderr.lower(), result.stderr  # vLLM logs as soon as it is imported
