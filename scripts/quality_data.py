"""Write the training JSONL of docs/quality.md: N documents per task, each in the cloze form and in
MoORE's lettered form (so a set is trained on both formats it is scored in).

Usage: python scripts/quality_data.py OUT.jsonl --tasks arc-e,piqa,siqa --per-task 1000 --seed 42
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from adapters.evaluation.items import cloze_train_docs, cloze_train_examples, letter_train_examples


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--tasks", default="arc-e,piqa,siqa")
    parser.add_argument("--per-task", type=int, required=True)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    examples = []
    for task in args.tasks.split(","):
        docs = cloze_train_docs(task, args.per_task, args.seed)
        examples += cloze_train_examples(task, docs) + letter_train_examples(task, docs)
    # The trainer shuffles per epoch; this fixed order only makes the file reproducible.
    random.Random(args.seed).shuffle(examples)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", encoding="utf-8") as out:
        for example in examples:
            out.write(json.dumps({"task": example.task, "prompt": example.prompt, "completion": example.completion}) + "\n")
    print(f"wrote {len(examples)} examples to {args.out}")


if __name__ == "__main__":
    main()
