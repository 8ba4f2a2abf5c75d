"""Parallelism flags: pipeline parallelism is refused with adapter capacity before anything starts,
and tensor-parallel CPU workers get cores of their own unless the user chose them."""

from __future__ import annotations

import os
from pathlib import Path

from typer.testing import CliRunner

from server.cli import app
from server.engine.vllm import engine as vllm_engine


def test_pipeline_parallel_with_adapter_capacity_is_refused_at_start(tiny_model_dir: Path) -> None:
    result = CliRunner().invoke(
        app, ["serve", "--model", str(tiny_model_dir), "--pipeline-parallel-size", "2", "--admin-token", "t"]
    )
    assert result.exit_code != 0
    assert "pipeline-parallel" in result.output and "--tensor-parallel-size" in result.output


def test_tensor_parallel_cpu_workers_get_cores_of_their_own() -> None:
    cores = sorted(os.sched_getaffinity(0))
    assert vllm_engine.cpu_worker_thread_env(1)["VLLM_CPU_OMP_THREADS_BIND"] == "nobind"
    assert vllm_engine.cpu_worker_thread_env(1, 2)["VLLM_CPU_OMP_THREADS_BIND"] == f"{cores[0]}|{cores[1]}"
    assert vllm_engine.cpu_worker_thread_env(1, 2, bind="5|7")["VLLM_CPU_OMP_THREADS_BIND"] == "5|7"
    too_many = len(cores) + 1
    try:
        vllm_engine.cpu_core_binding(too_many, 1)
    except ValueError as error:
        assert f"{too_many} tensor-parallel workers" in str(error)
    else:
        raise AssertionError("more workers than cores must be refused")
