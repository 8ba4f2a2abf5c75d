"""`orthoserve eval --scoring loglikelihood`: per-item results through a server, fidelity to the reference,
and the per-task summary printed at the end."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from transformers import PreTrainedTokenizerBase

from adapters.evaluation.choices import ItemResult, score_items
from adapters.evaluation.items import EvalItem
from adapters.evaluation.loglikelihood import label_logprobs_over_http, score_pairs_over_http
from adapters.evaluation.stats import cell, chance, majority_baseline, top_prediction_share


def served_results(
    items: Sequence[EvalItem], tokenizer: PreTrainedTokenizerBase, base_url: str, model_of: Callable[[EvalItem], str], set_name: str
) -> list[ItemResult]:
    return score_items(
        items,
        tokenizer,
        model_of,
        lambda pairs: score_pairs_over_http(pairs, base_url),
        lambda queries: label_logprobs_over_http(queries, tokenizer, base_url),
        set_name,
    )


def fidelity_records(served: Sequence[ItemResult], reference: Sequence[ItemResult]) -> list[dict]:
    """Per item: the served and the reference log-likelihoods of every cloze choice and letter label."""
    return [
        {
            "set": a.set, "task": a.task, "id": a.id,
            "served": a.loglikelihoods, "reference": b.loglikelihoods,
            "served_letter": a.letter_loglikelihoods, "reference_letter": b.letter_loglikelihoods,
            "same_pred": a.pred == b.pred, "same_letter_pred": a.letter_pred == b.letter_pred,
        }
        for a, b in zip(served, reference)
    ]  # fmt: skip


def fidelity_summary(records: Sequence[dict]) -> dict[str, float | int | None]:
    """Max and mean |served − reference| over every log-likelihood both sides gave; missing counted apart."""
    diffs, missing = [], 0
    for record in records:
        for served_key, reference_key in (("served", "reference"), ("served_letter", "reference_letter")):
            for a, b in zip(record[served_key], record[reference_key]):
                if a is None or b is None:
                    missing += 1
                else:
                    diffs.append(abs(a - b))
    return {
        "items": len(records),
        "values": len(diffs),
        "missing": missing,
        "max_abs_diff": max(diffs) if diffs else None,
        "mean_abs_diff": sum(diffs) / len(diffs) if diffs else None,
    }


def summary_table(results: Sequence[ItemResult], items: Sequence[EvalItem]) -> str:
    lines = [
        "| task | n | missing | acc (95 % CI) | acc_norm | letter acc | letter missing | majority | chance | top pred share |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    choices = {(item.task, item.id): len(item.choices) for item in items}
    for task in dict.fromkeys(r.task for r in results):
        rows = [r for r in results if r.task == task]
        acc = cell([None if r.pred is None else r.correct for r in rows])
        norm = cell([None if r.pred_norm is None else r.correct_norm for r in rows])
        letter = cell([None if r.letter_pred is None else r.letter_correct for r in rows])
        lines.append(
            f"| {task} | {acc.n} | {acc.missing} | {acc.accuracy:.1f} ({acc.low:.1f}–{acc.high:.1f}) | {norm.accuracy:.1f} | "
            f"{letter.accuracy:.1f} | {letter.missing} | {majority_baseline([r.gold for r in rows]):.1f} | "
            f"{chance([choices[(task, r.id)] for r in rows]):.1f} | {top_prediction_share([r.pred for r in rows]):.1f} |"
        )
    return "\n".join(lines)


def write_jsonl(path: Path, records: Sequence[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as out:
        for record in records:
            out.write(json.dumps(record) + "\n")


def timed(function: Callable[[], object]) -> tuple[object, float]:
    started = time.monotonic()
    value = function()
    return value, time.monotonic() - started
