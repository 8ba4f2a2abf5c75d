"""From per-choice log-likelihoods to one result per item (the JSONL line of docs/quality-results/).

Two answers per item:
- `pred`: the cloze choice with the highest summed log-likelihood (lm-eval's `acc`); `pred_norm`: the
  highest log-likelihood per byte of the choice (lm-eval's `acc_norm`).
- `letter_pred`: in the lettered CSR prompt, the label whose token has the highest log-probability,
  over the task's label tokens only (MoORE's answer rule), never a top-k cut.
An answer is None ("missing") when any of its log-likelihoods is missing; it counts as neither right
nor wrong and is reported apart.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

from transformers import PreTrainedTokenizerBase

from adapters.evaluation.items import EvalItem
from adapters.evaluation.loglikelihood import LabelQuery, Pair, encode_pair


@dataclass(frozen=True)
class ItemResult:
    set: str
    task: str
    id: str
    gold: int
    pred: int | None
    correct: bool
    loglikelihoods: list[float | None]
    pred_norm: int | None
    correct_norm: bool
    letter_gold: int
    letter_pred: int | None
    letter_correct: bool
    letter_loglikelihoods: list[float | None]

    def to_json(self) -> dict:
        return asdict(self)


def argmax(scores: Sequence[float | None]) -> int | None:
    """Index of the highest score (the first on ties); None when any score is missing."""
    if not scores or any(score is None for score in scores):
        return None
    return max(range(len(scores)), key=lambda i: (scores[i], -i))  # type: ignore[arg-type,return-value]


def per_byte(scores: Sequence[float | None], choices: Sequence[str]) -> list[float | None]:
    return [None if s is None else s / max(1, len(c.encode("utf-8"))) for s, c in zip(scores, choices)]


def item_requests(item: EvalItem, tokenizer: PreTrainedTokenizerBase, model: str) -> tuple[list[Pair], LabelQuery | list[Pair]]:
    """The cloze pairs (one per choice) and the letter request.

    The letter request is one query for the label tokens' log-probabilities after the prompt (and after
    the tokens every label starts with, e.g. a lone space). Where the labels are not one distinct token
    each after such a prefix, it is one pair per label instead, scored like a cloze choice: the same
    ordering, from more requests."""
    cloze = [encode_pair(tokenizer, model, item.context, choice) for choice in item.choices]
    labels = [encode_pair(tokenizer, model, item.letter.prompt, " " + label) for label in item.letter.labels]
    shared = 0
    while all(len(p.continuation) > shared + 1 for p in labels) and len({p.continuation[shared] for p in labels}) == 1:
        shared += 1
    tails = [p.continuation[shared:] for p in labels]
    if any(len(tail) != 1 for tail in tails) or len({tail[0] for tail in tails}) != len(tails):
        return cloze, labels
    prompt = labels[0].context + labels[0].continuation[:shared]
    return cloze, LabelQuery(model, prompt, tuple(tail[0] for tail in tails))


def score_items(
    items: Sequence[EvalItem],
    tokenizer: PreTrainedTokenizerBase,
    model_of: Callable[[EvalItem], str],
    score_pairs: Callable[[list[Pair]], list[float | None]],
    score_labels: Callable[[list[LabelQuery]], list[list[float | None]]],
    set_name: str,
) -> list[ItemResult]:
    """Every item's answers, from one call of each scorer over all of the items' requests."""
    requests = [item_requests(item, tokenizer, model_of(item)) for item in items]
    pairs = [pair for cloze, letter in requests for pair in (cloze + letter if isinstance(letter, list) else cloze)]
    queries = [letter for _, letter in requests if isinstance(letter, LabelQuery)]
    pair_scores, query_scores = iter(score_pairs(pairs) if pairs else []), iter(score_labels(queries) if queries else [])
    results = []
    for item, (cloze, letter) in zip(items, requests):
        cloze_scores = [next(pair_scores) for _ in cloze]
        letter_scores = next(query_scores) if isinstance(letter, LabelQuery) else [next(pair_scores) for _ in letter]
        pred, pred_norm, letter_pred = argmax(cloze_scores), argmax(per_byte(cloze_scores, item.choices)), argmax(letter_scores)
        results.append(
            ItemResult(
                set=set_name, task=item.task, id=item.id, gold=item.gold,
                pred=pred, correct=pred == item.gold, loglikelihoods=cloze_scores,
                pred_norm=pred_norm, correct_norm=pred_norm == item.gold,
                letter_gold=item.letter.gold, letter_pred=letter_pred, letter_correct=letter_pred == item.letter.gold,
                letter_loglikelihoods=list(letter_scores),
            )
        )  # fmt: skip
    return results
