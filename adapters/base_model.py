"""Describe a Llama-family base model folder from its files alone (no model is instantiated).

The description gives what adapter sets are checked against: the layer count, the shape of every
targeted linear and a fingerprint of the base (config fields that change the math + the bytes of
every targeted weight). Weights are read from the folder's safetensors, never from a live model
(vLLM on CPU drops `layer.weight` after loading).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open

from adapters.errors import BaseModelInvalid
from adapters.safetensors_io import read_bytes, read_header

# Projection name → (sub-module of the decoder layer). Ordered: tensor order in sets and caches follows it.
PROJECTIONS: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_PROJECTION_PARENT = {
    "q_proj": "self_attn",
    "k_proj": "self_attn",
    "v_proj": "self_attn",
    "o_proj": "self_attn",
    "gate_proj": "mlp",
    "up_proj": "mlp",
    "down_proj": "mlp",
}
_SUPPORTED_MODEL_TYPES = ("llama", "mistral")
# Config fields that change what a targeted weight means; hashed into the fingerprint.
_FINGERPRINT_FIELDS = (
    "model_type",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "vocab_size",
)


def hf_weight_name(layer: int, proj: str) -> str:
    """Name of a targeted weight in a Hugging Face Llama checkpoint."""
    return f"model.layers.{layer}.{_PROJECTION_PARENT[proj]}.{proj}.weight"


@dataclass(frozen=True)
class BaseModelInfo:
    model_dir: Path
    model_type: str
    num_layers: int
    hidden_size: int
    vocab_size: int
    target_shapes: dict[str, tuple[int, int]]  # proj → (out, in) of `nn.Linear.weight`
    fingerprint: str
    _weight_files: dict[str, Path] = field(repr=False, default_factory=dict)

    def shape(self, proj: str) -> tuple[int, int]:
        return self.target_shapes[proj]

    def rank(self, proj: str) -> int:
        """d = min(in, out): the thin-SVD rank of this projection."""
        return min(self.target_shapes[proj])

    def read_weight(self, layer: int, proj: str) -> torch.Tensor:
        """The base weight W (out, in) as fp32, read from the model folder."""
        name = hf_weight_name(layer, proj)
        with safe_open(str(self._weight_files[name]), framework="pt") as handle:
            return handle.get_tensor(name).to(torch.float32)

    def targets(self) -> Iterator[tuple[int, str]]:
        for layer in range(self.num_layers):
            for proj in PROJECTIONS:
                yield layer, proj


def describe_base_model(model_dir: Path | str) -> BaseModelInfo:
    """Read `config.json` and the safetensors headers; hash the targeted weights into a fingerprint."""
    model_dir = Path(model_dir)
    config = _read_config(model_dir)
    shapes = _target_shapes(config)
    num_layers = int(config["num_hidden_layers"])
    weight_files = _weight_files(model_dir)
    headers = {path: read_header(path) for path in set(weight_files.values())}

    digest = hashlib.sha256()
    relevant = {key: config.get(key) for key in _FINGERPRINT_FIELDS}
    relevant["head_dim"] = _head_dim(config)
    digest.update(json.dumps(relevant, sort_keys=True).encode())
    for layer in range(num_layers):
        for proj in PROJECTIONS:
            name = hf_weight_name(layer, proj)
            if name not in weight_files:
                raise BaseModelInvalid(f"The base model in {model_dir} has no weight '{name}'.", field=name)
            path = weight_files[name]
            entry = headers[path][name]
            if entry.shape != shapes[proj]:
                raise BaseModelInvalid(
                    f"Base weight '{name}' has shape {list(entry.shape)}; config.json implies {list(shapes[proj])}.",
                    field=name,
                )
            digest.update(f"{name}:{entry.dtype}:{entry.shape}".encode())
            digest.update(read_bytes(path, entry))
    return BaseModelInfo(
        model_dir=model_dir,
        model_type=config["model_type"],
        num_layers=num_layers,
        hidden_size=int(config["hidden_size"]),
        vocab_size=int(config["vocab_size"]),
        target_shapes=shapes,
        fingerprint=digest.hexdigest()[:32],
        _weight_files=weight_files,
    )


def _read_config(model_dir: Path) -> dict:
    path = model_dir / "config.json"
    if not path.is_file():
        raise BaseModelInvalid(f"{model_dir} is not a model folder: it has no config.json.")
    config = json.loads(path.read_text())
    if config.get("model_type") not in _SUPPORTED_MODEL_TYPES:
        raise BaseModelInvalid(
            f"Base model type '{config.get('model_type')}' is not supported; expected one of {_SUPPORTED_MODEL_TYPES}.",
            field="model_type",
        )
    return config


def _head_dim(config: dict) -> int:
    return int(config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"])


def _target_shapes(config: dict) -> dict[str, tuple[int, int]]:
    hidden = int(config["hidden_size"])
    ffn = int(config["intermediate_size"])
    head_dim = _head_dim(config)
    q_width = int(config["num_attention_heads"]) * head_dim
    kv_width = int(config.get("num_key_value_heads") or config["num_attention_heads"]) * head_dim
    return {
        "q_proj": (q_width, hidden),
        "k_proj": (kv_width, hidden),
        "v_proj": (kv_width, hidden),
        "o_proj": (hidden, q_width),
        "gate_proj": (ffn, hidden),
        "up_proj": (ffn, hidden),
        "down_proj": (hidden, ffn),
    }


def _weight_files(model_dir: Path) -> dict[str, Path]:
    """Tensor name → safetensors file holding it (single file or sharded index)."""
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        return {name: model_dir / file for name, file in weight_map.items()}
    single = model_dir / "model.safetensors"
    if not single.is_file():
        raise BaseModelInvalid(f"{model_dir} holds no model.safetensors (nor a sharded index).")
    return {name: single for name in read_header(single)}
