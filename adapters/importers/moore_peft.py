"""Import an official MoORE checkpoint (MoE-PEFT fork): `adapter_model.bin` + `adapter_config.json`.

Keys per adapted matrix (`<prefix>.layers.{i}.{self_attn|mlp}.{proj}.`):
    moe_gate.weight          G     (E, in)
    moe_gate.up.weight       G_up  (d, E)
    moe_gate.task_embedding  Emb   (n_ids, e)   e is not in the config: inferred from this shape
    moe_gate.task_linear     T     (d, e)
    hra_u_in.{k}             y_k   (in, 1), k = 0 … h−1
Rows of the task table are the fork's fixed task ids (TASK_TABLE); the imported set keeps the rows of
the tasks asked for (`tasks`, official `glue:cola` or orthoserve `glue-cola` spelling), in that order. A
checkpoint is trained on a few of those tasks and its other rows are random, so the rows must be chosen:
`all_task_rows=True` keeps every named row and warns which are not known to be trained. A GLUE (NLU-MTL)
checkpoint's `classifier` head is not part of the adapted layers: it is ignored with a warning (not served).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import torch

from adapters.base_model import BaseModelInfo
from adapters.errors import ImportFailed
from adapters.format import AdapterSet, save_adapter_set
from adapters.importers.common import check_keys, group_by_module, read_config, read_state, targets_of
from adapters.moore.config import MooreConfig
from adapters.tensor_names import tensor_name

# Task id → name, as fixed by the reference code (arc-e 0 … pubmedqa 9, GLUE cola … wnli 10–17).
# The set's task names use '-' (':' is not allowed in a task name); the official `glue:cola` is accepted.
TASK_TABLE: tuple[str, ...] = (
    "arc-e", "arc-c", "boolq", "obqa", "piqa", "siqa", "hellaswag", "winogrande", "csqa", "pubmedqa",
    "glue-cola", "glue-mnli", "glue-mrpc", "glue-qnli", "glue-qqp", "glue-rte", "glue-sst2", "glue-wnli",
)  # fmt: skip
# adapter_config.json fields that may list the tasks a checkpoint was trained on, checked in this order.
TRAINED_TASK_FIELDS: tuple[str, ...] = ("task_name", "task_names", "tasks")
_log = logging.getLogger(__name__)


def import_moore_checkpoint(
    source: Path | str,
    base: BaseModelInfo,
    out_dir: Path | str,
    *,
    tasks: list[str] | None = None,
    all_task_rows: bool = False,
    name: str | None = None,
    overwrite: bool = False,
    warn: Callable[[str], None] = _log.warning,
) -> AdapterSet:
    source = Path(source)
    if (tasks is None) == (not all_task_rows):
        raise ImportFailed(
            "Choose the task rows to import: --tasks a,b (the tasks the checkpoint was trained on), "
            "or --all-task-rows to keep every row (untrained rows are random)."
        )
    config_json = read_config(source)
    state = read_state(source, ("adapter_model.bin", "adapter_model.safetensors"))
    heads = sorted(key for key in state if "classifier" in key.split("."))
    if heads:
        warn(f"Ignoring the classification head {', '.join(heads)}: orthoserve serves generation, not the GLUE classifier.")
        state = {key: value for key, value in state.items() if key not in heads}
    modules = group_by_module(state)
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
    if all_task_rows:
        trained = _trained_tasks(config_json)
        unsure = [TASK_TABLE[row] for row in rows if TASK_TABLE[row] not in trained]
        if unsure:
            known = "not listed as trained in adapter_config.json" if trained else "not known to be trained"
            warn(f"Imported task rows {', '.join(unsure)} are {known}: untrained rows are random and serve noise.")
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


def task_name(official: str) -> str:
    """orthoserve's spelling of an official task name (`glue:cola` → `glue-cola`)."""
    return official.strip().replace(":", "-")


def _task_rows(tasks: list[str] | None, n_ids: int) -> list[int]:
    if tasks is None:
        if n_ids > len(TASK_TABLE):
            raise ImportFailed(
                f"The task table has {n_ids} rows but only {len(TASK_TABLE)} ids have names; choose tasks by name."
            )
        return list(range(n_ids))
    rows = []
    for task in tasks:
        name = task_name(task)
        if name not in TASK_TABLE or TASK_TABLE.index(name) >= n_ids:
            known = ", ".join(TASK_TABLE[: min(n_ids, len(TASK_TABLE))])
            raise ImportFailed(f"Task '{task}' is not in this checkpoint's task table ({known}).")
        if TASK_TABLE.index(name) in rows:
            raise ImportFailed(f"Task '{task}' is asked for twice.")
        rows.append(TASK_TABLE.index(name))
    return rows


def _trained_tasks(config_json: dict) -> set[str]:
    """Task names the config says the checkpoint was trained on (a list, or a string split on ';' or ',')."""
    for field in TRAINED_TASK_FIELDS:
        value = config_json.get(field)
        if isinstance(value, str):
            value = value.replace(";", ",").split(",")
        if isinstance(value, list) and value:
            return {task_name(str(task)) for task in value if str(task).strip()}
    return set()
