"""The `--scoring loglikelihood` path of `orthoserve eval`."""

from __future__ import annotations

from pathlib import Path

import typer

from adapters.evaluation.choices import score_items
from adapters.evaluation.items import EvalItem, eval_items
from adapters.evaluation.run import fidelity_records, fidelity_summary, served_results, summary_table, timed, write_jsonl
from adapters.training.examples import TrainingInputError

_SET_NAME = "evaluated"


def run_loglikelihood(
    *,
    base_model: Path,
    model: str,
    tasks: list[str],
    limit: int | None,
    task_limits: list[str],
    routes: list[str],
    base_url: str | None,
    reference: bool,
    set_dir: Path | None,
    cache_dir: Path | None,
    set_name: str | None,
    jsonl_out: Path | None,
    fidelity_limit: int,
    fidelity_out: Path | None,
) -> None:
    from transformers import AutoTokenizer

    from adapters.evaluation.cli import _routes

    try:
        route_map = _routes(routes)
        limits = _routes(task_limits)
        items = [item for task in tasks for item in eval_items(task, _limit(task, limits, limit))]
        if not items:
            raise TrainingInputError("--tasks names no task.")
        if base_url is None:
            raise TrainingInputError("--scoring loglikelihood scores through a server: give --base-url.")
    except (TrainingInputError, ValueError) as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from error
    tokenizer = AutoTokenizer.from_pretrained(base_model)

    def model_of(item: EvalItem) -> str:
        return model.format(task=route_map.get(item.task, item.task))

    name = set_name or model.split("/")[0]
    results, seconds = timed(lambda: served_results(items, tokenizer, base_url, model_of, name))
    typer.echo(summary_table(results, items))  # type: ignore[arg-type]
    typer.echo(f"server scoring: {seconds:.0f} s for {len(items)} items")
    if jsonl_out is not None:
        write_jsonl(jsonl_out, [r.to_json() for r in results])  # type: ignore[union-attr]
        typer.echo(f"wrote {jsonl_out}")
    if reference:
        from adapters.evaluation.reference_scoring import reference_label_logprobs, reference_pair_loglikelihoods
        from adapters.reference import ReferenceModel, RowRoute
        from adapters.svd_cache import default_cache_dir

        oracle = ReferenceModel.from_pretrained(base_model, {_SET_NAME: set_dir} if set_dir else {}, cache_dir or default_cache_dir())

        def route(tag: str) -> RowRoute:
            if set_dir is None:
                return RowRoute()
            _, _, task = tag.partition("/")
            return RowRoute(_SET_NAME, task or None)

        seen: dict[str, int] = {}
        chosen = []
        for item, result in zip(items, results):  # type: ignore[call-overload]
            seen[item.task] = seen.get(item.task, 0) + 1
            if seen[item.task] <= fidelity_limit:
                chosen.append((item, result))
        fidelity_items = [item for item, _ in chosen]
        reference_results, seconds = timed(
            lambda: score_items(
                fidelity_items, tokenizer, model_of,
                lambda pairs: reference_pair_loglikelihoods(pairs, oracle, route),
                lambda queries: reference_label_logprobs(queries, oracle, route),
                name,
            )
        )  # fmt: skip
        records = fidelity_records([result for _, result in chosen], reference_results)  # type: ignore[arg-type]
        summary = fidelity_summary(records)  # type: ignore[arg-type]
        typer.echo(f"fidelity ({seconds:.0f} s): {summary}")
        if fidelity_out is not None:
            write_jsonl(fidelity_out, records)  # type: ignore[arg-type]
            typer.echo(f"wrote {fidelity_out}")


def _limit(task: str, limits: dict[str, str], default: int | None) -> int | None:
    if task not in limits:
        return default
    try:
        return int(limits[task])
    except ValueError as error:
        raise TrainingInputError(f"--task-limit {task}={limits[task]} is not TASK=N.") from error
