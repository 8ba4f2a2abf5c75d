"""Import a PEFT LoRA folder (`adapter_config.json` + `adapter_model.safetensors`).

Keys: `base_model.model.model.layers.{i}.{self_attn|mlp}.{proj}.lora_A.weight` (r, in) and
`.lora_B.weight` (out, r). Options that change the math and that orthoserve does not serve (DoRA,
biases, fan_in_fan_out, per-module rank/alpha patterns, extra trained modules, layer subsets) are
refused, never ignored.
"""

from __future__ import annotations

from pathlib import Path

import torch

from adapters.base_model import BaseModelInfo
from adapters.errors import ImportFailed
from adapters.format import AdapterSet, save_adapter_set
from adapters.importers.common import check_keys, group_by_module, read_config, read_state, targets_of
from adapters.lora.config import LoraConfig
from adapters.tensor_names import tensor_name

# adapter_config.json field → the value orthoserve can serve (absent fields are fine).
_SERVABLE_OPTIONS: tuple[tuple[str, object], ...] = (
    ("use_dora", False),
    ("bias", "none"),
    ("fan_in_fan_out", False),
    ("rank_pattern", {}),
    ("alpha_pattern", {}),
    ("modules_to_save", None),
    ("layers_to_transform", None),
)


def import_peft_lora(
    source: Path | str,
    base: BaseModelInfo,
    out_dir: Path | str,
    *,
    task: str = "default",
    name: str | None = None,
    overwrite: bool = False,
) -> AdapterSet:
    source = Path(source)
    config_json = read_config(source)
    if config_json.get("peft_type", "LORA") != "LORA":
        raise ImportFailed(f"peft_type is {config_json['peft_type']!r}, not 'LORA'.")
    for option, servable in _SERVABLE_OPTIONS:
        value = config_json.get(option, servable)
        if value != servable and not (servable is None and not value):
            raise ImportFailed(f"adapter_config.json sets {option} = {value!r}; orthoserve serves only {servable!r}.")
    for field in ("r", "lora_alpha"):
        if field not in config_json:
            raise ImportFailed(f"adapter_config.json has no '{field}'.")
    r = int(config_json["r"])
    modules = group_by_module(read_state(source, ("adapter_model.safetensors", "adapter_model.bin")))
    targets = targets_of(modules, base, config_json.get("target_modules"))
    expected = {
        (layer, proj): {"lora_A.weight": (r, base.shape(proj)[1]), "lora_B.weight": (base.shape(proj)[0], r)}
        for layer in range(base.num_layers)
        for proj in targets
    }
    check_keys(modules, expected)
    tensors = {
        tensor_name(layer, proj, param): found[f"lora_{param}.weight"].to(torch.float32).contiguous()
        for (layer, proj), found in modules.items()
        for param in ("A", "B")
    }
    config = LoraConfig(
        rank=r, alpha=float(config_json["lora_alpha"]), use_rslora=bool(config_json.get("use_rslora", False))
    )
    return save_adapter_set(
        out_dir,
        name=name or Path(out_dir).name,
        config=config,
        base=base,
        target_modules=targets,
        tasks=[task],
        tensors=tensors,
        provenance={"imported_from": "peft lora", "source": str(source)},
        overwrite=overwrite,
    )
