"""`orthoserve eval`: CSR validation accuracy of a served model tag, and its fidelity to the PyTorch reference."""

from __future__ import annotations

import enum
import json
import time
from pathlib import Path
from typing import Annotated

import typer

from adapters.cli import _split
from adapters.evaluation.scoring import Scored, accuracy
from adapters.training.csr import VALIDATION_TASKS, CsrItem, csr_validation_items
from adapters.training.examples import TrainingInputError

_SET_NAME = "evaluated"


class Scoring(str, enum.Enum):
    loglikelihood = "loglikelihood"
    top5 = "top5"


def eval_command(
    base_model: Annotated[Path, typer.Option("--base-model", help="Base model folder: its tokenizer (and the reference's base).")],
    model: Annotated[str, typer.Option(help="The `model` tag to send; '{task}' is replaced by the (routed) task, e.g. 'csr/{task}'.")],
    tasks: Annotated[str, typer.Option(help=f"Validation tasks: {','.join(VALIDATION_TASKS)}.")] = "boolq,arc-e,piqa",
    limit: Annotated[int | None, typer.Option(help="First N items per task (default: all).")] = None,
    route_task: Annotated[list[str] | None, typer.Option("--route-task", help="EVAL=SET_TASK: the set task used for an eval task (repeatable), e.g. sciq=arc-e.")] = None,
    base_url: Annotated[str | None, typer.Option(help="OpenAI endpoint of a running server, e.g. http://127.0.0.1:8000/v1.")] = None,
    reference: Annotated[bool, typer.Option("--reference", help="Also score with the PyTorch reference (fp32) and report agreement.")] = False,
    set_dir: Annotated[Path | None, typer.Option(help="Reference: the adapter set folder behind the tag (none: the base model).")] = None,
    cache_dir: Annotated[Path | None, typer.Option(help="Reference: SVD factor cache (default ~/.cache/orthoserve/svd).")] = None,
    json_out: Annotated[Path | None, typer.Option(help="top5: write per-item predictions and the summary here.")] = None,
    scoring: Annotated[Scoring, typer.Option(help="loglikelihood: lm-eval's choice log-likelihoods plus the label-token argmax; top5: the old first-token rule.")] = Scoring.loglikelihood,
    task_limit: Annotated[list[str] | None, typer.Option("--task-limit", help="TASK=N: first N items of that task (repeatable; overrides --limit).")] = None,
    set_name: Annotated[str | None, typer.Option(help="loglikelihood: the `set` field of the JSONL lines (default: the tag before '/').")] = None,
    jsonl_out: Annotated[Path | None, typer.Option(help="loglikelihood: one JSON line per item (set, task, id, gold, pred, correct, loglikelihoods, ...).")] = None,
    fidelity_limit: Annotated[int, typer.Option(help="loglikelihood --reference: reference scores of the first N items per task.")] = 100,
    fidelity_out: Annotated[Path | None, typer.Option(help="loglikelihood --reference: served and reference log-likelihoods per item (JSONL).")] = None,
) -> None:
    """Score validation sets through the server (the task tag in `model`) and/or the PyTorch reference."""
    from transformers import AutoTokenizer

    if scoring is Scoring.loglikelihood:
        from adapters.evaluation.loglikelihood_cli import run_loglikelihood

        run_loglikelihood(
            base_model=base_model, model=model, tasks=_split(tasks) or [], limit=limit, task_limits=task_limit or [],
            routes=route_task or [], base_url=base_url, reference=reference, set_dir=set_dir, cache_dir=cache_dir,
            set_name=set_name, jsonl_out=jsonl_out, fidelity_limit=fidelity_limit, fidelity_out=fidelity_out,
        )  # fmt: skip
        return

    try:
        routes = _routes(route_task or [])
        items = [item for task in (_split(tasks) or []) for item in csr_validation_items(task, limit)]
        if not items:
            raise TrainingInputError("--tasks names no task.")
        if base_url is None and not reference:
            raise TrainingInputError("Give --base-url (score through a server), --reference, or both.")
    except TrainingInputError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from error
    tokenizer = AutoTokenizer.from_pretrained(base_model)

    def set_task(item: CsrItem) -> str:
        return routes.get(item.task, item.task)

    report: dict = {"model": model, "tasks": {}, "limit": limit}
    served: list[Scored] | None = None
    reference_scores: list[Scored] | None = None
    if base_url is not None:
        from adapters.evaluation.http_client import score_over_http

        started = time.monotonic()
        served = score_over_http(items, tokenizer, base_url, lambda item: model.format(task=set_task(item)))
        report["server_seconds"] = round(time.monotonic() - started, 1)
    if reference:
        from adapters.evaluation.reference_scoring import score_with_reference
        from adapters.reference import ReferenceModel, RowRoute
        from adapters.svd_cache import default_cache_dir

        started = time.monotonic()
        sets = {_SET_NAME: set_dir} if set_dir is not None else {}
        oracle = ReferenceModel.from_pretrained(base_model, sets, cache_dir or default_cache_dir())

        def route(item: CsrItem) -> RowRoute:
            if set_dir is None:
                return RowRoute()
            return RowRoute(_SET_NAME, set_task(item) if "{task}" in model else None)

        reference_scores = score_with_reference(items, tokenizer, oracle, route)
        report["reference_seconds"] = round(time.monotonic() - started, 1)
    typer.echo(_table(items, served, reference_scores, report))
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        report["served"] = [s.to_json() for s in served] if served else None
        report["reference"] = [s.to_json() for s in reference_scores] if reference_scores else None
        json_out.write_text(json.dumps(report, indent=1) + "\n")
        typer.echo(f"wrote {json_out}")


def _routes(pairs: list[str]) -> dict[str, str]:
    routes = {}
    for pair in pairs:
        source, separator, target = pair.partition("=")
        if not separator or not source or not target:
            raise TrainingInputError(f"--route-task {pair!r} is not EVAL=SET_TASK.")
        routes[source] = target
    return routes


def _table(items: list[CsrItem], served: list[Scored] | None, reference: list[Scored] | None, report: dict) -> str:
    lines = ["| task | n | served acc | reference acc | same answer |", "|---|---:|---:|---:|---:|"]
    task_names = list(dict.fromkeys(item.task for item in items))
    for task in [*task_names, "all"]:
        row_served = [s for s in served or [] if task in ("all", s.task)]
        row_reference = [s for s in reference or [] if task in ("all", s.task)]
        agreement = None
        if row_served and row_reference:
            agreement = 100.0 * sum(a.prediction == b.prediction for a, b in zip(row_served, row_reference)) / len(row_served)
        n = len(row_served or row_reference)
        entry = {
            "n": n,
            "served_accuracy": round(accuracy(row_served), 2) if row_served else None,
            "reference_accuracy": round(accuracy(row_reference), 2) if row_reference else None,
            "same_answer_percent": round(agreement, 2) if agreement is not None else None,
        }
        report["tasks"][task] = entry
        cells = [entry["served_accuracy"], entry["reference_accuracy"], entry["same_answer_percent"]]
        lines.append(f"| {task} | {n} | " + " | ".join("-" if c is None else f"{c:.2f}" for c in cells) + " |")
    return "\n".join(lines)
