"""The answer rule shared by the server client and the reference, so both score the same way.

An item's prompt is sent as token ids (the base model's tokenizer, as the server would tokenise it);
one greedy token is generated with the top-5 log-probabilities at that position (5 is the most the
completions API returns). The prediction is the label whose first token has the highest log-probability
among those top 5 (the MoORE code's argmax over the label tokens, restricted to the top 5); no label in
the top 5 counts as a wrong answer (-1).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from transformers import PreTrainedTokenizerBase

from adapters.training.csr import CsrItem

TOP_LOGPROBS = 5


@dataclass(frozen=True)
class Scored:
    task: str
    index: int
    gold: int
    prediction: int  # label index, -1 when no label is in the top 5
    greedy: str  # the decoded greedy token

    @property
    def correct(self) -> bool:
        return self.prediction == self.gold

    def to_json(self) -> dict:
        return asdict(self)


def prompt_ids(item: CsrItem, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    return tokenizer(item.prompt)["input_ids"]


def label_tokens(item: CsrItem, tokenizer: PreTrainedTokenizerBase) -> list[str]:
    """The decoded first token of " <label>" for each label (how it appears among the top log-probabilities)."""
    return [tokenizer.decode(tokenizer(" " + label, add_special_tokens=False)["input_ids"][:1]) for label in item.labels]


def predict(top: dict[str, float], labels: list[str]) -> int:
    present = [(top[token], index) for index, token in enumerate(labels) if token in top]
    return max(present)[1] if present else -1


def accuracy(scored: list[Scored]) -> float:
    return 100.0 * sum(s.correct for s in scored) / len(scored) if scored else 0.0


def within_task_indices(items: list[CsrItem]) -> list[int]:
    """For each item, its position among the items of its own task."""
    seen: dict[str, int] = {}
    indices = []
    for item in items:
        indices.append(seen.get(item.task, 0))
        seen[item.task] = indices[-1] + 1
    return indices
