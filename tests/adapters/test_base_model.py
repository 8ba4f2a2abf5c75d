import json
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from adapters.base_model import describe_base_model
from adapters.errors import BaseModelInvalid


def test_shapes_and_stable_fingerprint(tiny_model_dir: Path, base) -> None:
    assert base.num_layers == 2
    assert base.target_shapes["k_proj"] == (64, 128) and base.target_shapes["down_proj"] == (128, 256)
    assert describe_base_model(tiny_model_dir).fingerprint == base.fingerprint


def test_fingerprint_follows_the_targeted_weights(tiny_model_dir: Path, base, tmp_path: Path) -> None:
    copy = Path(shutil.copytree(tiny_model_dir, tmp_path / "m"))
    tensors = load_file(str(copy / "model.safetensors"))
    tensors["lm_head.weight"] += 1.0  # not a targeted weight
    save_file(tensors, str(copy / "model.safetensors"), metadata={"format": "pt"})
    assert describe_base_model(copy).fingerprint == base.fingerprint
    tensors["model.layers.1.mlp.up_proj.weight"][0, 0] += 1e-3
    save_file(tensors, str(copy / "model.safetensors"), metadata={"format": "pt"})
    assert describe_base_model(copy).fingerprint != base.fingerprint


def test_unusable_folders_are_reported(tiny_model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(BaseModelInvalid, match="config.json"):
        describe_base_model(tmp_path)
    copy = Path(shutil.copytree(tiny_model_dir, tmp_path / "m"))
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps(config | {"model_type": "gpt2"}))
    with pytest.raises(BaseModelInvalid, match="gpt2"):
        describe_base_model(copy)
    (copy / "config.json").write_text(json.dumps(config))
    tensors = load_file(str(copy / "model.safetensors"))
    del tensors["model.layers.0.self_attn.o_proj.weight"]
    save_file(tensors, str(copy / "model.safetensors"))
    with pytest.raises(BaseModelInvalid, match="model.layers.0.self_attn.o_proj.weight"):
        describe_base_model(copy)
