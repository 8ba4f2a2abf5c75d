"""Print the markdown tables of docs/quality.md from the JSON files of scripts/quality_eval.sh.

Usage: python scripts/quality_table.py OUT_DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

TRAINED = ("boolq", "arc-e", "piqa")
HELD_OUT = ("sciq", "copa")
ROWS = (("base", "base (SmolLM2-135M-Instruct)"), ("lora", "LoRA (same budget)"), ("moore", "MoORE"), ("badit", "BADIT"))


def main(out: Path) -> None:
    header = "| set | " + " | ".join(TRAINED) + " | trained avg | " + " | ".join(HELD_OUT) + " | held-out avg |"
    lines = [header, "|---" + "|---:" * (len(TRAINED) + len(HELD_OUT) + 2) + "|"]
    fidelity = ["| set | items | served acc | reference acc | same answer |", "|---|---:|---:|---:|---:|"]
    for row, label in ROWS:
        path = out / f"eval-{row}.json"
        if not path.is_file():
            continue
        tasks = json.loads(path.read_text())["tasks"]
        acc = {task: tasks[task]["served_accuracy"] for task in (*TRAINED, *HELD_OUT) if task in tasks}
        trained = sum(acc[t] for t in TRAINED) / len(TRAINED)
        held = sum(acc[t] for t in HELD_OUT) / len(HELD_OUT)
        cells = [f"{acc[t]:.1f}" for t in TRAINED] + [f"**{trained:.1f}**"] + [f"{acc[t]:.1f}" for t in HELD_OUT] + [f"**{held:.1f}**"]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
        check = out / f"fidelity-{row}.json"
        if check.is_file():
            total = json.loads(check.read_text())["tasks"]["all"]
            fidelity.append(
                f"| {label} | {total['n']} | {total['served_accuracy']:.1f} | {total['reference_accuracy']:.1f} | {total['same_answer_percent']:.1f} % |"
            )
    print("\n".join(lines) + "\n\n" + "\n".join(fidelity))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
