"""`orthoserve train`: train an adapter set on multi-task examples and write a normal set folder.

Everything that can be wrong with the input (data, task names, hyper-parameters, base model, output
folder) is checked in `prepare_run`, before the model is loaded. The loop is deterministic on CPU for a
given seed and thread count: the data order depends only on (seed, epoch), so `--resume` from a
checkpoint reproduces the uninterrupted run exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm
from transformers import AutoTokenizer, LlamaForCausalLM

from adapters.base_model import PROJECTIONS, BaseModelInfo, describe_base_model
from adapters.format import AdapterSet, save_adapter_set
from adapters.registry import MethodConfig, get_method
from adapters.svd_cache import base_factors
from adapters.training.batches import Batch, collate, encode, epoch_order
from adapters.training.checkpoints import CheckpointStore
from adapters.training.examples import Example, TrainingInputError, check_task_name
from adapters.training.model import TrainableModel, build_trainable_model, trainable_count
from adapters.training.settings import TrainSettings, method_training, methods_offering


@dataclass(frozen=True)
class TrainRun:
    """A fully checked training run (nothing loaded yet but the base description)."""

    kind: str
    base: BaseModelInfo
    examples: list[Example]
    tasks: list[str]  # the set's task names
    config: MethodConfig
    targets: list[str]
    settings: TrainSettings
    out_dir: Path
    checkpoint_dir: Path
    checkpoint_every: int | None
    keep_checkpoints: int
    cache_dir: Path | None
    name: str
    data_source: str


@dataclass
class TrainResult:
    adapter_set: AdapterSet
    losses: list[float] = field(default_factory=list)
    steps: int = 0
    resumed_from: int | None = None


def prepare_run(
    kind: str,
    *,
    base_model: Path,
    examples: list[Example],
    settings: TrainSettings,
    out_dir: Path,
    method_params: dict[str, Any] | None = None,
    targets: list[str] | None = None,
    set_task: str = "default",
    match_params: bool = False,
    checkpoint_every: int | None = None,
    keep_checkpoints: int = 1,
    resume: bool = False,
    overwrite: bool = False,
    cache_dir: Path | None = None,
    name: str | None = None,
    data_source: str = "",
) -> TrainRun:
    method = get_method(kind)
    training = method_training(kind)
    if not examples:
        raise TrainingInputError("No training examples.")
    if out_dir.exists() and not overwrite and not resume:
        raise TrainingInputError(f"{out_dir} already exists; pass --overwrite to replace it.")
    if checkpoint_every is not None and checkpoint_every < 1:
        raise TrainingInputError(f"--checkpoint-every must be at least 1; got {checkpoint_every}.")
    if match_params and training.match_params is None:
        raise TrainingInputError(f"--match-params applies to {methods_offering(lambda other: other.match_params is not None)} only.")
    check_task_name(set_task, "--set-task")
    tasks = list(dict.fromkeys(example.task for example in examples)) if training.multi_task else [set_task]
    base = describe_base_model(base_model)
    targets = list(targets or (PROJECTIONS if match_params else method.default_targets))
    unknown = [proj for proj in targets if proj not in PROJECTIONS]
    if unknown:
        raise TrainingInputError(f"Unknown target projection(s) {', '.join(unknown)}; known: {', '.join(PROJECTIONS)}.")
    params = dict(method_params or {})
    if match_params:
        params = training.match_params(base, targets, len({example.task for example in examples}), params)
    try:
        config = method.config_cls(**params)
        method.expected_tensors(config, base, targets, len(tasks))
    except Exception as error:  # pydantic ValidationError or the method's own check
        raise TrainingInputError(f"Invalid {kind} hyper-parameter(s): {error}") from error
    training.check_config(config)
    return TrainRun(
        kind=kind,
        base=base,
        examples=examples,
        tasks=tasks,
        config=config,
        targets=targets,
        settings=settings,
        out_dir=out_dir,
        checkpoint_dir=out_dir.with_name(out_dir.name + ".checkpoints"),
        checkpoint_every=checkpoint_every,
        keep_checkpoints=keep_checkpoints,
        cache_dir=cache_dir,
        name=name or out_dir.name,
        data_source=data_source,
    )


def describe_run(run: TrainRun) -> str:
    """Every setting the run uses, defaults included (printed at start)."""
    count = trainable_count(run.base, run.kind, run.config, run.targets, len(run.tasks))
    lines = [
        f"kind: {run.kind}   base: {run.base.model_dir}   out: {run.out_dir}",
        f"data: {run.data_source} ({len(run.examples)} examples; tasks {', '.join(sorted({e.task for e in run.examples}))})",
        f"set tasks: {', '.join(run.tasks)}   targets: {', '.join(run.targets)}   trainable parameters: {count:,}",
        "method: " + ", ".join(f"{k}={v}" for k, v in run.config.model_dump().items() if k != "kind"),
        "training: " + ", ".join(f"{k}={v}" for k, v in run.settings.model_dump().items()),
    ]
    return "\n".join(lines)


def train(run: TrainRun, *, resume: bool = False, progress: bool = True, log: Callable[[str], None] = print) -> TrainResult:
    settings = run.settings
    torch.manual_seed(settings.seed)
    tokenizer = AutoTokenizer.from_pretrained(run.base.model_dir)
    encoded = encode(run.examples, tokenizer, _task_index(run), settings.max_length)
    dtype = getattr(torch, settings.dtype)
    model = LlamaForCausalLM.from_pretrained(run.base.model_dir, dtype=dtype, attn_implementation="eager")
    factors = base_factors(run.base, run.cache_dir) if get_method(run.kind).needs_factors else None
    trainable = build_trainable_model(
        model, run.base, run.kind, run.config, run.targets, run.tasks, factors, settings.seed, settings.train_gate
    )
    device = settings.torch_device()
    model.to(device)
    params = trainable.trainable_parameters()
    optimizer = torch.optim.AdamW(list(params.values()), lr=settings.learning_rate, weight_decay=settings.weight_decay)
    steps_per_epoch = math.ceil(len(encoded) / settings.batch_size)
    total = steps_per_epoch * settings.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(settings, total))
    store = CheckpointStore(run.checkpoint_dir, _fingerprint(run), run.keep_checkpoints)
    result = TrainResult(adapter_set=None)  # type: ignore[arg-type]
    step = 0
    if resume:
        restored = store.load_latest(params, optimizer, scheduler)
        if restored is not None:
            step, result.losses = restored
            result.resumed_from = step
            log(f"resumed from step {step} of {total}")

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    bar = tqdm(total=total, initial=step, disable=not progress, desc=f"train {run.kind}", unit="step")
    model.train()
    while step < total:
        epoch, index = divmod(step, steps_per_epoch)
        order = epoch_order(len(encoded), settings.seed, epoch)
        items = [encoded[i] for i in order[index * settings.batch_size : (index + 1) * settings.batch_size]]
        loss = _step(trainable, collate(items, settings.loss, pad_id).to(device), settings, optimizer, params)
        scheduler.step()
        step += 1
        result.losses.append(loss)
        if settings.dog and index == steps_per_epoch - 1 and step <= total // 2:
            method_training(run.kind).regroup(trainable.layers.values(), optimizer)
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
        if run.checkpoint_every and step % run.checkpoint_every == 0 and step < total:
            store.save(step, params, optimizer, scheduler, result.losses)
    bar.close()
    result.steps = step
    result.adapter_set = save_adapter_set(
        run.out_dir,
        name=run.name,
        config=run.config,
        base=run.base,
        target_modules=run.targets,
        tasks=run.tasks,
        tensors=trainable.export(),
        provenance=_provenance(run, step, result.losses),
        overwrite=True,
    )
    return result


def _task_index(run: TrainRun) -> dict[str, int]:
    """Example task → row of the set's task table; single-task sets train every example as task 0."""
    if method_training(run.kind).multi_task:
        return {task: index for index, task in enumerate(run.tasks)}
    return {example.task: 0 for example in run.examples}


def _step(
    trainable: TrainableModel,
    batch: Batch,
    settings: TrainSettings,
    optimizer: torch.optim.Optimizer,
    params: dict[str, torch.nn.Parameter],
) -> float:
    trainable.context.task_ids = batch.task_ids
    trainable.context.token_mask = batch.attention_mask.bool()
    optimizer.zero_grad(set_to_none=True)
    output = trainable.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=batch.labels, use_cache=False)
    output.loss.backward()
    if settings.grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(list(params.values()), settings.grad_clip)
    optimizer.step()
    return float(output.loss.detach())


def _schedule(settings: TrainSettings, total: int) -> Callable[[int], float]:
    warmup = math.ceil(settings.warmup_ratio * total)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if settings.schedule == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def _fingerprint(run: TrainRun) -> dict[str, Any]:
    """What must not change between a checkpoint and a resumed run."""
    return {
        "kind": run.kind,
        "base": run.base.fingerprint,
        "config": run.config.model_dump(),
        "settings": run.settings.model_dump(),
        "targets": run.targets,
        "tasks": run.tasks,
        "examples": len(run.examples),
        "data": run.data_source,
    }


def _provenance(run: TrainRun, steps: int, losses: list[float]) -> dict[str, str]:
    gate_trained = run.settings.train_gate or "train_gate" not in method_training(run.kind).options
    tail = losses[-10:]
    return {
        "trained_by": "orthoserve train",
        "data": run.data_source,
        "examples": str(len(run.examples)),
        "steps": str(steps),
        "seed": str(run.settings.seed),
        "final_loss": f"{sum(tail) / max(1, len(tail)):.4f}",
        "settings": ", ".join(f"{k}={v}" for k, v in run.settings.model_dump().items()),
        "gate": "trained" if gate_trained else "initial (seeded), not trained",
    }

