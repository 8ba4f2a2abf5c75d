"""Import an official MoORE checkpoint (MoE-PEFT fork): `adapter_model.bin` + `adapter_config.json`.

Keys per adapted matrix (`<prefix>.layers.{i}.{self_attn|mlp}.{proj}.`):
    moe_gate.weight          G     (E, in)
    moe_gate.up.weight       G_up  (d, E)
    moe_gate.task_embedding  Emb   (n_ids, e)   e is not in the config: inferred from this shape
    moe_gate.task_linear     T     (d, e)
    hra_u_in.{k}             y_k   (in, 1), k = 0 … h−1
Rows of the task table are the fork's fixed task ids (TASK_TABLE); the imported set keeps the rows
of the tasks asked for, in that order (all known ids by default).
"""

from __future__ import annotations

from pathlib import Path

import torch

from adapters.base_model import BaseModelInfo
from adapters.errors import ImportFailed
from adapters.format import AdapterSet, save_adapter_set
from adapters.importers.common import check_keys, group_by_module, read_config, read_state, targets_of
from adapters.moore.config import MooreConfig
from adapters.tensor_names import tensor_name

# Task id → name, as fixed by the reference code (arc-e 0 … pubmedqa 9, GLUE cola … wnli 10–17).
TASK_TABLE: tuple[str, ...] = (
    "arc-e", "arc-c", "boolq", "obqa", "piqa", "siqa", "hellaswag", "winogrande", "csqa", "pubmedqa",
    "glue-cola", "glue-mnli", "glue-mrpc", "glue-qnli", "glue-qqp", "glue-rte", "glue-sst2", "glue-wnli",
)  # fmt: skip


def import_moore_checkpoint(
    source: Path | str,
    base: BaseModelInfo,
    out_dir: Path | str,
    *,
    tasks: list[str] | None = None,
    name: str | None = None,
    overwrite: bool = False,
) -> AdapterSet:
    source = Path(source)
    config_json = read_config(source)
    modules = group_by_module(read_state(source, ("adapter_model.bin", "adapter_model.safetensors")))
    targets = targets_of(modules, base, config_json.get("target_modules"))
    first = modules[min(modules)]
    h = sum(1 for suffix in first if suffix.startswith("hra_u_in."))
    try:
        E = first["moe_gate.weight"].shape[0]
        n_ids, e = first["moe_gate.task_embedding"].shape
    except (KeyError, ValueError) as error:
        raise ImportFailed(f"layers.{min(modules)[0]}.{min(modules)[1]} lacks the MoORE router keys ({error}).") from error
    expected = {}
    for layer in range(base.num_layers):
        for proj in targets:
            in_f, d = base.shape(proj)[1], base.rank(proj)
            expected[(layer, proj)] = {
                "moe_gate.weight": (E, in_f),
                "moe_gate.up.weight": (d, E),
                "moe_gate.task_embedding": (n_ids, e),
                "moe_gate.task_linear": (d, e),
            } | {f"hra_u_in.{k}": (in_f, 1) for k in range(h)}
    check_keys(modules, expected)

    rows = _task_rows(tasks, n_ids)
    tensors: dict[str, torch.Tensor] = {}
    for (layer, proj), found in modules.items():
        values = {
            "Y": torch.cat([found[f"hra_u_in.{k}"].T for k in range(h)]),  # (h, in)
            "G": found["moe_gate.weight"],
            "G_up": found["moe_gate.up.weight"],
            "T": found["moe_gate.task_linear"],
            "Emb": found["moe_gate.task_embedding"][rows],  # (n_tasks, e)
        }
        for param, value in values.items():
            tensors[tensor_name(layer, proj, param)] = value.to(torch.float32).contiguous()
    config = MooreConfig(householder_count=h, router_width=E, task_embedding_width=e)
    return save_adapter_set(
        out_dir,
        name=name or Path(out_dir).name,
        config=config,
        base=base,
        target_modules=targets,
        tasks=[TASK_TABLE[row] for row in rows],
        tensors=tensors,
        provenance={"imported_from": "moe-peft moore", "source": str(source)},
        overwrite=overwrite,
    )


def _task_rows(tasks: list[str] | None, n_ids: int) -> list[int]:
    if tasks is None:
        if n_ids > len(TASK_TABLE):
            raise ImportFailed(
                f"The task table has {n_ids} rows but only {len(TASK_TABLE)} ids have names; choose tasks by name."
            )
        return list(range(n_ids))
    rows = []
    for task in tasks:
        if task not in TASK_TABLE or TASK_TABLE.index(task) >= n_ids:
            known = ", ".join(TASK_TABLE[: min(n_ids, len(TASK_TABLE))])
            raise ImportFailed(f"Task '{task}' is not in this checkpoint's task table ({known}).")
        rows.append(TASK_TABLE.index(task))
    return rows
