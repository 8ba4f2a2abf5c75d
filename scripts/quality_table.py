"""Print the markdown tables of docs/quality.md from the per-item JSONL of scripts/quality_eval.sh.

Usage: python scripts/quality_table.py RESULTS_DIR [ROW,ROW,...]    (eval-<row>.jsonl and fidelity-<row>.jsonl)
Rows are cut to the items every row has (the first N of each task); name rows to leave the others out.
Every number is recomputed from the per-item lines: accuracy with its 95 % Wilson interval, majority
and chance baselines, differences against the base with paired-bootstrap 95 % intervals (seed 0),
the share of the most frequent prediction, missing answers, and served-vs-reference fidelity.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from adapters.evaluation.run import fidelity_summary
from adapters.evaluation.stats import cell, chance, majority_baseline, paired_bootstrap, top_prediction_share

TRAINED = ("arc-e", "piqa", "siqa")
HELD_OUT = ("sciq", "copa", "obqa")
ROWS = (("base", "base (SmolLM2-135M-Instruct)"), ("lora", "LoRA (MoORE's budget)"), ("moore", "MoORE"), ("badit", "BADIT"))
# column → (prediction field, correctness field, gold field, scores field)
COLUMNS = {
    "cloze": ("pred", "correct", "gold", "loglikelihoods"),
    "cloze_norm": ("pred_norm", "correct_norm", "gold", "loglikelihoods"),
    "letter": ("letter_pred", "letter_correct", "letter_gold", "letter_loglikelihoods"),
}


def load(path: Path) -> dict[str, list[dict]]:
    by_task: dict[str, list[dict]] = {}
    for line in path.read_text().splitlines():
        record = json.loads(line)
        by_task.setdefault(record["task"], []).append(record)
    return by_task


def common_items(data: dict[str, dict[str, list[dict]]]) -> dict[str, dict[str, list[dict]]]:
    """Every row cut to the first items all rows scored (rows are scored on the first N items of each
    task, so a row with fewer items is a prefix of one with more); the ids must then match."""
    tasks = set.intersection(*(set(rows) for rows in data.values()))
    cut: dict[str, dict[str, list[dict]]] = {row: {} for row in data}
    for task in tasks:
        n = min(len(rows[task]) for rows in data.values())
        ids = [r["id"] for r in data["base"][task][:n]]
        for row, rows in data.items():
            if [r["id"] for r in rows[task][:n]] != ids:
                raise SystemExit(f"{row}/{task}: not the same items as the base row")
            cut[row][task] = rows[task][:n]
    return cut


def answers(rows: list[dict], column: str) -> list[bool | None]:
    pred, correct, _, _ = COLUMNS[column]
    return [None if r[pred] is None else bool(r[correct]) for r in rows]


def accuracy_table(data: dict[str, dict[str, list[dict]]], column: str) -> str:
    tasks = [t for t in (*TRAINED, *HELD_OUT) if t in data["base"]]
    _, _, gold, scores = COLUMNS[column]
    base = data["base"]
    header = "| row | " + " | ".join(f"{t} (n={len(base[t])})" for t in tasks) + " | trained avg | held-out avg |"
    lines = [header, "|---" + "|---:" * (len(tasks) + 2) + "|"]

    def average(values: dict[str, float], group: tuple[str, ...]) -> str:
        present = [values[t] for t in group if t in values]
        return f"{sum(present) / len(present):.1f}" if present else "-"

    for name, values in (
        ("chance", {t: chance([len(r[scores]) for r in base[t]]) for t in tasks}),
        ("majority label", {t: majority_baseline([r[gold] for r in base[t]]) for t in tasks}),
    ):
        # A task whose gold is always the same position (lm-eval's SciQ lists the answer last) has no
        # majority baseline: cloze scoring never sees positions.
        shown = {t: v for t, v in values.items() if v < 100.0}
        cells = " | ".join(f"{shown[t]:.1f}" if t in shown else "n/a" for t in tasks)
        lines.append(f"| {name} | {cells} | {average(shown, TRAINED)} | {average(shown, HELD_OUT)} |")
    for row, label in ROWS:
        if row not in data:
            continue
        cells = {t: cell(answers(data[row][t], column)) for t in tasks}
        text = [f"{c.accuracy:.1f} [{c.low:.1f}, {c.high:.1f}]" + (f" ({c.missing} missing)" if c.missing else "") for c in cells.values()]
        values = {t: c.accuracy for t, c in cells.items()}
        lines.append(f"| {label} | " + " | ".join(text) + f" | **{average(values, TRAINED)}** | **{average(values, HELD_OUT)}** |")
    return "\n".join(lines)


def differences(data: dict[str, dict[str, list[dict]]], column: str) -> str:
    lines = ["| difference | trained avg [95 % CI] | held-out avg [95 % CI] |", "|---|---|---|"]
    pairs = [(row, "base") for row, _ in ROWS if row != "base"] + [("moore", "lora")]
    labels = dict(ROWS)
    for a, b in pairs:
        if a not in data or b not in data:
            continue
        text = []
        for group in (TRAINED, HELD_OUT):
            tasks = [t for t in group if t in data[a]]
            first = {t: [bool(x) for x in answers(data[a][t], column)] for t in tasks}
            second = {t: [bool(x) for x in answers(data[b][t], column)] for t in tasks}
            d = paired_bootstrap(first, second)
            text.append(f"{d.value:+.1f} [{d.low:+.1f}, {d.high:+.1f}]")
        lines.append(f"| {labels[a]} − {labels[b].split(' (')[0]} | " + " | ".join(text) + " |")
    return "\n".join(lines)


def prediction_shares(data: dict[str, dict[str, list[dict]]]) -> str:
    tasks = [t for t in (*TRAINED, *HELD_OUT) if t in data["base"]]
    lines = ["| row | " + " | ".join(tasks) + " |", "|---" + "|---:" * len(tasks) + "|"]
    for row, label in ROWS:
        if row in data:
            shares = [
                f"{top_prediction_share([r['pred'] for r in data[row][t]]):.0f} / {top_prediction_share([r['letter_pred'] for r in data[row][t]]):.0f}"
                for t in tasks
            ]
            lines.append(f"| {label} | " + " | ".join(shares) + " |")
    return "\n".join(lines)


def fidelity_table(results: Path, rows: set[str]) -> str:
    lines = ["| row | items | log-likelihoods | missing | max abs diff | mean abs diff | same cloze answer | same letter answer |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for row, label in ROWS:
        path = results / f"fidelity-{row}.jsonl"
        if row not in rows or not path.is_file():
            continue
        records = [json.loads(line) for line in path.read_text().splitlines()]
        s = fidelity_summary(records)
        same = 100.0 * sum(r["same_pred"] for r in records) / len(records)
        same_letter = 100.0 * sum(r["same_letter_pred"] for r in records) / len(records)
        lines.append(
            f"| {label} | {s['items']} | {s['values']} | {s['missing']} | {s['max_abs_diff']:.2e} | {s['mean_abs_diff']:.2e} | "
            f"{same:.1f} % | {same_letter:.1f} % |"
        )
    return "\n".join(lines)


def main(results: Path, rows: set[str]) -> None:
    data = {
        row: load(results / f"eval-{row}.jsonl")
        for row, _ in ROWS
        if (results / f"eval-{row}.jsonl").is_file() and (not rows or row in rows)
    }
    if "base" not in data:
        raise SystemExit(f"{results}/eval-base.jsonl is missing")
    data = common_items(data)
    for column, title in (
        ("cloze", "choice log-likelihood (lm-eval `acc`)"),
        ("cloze_norm", "choice log-likelihood per byte (lm-eval `acc_norm`)"),
        ("letter", "label-token argmax in MoORE's lettered prompt"),
    ):
        print(f"### Accuracy, {title}\n\n{accuracy_table(data, column)}\n\n{differences(data, column)}\n")
    print(f"### Share of the most frequent prediction (cloze / letter), percent\n\n{prediction_shares(data)}\n")
    print(f"### Fidelity: served against reference log-likelihoods\n\n{fidelity_table(results, set(data))}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), set(sys.argv[2].split(",")) if len(sys.argv) > 2 else set())
