"""A short soak in CI: mixed traffic on the shared server while sets are replaced and reloaded.

The full run (2,000 requests at concurrency 32, on a server of its own) is `orthoserve soak`; its
numbers are in docs/reliability.md. Here the CLI soaks the running shared server (`--url`), which it
must leave as it found it: the sets it loaded are gone at the end.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
from server_process import RunningServer, free_port
from typer.testing import CliRunner

from server.cli import app


def model_ids(server: RunningServer) -> list[str]:
    return [card["id"] for card in httpx.get(f"{server.base_url}/v1/models", timeout=30).json()["data"]]


def test_short_soak_has_no_failures_and_no_wrong_versions(
    server: RunningServer, adapter_root: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    before = model_ids(server)
    json_out = tmp_path / "soak.json"
    result = CliRunner().invoke(
        app,
        [
            "soak", "--url", server.base_url, "--admin-token", server.admin_token, "--model", str(tiny_model_dir),
            "--work-dir", str(adapter_root / "soak"), "--requests", "160", "--concurrency", "16",
            "--replace-every", "0.5", "--cycle-every", "1.5", "--json-out", str(json_out),
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(json_out.read_text())["report"]
    assert report["failures"] == 0 and report["wrong_version"] == 0, result.output
    assert report["ok"] >= 100, result.output
    assert report["replacements"] >= 2 and report["reloads"] >= 1, result.output
    assert report["by_target"].keys() == {server.model, "swapped/arc", "swapped/boolq", "swapped/piqa", "cycled", "static"}
    assert 0 < report["p50_seconds"] <= report["p99_seconds"], result.output
    assert report["rss_end_mib"] > 0 and report["rss_after_warmup_mib"] > 0, result.output
    assert "| wrong-version answers | 0 |" in result.output
    assert model_ids(server) == before


def test_soaking_a_url_nothing_listens_on_is_refused_before_any_set_is_written(tiny_model_dir: Path, tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    work_dir = tmp_path / "work"
    result = CliRunner().invoke(app, ["soak", "--url", url, "--model", str(tiny_model_dir), "--work-dir", str(work_dir)])
    assert result.exit_code == 1
    assert f"no process on this machine listens on the port of {url}" in result.output
    assert not work_dir.exists()
