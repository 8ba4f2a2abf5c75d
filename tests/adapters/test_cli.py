"""`orthoserve adapters ...` through typer's CliRunner."""

import json
from pathlib import Path

from safetensors.torch import save_file
from typer.testing import CliRunner

from adapters.cli import app
from adapters.format import load_adapter_set
from tests.tiny_model import build_tiny_llama

runner = CliRunner()


def test_init_then_validate(tiny_model_dir: Path, base, svd_cache_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "moore-set"
    args = ["init", "moore", "--base-model", str(tiny_model_dir), "--tasks", "arc-e,boolq,piqa", "--out", str(out)]
    result = runner.invoke(app, args + ["--param", "householder_count=4", "--cache-dir", str(svd_cache_dir)])
    assert result.exit_code == 0, result.output
    created = load_adapter_set(out, base)
    assert created.tasks == ("arc-e", "boolq", "piqa") and created.config.householder_count == 4
    result = runner.invoke(app, ["validate", str(out), "--base-model", str(tiny_model_dir)])
    assert result.exit_code == 0 and "is valid" in result.output

    bad = runner.invoke(app, args[:-1] + [str(tmp_path / "x"), "--param", "router_width=0"])
    assert bad.exit_code == 1 and "router_width" in bad.output


def test_validate_reports_the_reason(tiny_model_dir: Path, set_dirs: dict[str, Path], tmp_path: Path) -> None:
    other = tmp_path / "other-base"
    build_tiny_llama(other, seed=1)
    result = runner.invoke(app, ["validate", str(set_dirs["lora-random"]), "--base-model", str(other)])
    assert result.exit_code == 1
    assert "fingerprint_mismatch" in result.output and "was made for base model" in result.output


def test_inspect_imported_set(tiny_model_dir: Path, base, set_dirs: dict[str, Path], tmp_path: Path) -> None:
    source = load_adapter_set(set_dirs["lora-random"], base)
    folder = tmp_path / "peft"
    folder.mkdir()
    state = {
        f"base_model.model.model.layers.{layer}.self_attn.{proj}.lora_{param}.weight": getattr(m, param)
        for layer, proj, m in source.modules()
        for param in ("A", "B")
    }
    save_file(state, str(folder / "adapter_model.safetensors"))
    config = {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"]}
    (folder / "adapter_config.json").write_text(json.dumps(config))
    out = tmp_path / "imported"
    args = ["import", "peft-lora", str(folder), "--base-model", str(tiny_model_dir), "--out", str(out), "--task", "chat"]
    assert runner.invoke(app, args).exit_code == 0

    result = runner.invoke(app, ["inspect", str(out)])
    assert result.exit_code == 0, result.output
    lines = dict(line.split(":", 1) for line in result.output.strip().splitlines())
    assert lines["name"].strip() == "imported" and lines["kind"].strip() == "lora"
    assert lines["tasks"].strip() == "chat (1)"
    assert lines["targets"].strip() == "q_proj, v_proj x 2 layers"
    assert lines["hyper-parameters"].strip() == "rank=8, alpha=16.0, use_rslora=False"
    assert lines["tensors"].strip().startswith(f"8 ({source.nbytes:,} bytes;")
    assert lines["base fingerprint"].strip() == base.fingerprint
    assert "imported_from=peft lora" in lines["provenance"]

    (out / "adapter.safetensors").write_bytes(b"\0" * 4)
    broken = runner.invoke(app, ["inspect", str(out)])
    assert broken.exit_code == 1 and "file_truncated" in broken.output
