"""From per-choice log-likelihoods to per-item answers, on hand-made items and a scripted scorer (no engine)."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from adapters.evaluation.choices import argmax, per_byte, score_items
from adapters.evaluation.items import EvalItem
from adapters.evaluation.loglikelihood import LabelQuery, Pair, continuation_sum, encode_pair
from adapters.training.csr import CsrItem


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def _item(task: str, item_id: str, gold: int, choices: tuple[str, ...]) -> EvalItem:
    labels = ("A", "B", "C", "D")[: len(choices)]
    letter = CsrItem(task, f"Pick one: {item_id}\nAnswer:", labels, gold)
    return EvalItem(task, item_id, gold, f"Question: {item_id}?\nAnswer:", tuple(" " + c for c in choices), letter)


def test_argmax_takes_the_first_of_equal_scores_and_refuses_missing_ones() -> None:
    assert argmax([-3.0, -1.0, -1.0]) == 1
    assert argmax([-1.0, None]) is None
    assert argmax([]) is None


def test_per_byte_normalises_by_the_choice_length_in_bytes() -> None:
    assert per_byte([-4.0, -4.0, None], [" ab", " abcdefg", " x"]) == [pytest.approx(-4 / 3), pytest.approx(-0.5), None]


def test_encode_pair_moves_trailing_spaces_into_the_continuation(tokenizer) -> None:
    spaced = encode_pair(tokenizer, "m", "Answer: ", "paris")
    plain = encode_pair(tokenizer, "m", "Answer:", " paris")
    assert spaced == plain
    assert list(plain.context) == tokenizer("Answer:")["input_ids"]
    assert plain.ids == tokenizer("Answer: paris")["input_ids"]
    assert plain.continuation


def test_continuation_sum_reads_only_the_continuation_positions() -> None:
    pair = Pair("m", (5, 6, 7), (8, 9))
    assert continuation_sum([None, -1.0, -2.0, -0.5, -0.25], pair) == -0.75
    assert continuation_sum([None, -1.0, -2.0, None, -0.25], pair) is None  # a missing value is not a zero
    assert continuation_sum([None, -1.0, -2.0, float("nan"), -0.25], pair) is None
    assert continuation_sum([None, -1.0], pair) is None  # a reply of the wrong length
    assert continuation_sum(None, pair) is None


def _script(tokenizer, cloze: dict[str, float | None], letter: dict[str, list[float | None]]):
    """Scorers that answer from fixed tables: cloze by the continuation text, letters by item."""

    def score_pairs(pairs: list[Pair]) -> list[float | None]:
        scores = []
        for pair in pairs:
            text = tokenizer.decode(pair.continuation).strip()
            if text in cloze:
                scores.append(cloze[text])
            else:  # a letter label scored as a pair: find its item by the prompt
                prompt = tokenizer.decode(pair.context)
                item_id = prompt.split(": ")[1].split("\n")[0]
                scores.append(letter[item_id]["ABCD".index(text)])
        return scores

    def score_labels(queries: list[LabelQuery]) -> list[list[float | None]]:
        return [letter[tokenizer.decode(q.prompt).split(": ")[1].split("\n")[0]] for q in queries]

    return score_pairs, score_labels


def test_score_items_picks_the_most_likely_choice_per_item_and_reports_missing_apart(tokenizer) -> None:
    items = [_item("arc-e", "q1", 1, ("red", "blue", "green")), _item("piqa", "q2", 0, ("up", "down"))]
    # q2's second choice has no score (a bad reply): q2 has no cloze answer, which is not a wrong one.
    cloze = {"red": -5.0, "blue": -2.0, "green": -9.0, "up": -1.0, "down": None}
    letter = {"q1": [-0.1, -3.0, -4.0], "q2": [-2.0, -0.5]}
    score_pairs, score_labels = _script(tokenizer, cloze, letter)

    first, second = score_items(items, tokenizer, lambda item: f"s/{item.task}", score_pairs, score_labels, "s")
    assert (first.set, first.task, first.id, first.gold) == ("s", "arc-e", "q1", 1)
    assert (first.pred, first.correct, first.loglikelihoods) == (1, True, [-5.0, -2.0, -9.0])
    assert (first.pred_norm, first.letter_pred, first.letter_correct) == (1, 0, False)
    assert first.letter_loglikelihoods == [-0.1, -3.0, -4.0]
    assert (second.pred, second.correct, second.pred_norm) == (None, False, None)
    assert (second.letter_pred, second.letter_correct) == (1, False)
    assert set(first.to_json()) >= {"set", "task", "id", "gold", "pred", "correct", "loglikelihoods"}


def test_per_byte_normalisation_can_change_the_answer(tokenizer) -> None:
    items = [_item("arc-e", "q3", 0, ("a much longer answer", "b"))]
    score_pairs, score_labels = _script(tokenizer, {"a much longer answer": -6.0, "b": -4.0}, {"q3": [-1.0, -2.0]})
    [result] = score_items(items, tokenizer, lambda item: "m", score_pairs, score_labels, "s")
    assert (result.pred, result.pred_norm) == (1, 0)


def test_label_requests_follow_the_tokenised_prompt(tokenizer) -> None:
    from adapters.evaluation.choices import item_requests

    item = _item("arc-e", "q", 0, ("a", "b", "c", "d"))
    cloze, letter = item_requests(item, tokenizer, "m")
    assert len(cloze) == 4
    if isinstance(letter, LabelQuery):  # single-token labels: one query, a token per label
        for label, token in zip("ABCD", letter.labels):
            assert [*letter.prompt, token] == tokenizer(item.letter.prompt + " " + label)["input_ids"]
    else:  # otherwise one scored pair per label
        assert [p.ids for p in letter] == [tokenizer(item.letter.prompt + " " + label)["input_ids"] for label in "ABCD"]


def test_single_token_labels_give_one_query() -> None:
    from adapters.evaluation.choices import item_requests

    class Letters:
        """A tokenizer of one id per character, spaces joined to the next character (as BPE does for " A")."""

        def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
            ids, i = [], 0
            while i < len(text):
                if text[i] == " " and i + 1 < len(text):
                    ids.append(1000 + ord(text[i + 1]))
                    i += 2
                else:
                    ids.append(ord(text[i]))
                    i += 1
            return {"input_ids": ids}

    _, letter = item_requests(_item("arc-e", "q", 2, ("x", "y", "z")), Letters(), "m")
    assert isinstance(letter, LabelQuery)
    assert letter.labels == (1000 + ord("A"), 1000 + ord("B"), 1000 + ord("C"))
