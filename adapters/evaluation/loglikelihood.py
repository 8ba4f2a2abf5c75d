"""Log-likelihood of a continuation after a context, through an OpenAI-compatible completions endpoint.

As lm-evaluation-harness does it: the context and context + continuation are tokenised, the continuation's
tokens are what the whole adds after the context, and the whole sequence is sent as token ids with
`echo=True, max_tokens=0, logprobs=0`; the score is the sum of the prompt logprobs of the continuation's
tokens. Only standard completions fields are used, so any server that returns prompt logprobs on echo
can be scored. A reply without a finite logprob for every continuation token gives None (missing),
which the caller reports as its own count.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from openai import OpenAI
from transformers import PreTrainedTokenizerBase


@dataclass(frozen=True)
class Pair:
    """One scoring request: token ids of the context and of the continuation, and the model tag to use."""

    model: str
    context: tuple[int, ...]
    continuation: tuple[int, ...]

    @property
    def ids(self) -> list[int]:
        return [*self.context, *self.continuation]


def encode_pair(tokenizer: PreTrainedTokenizerBase, model: str, context: str, continuation: str) -> Pair:
    """lm-eval's split: trailing spaces of the context move to the continuation, and the continuation's
    tokens are those of tokenize(context + continuation) after tokenize(context)."""
    spaces = len(context) - len(context.rstrip(" "))
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = tokenizer(context + continuation)["input_ids"]
    head = tokenizer(context)["input_ids"]
    return Pair(model, tuple(head), tuple(whole[len(head) :]))


def continuation_sum(token_logprobs: Sequence[float | None] | None, pair: Pair) -> float | None:
    """Sum of the logprobs of the pair's continuation tokens in an echoed prompt; None if any is missing."""
    if token_logprobs is None or len(token_logprobs) != len(pair.ids) or not pair.continuation:
        return None
    tail = token_logprobs[len(pair.context) :]
    if any(value is None or not math.isfinite(value) for value in tail):
        return None
    return float(sum(tail))  # type: ignore[arg-type]


def score_pairs_over_http(
    pairs: Sequence[Pair],
    base_url: str,
    *,
    batch_size: int = 16,
    concurrency: int = 2,
    api_key: str = "unused",
    progress: Callable[[int], None] = lambda done: None,
) -> list[float | None]:
    """The continuation log-likelihood of every pair (None where the reply did not give one)."""
    client = OpenAI(base_url=base_url, api_key=api_key, timeout=900, max_retries=2)
    by_model: dict[str, list[int]] = {}
    for index, pair in enumerate(pairs):
        by_model.setdefault(pair.model, []).append(index)
    chunks = [indices[i : i + batch_size] for indices in by_model.values() for i in range(0, len(indices), batch_size)]
    results: list[float | None] = [None] * len(pairs)

    def score_chunk(chunk: list[int]) -> int:
        reply = client.completions.create(
            model=pairs[chunk[0]].model,
            prompt=[pairs[i].ids for i in chunk],
            max_tokens=0,
            echo=True,
            logprobs=0,
            temperature=0,
        )
        for choice in reply.choices:
            if 0 <= choice.index < len(chunk):
                pair_index = chunk[choice.index]
                logprobs = choice.logprobs.token_logprobs if choice.logprobs else None
                results[pair_index] = continuation_sum(logprobs, pairs[pair_index])
        return len(chunk)

    done = 0
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        for count in pool.map(score_chunk, chunks):
            done += count
            progress(done)
    return results


@dataclass(frozen=True)
class LabelQuery:
    """The log-probabilities of a few given tokens (the labels) at the first position after a prompt."""

    model: str
    prompt: tuple[int, ...]
    labels: tuple[int, ...]


def label_logprobs_over_http(
    queries: Sequence[LabelQuery],
    tokenizer: PreTrainedTokenizerBase,
    base_url: str,
    *,
    batch_size: int = 16,
    concurrency: int = 2,
    api_key: str = "unused",
) -> list[list[float | None]]:
    """Per query, the log-probability of each label token over the whole vocabulary (vLLM's
    `logprob_token_ids`, so no top-k cut); None for a label the reply does not give."""
    client = OpenAI(base_url=base_url, api_key=api_key, timeout=900, max_retries=2)
    by_key: dict[tuple[str, tuple[int, ...]], list[int]] = {}
    for index, query in enumerate(queries):
        by_key.setdefault((query.model, query.labels), []).append(index)
    chunks = [indices[i : i + batch_size] for indices in by_key.values() for i in range(0, len(indices), batch_size)]
    results: list[list[float | None]] = [[None] * len(q.labels) for q in queries]

    def score_chunk(chunk: list[int]) -> None:
        first = queries[chunk[0]]
        reply = client.completions.create(
            model=first.model,
            prompt=[list(queries[i].prompt) for i in chunk],
            max_tokens=1,
            temperature=0,
            logprobs=len(first.labels),
            extra_body={"logprob_token_ids": list(first.labels)},
        )
        names = [tokenizer.decode([token]) for token in first.labels]
        for choice in reply.choices:
            if not 0 <= choice.index < len(chunk):
                continue
            top = choice.logprobs.top_logprobs[0] if choice.logprobs and choice.logprobs.top_logprobs else None
            values = [top.get(name) if top else None for name in names]
            results[chunk[choice.index]] = [v if v is not None and math.isfinite(v) else None for v in values]

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        list(pool.map(score_chunk, chunks))
    return results
