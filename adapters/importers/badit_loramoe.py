"""Import a BADIT checkpoint saved in PEFT's LoRAMoE layout.

Keys per adapted matrix (`<prefix>.layers.{i}.{self_attn|mlp}.{proj}.`):
    lora_A.{e}.weight   A_e  (r, in),  e = 0 … K−1
    lora_B.{e}.weight   B_e  (out, r)
    lora_route.weight   G    (K, in)   optional (see GATE_KEYS)
`adapter_config.json` gives `lora_alpha` (s = α/r); K and r come from the shapes. The frozen residual
W_res is not in the checkpoint: it is recomputed from the shared SVD of the base weights at load.

The reference training code never trains nor saves G. A checkpoint without a gate is refused unless
the caller chooses `uniform_gate=True`: G = 0, so w = softmax(0) = 1/K for every input — an untrained
routing, recorded in the set's provenance.
"""

from __future__ import annotations

from pathlib import Path

import torch

from adapters.badit.config import BaditConfig
from adapters.base_model import BaseModelInfo
from adapters.errors import ImportFailed
from adapters.format import AdapterSet, save_adapter_set
from adapters.importers.common import check_keys, group_by_module, read_config, read_state, targets_of
from adapters.tensor_names import tensor_name

# Names a gate may have, checked in this order.
GATE_KEYS: tuple[str, ...] = (
    "lora_route.weight",  # LoRAMoE's router
    "lora_gate.weight",  # orthoserve's trainer
)


def import_badit_checkpoint(
    source: Path | str,
    base: BaseModelInfo,
    out_dir: Path | str,
    *,
    uniform_gate: bool = False,
    task: str = "default",
    name: str | None = None,
    overwrite: bool = False,
) -> AdapterSet:
    source = Path(source)
    config_json = read_config(source)
    if "lora_alpha" not in config_json:
        raise ImportFailed("adapter_config.json has no 'lora_alpha' (BADIT scales experts by α/r).")
    modules = group_by_module(read_state(source, ("adapter_model.safetensors", "adapter_model.bin")))
    targets = targets_of(modules, base, config_json.get("target_modules"))
    first = modules[min(modules)]
    K = sum(1 for suffix in first if suffix.startswith("lora_A."))
    if K == 0 or "lora_A.0.weight" not in first:
        raise ImportFailed(f"layers.{min(modules)[0]}.{min(modules)[1]} has no lora_A.{{e}}.weight experts.")
    r = first["lora_A.0.weight"].shape[0]
    gate_key = next((key for key in GATE_KEYS if key in first), None)
    if gate_key is None and not uniform_gate:
        raise ImportFailed(
            "The checkpoint carries no ability gate (the reference code never saves it). "
            "Choose uniform routing explicitly (--uniform-gate) or import a checkpoint with a trained gate."
        )
    expected = {}
    for layer in range(base.num_layers):
        for proj in targets:
            out_f, in_f = base.shape(proj)
            suffixes = {f"lora_A.{e}.weight": (r, in_f) for e in range(K)}
            suffixes |= {f"lora_B.{e}.weight": (out_f, r) for e in range(K)}
            if gate_key is not None:
                suffixes[gate_key] = (K, in_f)
            expected[(layer, proj)] = suffixes
    check_keys(modules, expected)

    tensors: dict[str, torch.Tensor] = {}
    for (layer, proj), found in modules.items():
        in_f = base.shape(proj)[1]
        values = {
            "A": torch.cat([found[f"lora_A.{e}.weight"] for e in range(K)]),  # (K·r, in)
            "B": torch.cat([found[f"lora_B.{e}.weight"] for e in range(K)], dim=1),  # (out, K·r)
            "G": found[gate_key] if gate_key is not None else torch.zeros(K, in_f),  # (K, in)
        }
        for param, value in values.items():
            tensors[tensor_name(layer, proj, param)] = value.to(torch.float32).contiguous()
    config = BaditConfig(num_experts=K, expert_rank=r, alpha=float(config_json["lora_alpha"]))
    return save_adapter_set(
        out_dir,
        name=name or Path(out_dir).name,
        config=config,
        base=base,
        target_modules=targets,
        tasks=[task],
        tensors=tensors,
        provenance={
            "imported_from": "peft loramoe badit",
            "source": str(source),
            "gate": "from checkpoint" if gate_key else "uniform (untrained): G = 0, w = 1/K",
        },
        overwrite=overwrite,
    )
