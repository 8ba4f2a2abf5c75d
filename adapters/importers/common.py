"""Shared pieces of the importers: reading checkpoints and strict key/shape comparison."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from adapters.base_model import PROJECTIONS, BaseModelInfo
from adapters.errors import ImportFailed, format_names

# `<any prefix>.layers.{i}.{self_attn|mlp}.{proj}.<rest>`
MODULE_KEY = re.compile(r"^(?:.*\.)?layers\.(\d+)\.(?:self_attn|mlp)\.(" + "|".join(PROJECTIONS) + r")\.(.+)$")


def read_config(source: Path) -> dict[str, Any]:
    path = source / "adapter_config.json"
    if not path.is_file():
        raise ImportFailed(f"{source} has no adapter_config.json.")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ImportFailed(f"{path} is not valid JSON: {error}.") from error


def read_state(source: Path, names: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """The first of `names` found in `source` (`.safetensors` or a torch-saved `.bin`), loaded on CPU."""
    for file_name in names:
        path = source / file_name
        if not path.is_file():
            continue
        if path.suffix == ".safetensors":
            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict):
            raise ImportFailed(f"{path} does not hold a state dict.")
        return state
    raise ImportFailed(f"{source} holds none of {', '.join(names)}.")


def group_by_module(state: dict[str, torch.Tensor]) -> dict[tuple[int, str], dict[str, torch.Tensor]]:
    """(layer, proj) → {key suffix: tensor}; keys outside decoder-layer projections are an error."""
    modules: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    unmatched = []
    for key, tensor in state.items():
        match = MODULE_KEY.match(key)
        if match is None:
            unmatched.append(key)
            continue
        modules.setdefault((int(match.group(1)), match.group(2)), {})[match.group(3)] = tensor
    if unmatched:
        raise ImportFailed(f"Unexpected keys outside the decoder projections: {format_names(unmatched)}.")
    return modules


def targets_of(modules: dict[tuple[int, str], Any], base: BaseModelInfo, declared: Any) -> list[str]:
    """Projections present in every layer; must match the config's `target_modules` when it declares them."""
    found = [proj for proj in PROJECTIONS if any(p == proj for _, p in modules)]
    if not found:
        raise ImportFailed("The checkpoint holds no adapted projection.")
    if isinstance(declared, dict):  # {"q_proj": true, ...}
        declared = [name for name, enabled in declared.items() if enabled]
    if isinstance(declared, (list, tuple)) and sorted(declared) != sorted(found):
        raise ImportFailed(f"adapter_config.json targets {sorted(declared)} but the weights adapt {sorted(found)}.")
    if declared is not None and not isinstance(declared, (list, tuple, dict)):
        raise ImportFailed(f"target_modules {declared!r} must be a list of projection names.")
    bad_layers = sorted({layer for layer, _ in modules if layer >= base.num_layers})
    if bad_layers:
        raise ImportFailed(f"The checkpoint has layers {bad_layers} but the base model has {base.num_layers}.")
    return found


def check_keys(
    modules: dict[tuple[int, str], dict[str, torch.Tensor]],
    expected: dict[tuple[int, str], dict[str, tuple[int, ...]]],
) -> None:
    """Compare every (module, suffix) found with what is expected; report all missing, extra and misshapen keys."""
    missing, extra, misshapen = [], [], []
    for module, suffixes in expected.items():
        found = modules.get(module, {})
        prefix = f"layers.{module[0]}.{module[1]}"
        for suffix, shape in suffixes.items():
            if suffix not in found:
                missing.append(f"{prefix}.{suffix}")
            elif tuple(found[suffix].shape) != tuple(shape):
                misshapen.append(f"{prefix}.{suffix} {list(found[suffix].shape)} (expected {list(shape)})")
        extra += [f"{prefix}.{suffix}" for suffix in found if suffix not in suffixes]
    extra += [f"layers.{layer}.{proj}" for layer, proj in modules if (layer, proj) not in expected]
    problems = [
        f"{label}: {format_names(items)}"
        for label, items in (("missing", missing), ("extra", extra), ("wrong shape", misshapen))
        if items
    ]
    if problems:
        raise ImportFailed("The checkpoint does not match the expected layout; " + "; ".join(problems) + ".")
