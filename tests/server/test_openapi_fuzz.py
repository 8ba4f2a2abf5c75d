"""schemathesis, run as its users run it, over the served `/openapi.json`: no request it builds makes a
server error.

Bodies name the served model (schemathesis parameter overrides), so requests get past the tag check
into vLLM's serving layer and the engine, and ask for a few tokens only, so that the run stays short.
CI runs the fuzzing phase (random values of every other field); schemathesis' coverage phase (boundary
and wrong-typed values) takes several minutes more, run it by hand with `--phases coverage,fuzzing`.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

OVERRIDES = {"model": None, "max_tokens": 4, "max_completion_tokens": 4, "max_output_tokens": 4}

pytestmark = pytest.mark.timeout(1200)


def test_no_request_makes_a_server_error(server, tmp_path: Path) -> None:
    config = tmp_path / "schemathesis.toml"
    values = {**OVERRIDES, "model": server.model}
    config.write_text("[parameters]\n" + "".join(f'"body.{name}" = {value!r}\n'.replace("'", '"') for name, value in values.items()))
    command = [
        sys.executable, "-c", "from schemathesis.cli import schemathesis; schemathesis()",
        "--config-file", str(config), "run", f"{server.base_url}/openapi.json",
        "--checks", "not_a_server_error", "--phases", "fuzzing", "--max-examples", "20",
        "--workers", "1", "--seed", "1", "--no-color",
    ]  # fmt: skip
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=1100, check=False)
    report = done.stdout[-15000:] + done.stderr[-3000:]
    assert done.returncode == 0, report
    assert "generated" in report and "Server error" not in report, report
