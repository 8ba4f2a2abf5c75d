"""Import a BADIT checkpoint saved by the official code (PEFT's LoRAMoE layout).

Keys per adapted matrix (`<prefix>.layers.{i}.{self_attn|mlp}.{proj}.`), as PEFT saves a ParameterList
inside a ParameterDict (the adapter name is stripped, and there is no `.weight`):
    lora_A.{e}          A_e  (r, in),  e = 0 … K−1      (`lora_A.{e}.weight` is read too)
    lora_B.{e}          B_e  (out, r)                   (`lora_B.{e}.weight` is read too)
    <gate>              G    (K, in)   optional (see GATE_KEYS)
`adapter_config.json` must say `peft_type: "LORAMOE"` and `init_lora_weights: "pissa_moe"`: only then
are the experts a split of the top K·r singular triplets, so that the frozen residual is
W_res = W − U_k S_k V_kᵀ (recomputed from the shared base SVD at load); any other initialisation
leaves W whole and cannot be served as BADIT. `lora_alpha` gives s = α/r; K and r come from the
shapes; `top_k` < K keeps only the top-k gate weights, renormalised.

The reference training code never trains nor saves G. A checkpoint without a gate is refused unless
the caller chooses `uniform_gate=True`: G = 0, so w = softmax(0) = 1/K for every input — an untrained
routing, recorded in the set's provenance (with top_k < K a uniform gate has no top experts: refused).
"""

from __future__ import annotations

import re
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
    "gate.weight",  # LoRAMoE's `gate` (ParameterDict entry, adapter name stripped)
    "lora_route.weight",  # LoRAMoE's router in other forks
    "lora_gate.weight",  # orthoserve's trainer
)
_EXPERT = re.compile(r"^lora_A\.(\d+)(\.weight)?$")


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
    _check_config(config_json)
    modules = group_by_module(read_state(source, ("adapter_model.safetensors", "adapter_model.bin")))
    targets = targets_of(modules, base, config_json.get("target_modules"))
    first_module = min(modules)
    first = modules[first_module]
    experts = sorted((int(m.group(1)), m.group(2) or "") for key in first if (m := _EXPERT.match(key)))
    if not experts:
        raise ImportFailed(
            f"layers.{first_module[0]}.{first_module[1]} has no lora_A.{{e}} experts (PEFT LoRAMoE layout expected)."
        )
    K, suffix = len(experts), experts[0][1]
    r = first[f"lora_A.0{suffix}"].shape[0]
    top_k = _route_top_k(config_json, K)
    gate_key = next((key for key in GATE_KEYS if key in first), None)
    if gate_key is None and not uniform_gate:
        raise ImportFailed(
            "The checkpoint carries no ability gate (the reference code never trains nor saves it). "
            "Choose uniform routing explicitly (--uniform-gate) or import a checkpoint with a trained gate."
        )
    if gate_key is None and top_k is not None:
        raise ImportFailed(f"top_k = {top_k} < K = {K} needs a trained gate: a uniform gate has no top experts.")
    expected = {}
    for layer in range(base.num_layers):
        for proj in targets:
            out_f, in_f = base.shape(proj)
            suffixes = {f"lora_A.{e}{suffix}": (r, in_f) for e in range(K)}
            suffixes |= {f"lora_B.{e}{suffix}": (out_f, r) for e in range(K)}
            if gate_key is not None:
                suffixes[gate_key] = (K, in_f)
            expected[(layer, proj)] = suffixes
    check_keys(modules, expected)

    tensors: dict[str, torch.Tensor] = {}
    for (layer, proj), found in modules.items():
        in_f = base.shape(proj)[1]
        values = {
            "A": torch.cat([found[f"lora_A.{e}{suffix}"] for e in range(K)]),  # (K·r, in)
            "B": torch.cat([found[f"lora_B.{e}{suffix}"] for e in range(K)], dim=1),  # (out, K·r)
            "G": found[gate_key] if gate_key is not None else torch.zeros(K, in_f),  # (K, in)
        }
        for param, value in values.items():
            tensors[tensor_name(layer, proj, param)] = value.to(torch.float32).contiguous()
    try:
        config = BaditConfig(num_experts=K, expert_rank=r, alpha=float(config_json["lora_alpha"]), route_top_k=top_k)
    except ValueError as error:
        raise ImportFailed(f"adapter_config.json does not give a servable BADIT configuration: {error}") from error
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
            "gate": f"from checkpoint ({gate_key})" if gate_key else "uniform (untrained): G = 0, w = 1/K",
        },
        overwrite=overwrite,
    )


def _check_config(config_json: dict) -> None:
    peft_type = str(config_json.get("peft_type", ""))
    if peft_type.upper() != "LORAMOE":
        raise ImportFailed(f"adapter_config.json has peft_type {peft_type!r}; a BADIT checkpoint is 'LORAMOE'.")
    init = config_json.get("init_lora_weights")
    if init != "pissa_moe":
        raise ImportFailed(
            f"adapter_config.json has init_lora_weights {init!r}, not 'pissa_moe': the experts are then not a split "
            "of the base weight's top singular triplets, so no residual may be subtracted and the checkpoint "
            "is not a BADIT adapter orthoserve can serve."
        )
    if "lora_alpha" not in config_json:
        raise ImportFailed("adapter_config.json has no 'lora_alpha' (BADIT scales experts by α/r).")


def _route_top_k(config_json: dict, K: int) -> int | None:
    """None (all K experts) unless the config routes to fewer."""
    top_k = config_json.get("top_k")
    if top_k is None:
        return None
    if not isinstance(top_k, int) or isinstance(top_k, bool) or not 1 <= top_k <= K:
        raise ImportFailed(f"adapter_config.json has top_k {top_k!r}; it must be an integer from 1 to K = {K}.")
    return None if top_k == K else top_k
