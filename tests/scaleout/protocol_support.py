"""Helpers of the scale-out tests: a parsed `/metrics` scrape, the LoRA protocol series, PEFT folders."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from safetensors.torch import save_file

from adapters.base_model import PROJECTIONS, BaseModelInfo
from adapters.format import load_adapter_set

_PARENT = {proj: "self_attn" if proj in PROJECTIONS[:4] else "mlp" for proj in PROJECTIONS}


@dataclass(frozen=True)
class Scrape:
    text: str
    types: dict[str, str]  # family name → type
    samples: list[Sample]

    def family(self, name: str) -> list[Sample]:
        return [sample for sample in self.samples if sample.name == name]

    def value(self, name: str) -> float:
        (sample,) = self.family(name)
        return sample.value

    @property
    def lora_info(self) -> Sample:
        (sample,) = self.family("vllm:lora_requests_info")
        return sample

    @property
    def running(self) -> list[str]:
        return split_list(self.lora_info.labels["running_lora_adapters"])

    @property
    def waiting(self) -> list[str]:
        return split_list(self.lora_info.labels["waiting_lora_adapters"])

    def loaded(self) -> dict[str, tuple[str, str]]:
        """adapter_name → (level, pinned) of `vllm:lora_adapter_loaded`."""
        series = self.family("vllm:lora_adapter_loaded")
        assert all(sample.value == 1 for sample in series)
        names = [sample.labels["adapter_name"] for sample in series]
        assert len(names) == len(set(names)), f"an adapter is listed twice: {names}"
        return {sample.labels["adapter_name"]: (sample.labels["level"], sample.labels["pinned"]) for sample in series}


def split_list(value: str) -> list[str]:
    """A protocol list as the router reads it: comma-separated, spaces trimmed, empty entries dropped."""
    return [part.strip() for part in value.split(",") if part.strip()]


def scrape(base_url: str, path: str = "/metrics") -> Scrape:
    response = httpx.get(f"{base_url}{path}", timeout=30)
    assert response.status_code == 200, response.text
    families = list(text_string_to_metric_families(response.text))
    return Scrape(
        response.text,
        {family.name: family.type for family in families},
        [sample for family in families for sample in family.samples],
    )


def promtool_problems(text: str) -> list[str]:
    """The lines `promtool check metrics` reports for an exposition (none: it is lint-clean)."""
    done = subprocess.run(["promtool", "check", "metrics"], input=text.encode(), capture_output=True, timeout=60)
    lines = (done.stdout + done.stderr).decode().splitlines()
    assert (done.returncode == 0) == (not lines), lines
    return lines


def without_vllm(text: str) -> str:
    """An exposition less its `vllm:` families."""
    vllm = ("vllm:", "# HELP vllm:", "# TYPE vllm:")
    return "".join(line for line in text.splitlines(keepends=True) if not line.startswith(vllm))


def write_peft_lora(folder: Path, lora_set: Path, base: BaseModelInfo) -> Path:
    """A PEFT LoRA folder (`adapter_config.json`, `adapter_model.safetensors`) with a LoRA set's weights."""
    source = load_adapter_set(lora_set, base)
    state = {}
    for layer, proj, module in source.modules():
        prefix = f"base_model.model.model.layers.{layer}.{_PARENT[proj]}.{proj}"
        state[f"{prefix}.lora_A.weight"] = module.A.contiguous()
        state[f"{prefix}.lora_B.weight"] = module.B.contiguous()
    folder.mkdir(parents=True)
    config = {"peft_type": "LORA", "r": source.config.rank, "lora_alpha": source.config.alpha, "bias": "none"}
    (folder / "adapter_config.json").write_text(json.dumps(config))
    save_file(state, str(folder / "adapter_model.safetensors"))
    return folder
