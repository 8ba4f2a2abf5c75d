"""Score CSR items through an OpenAI-compatible completions endpoint (greedy, one token, top-5 logprobs).

Only standard request fields are used (model, prompt as token ids, max_tokens, temperature, logprobs),
so any OpenAI-compatible server that serves the adapter tags can be scored.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from openai import OpenAI
from transformers import PreTrainedTokenizerBase

from adapters.evaluation.scoring import TOP_LOGPROBS, Scored, label_tokens, predict, prompt_ids, within_task_indices
from adapters.training.csr import CsrItem


def score_over_http(
    items: list[CsrItem],
    tokenizer: PreTrainedTokenizerBase,
    base_url: str,
    model_of: Callable[[CsrItem], str],
    *,
    batch_size: int = 16,
    concurrency: int = 4,
    api_key: str = "unused",
) -> list[Scored]:
    client = OpenAI(base_url=base_url, api_key=api_key, timeout=600, max_retries=0)
    numbered = list(zip(within_task_indices(items), items))
    chunks = [numbered[i : i + batch_size] for i in range(0, len(numbered), batch_size)]

    def score_chunk(chunk: list[tuple[int, CsrItem]]) -> list[Scored]:
        by_model: dict[str, list[int]] = {}
        for position, (_, item) in enumerate(chunk):
            by_model.setdefault(model_of(item), []).append(position)
        results: list[Scored | None] = [None] * len(chunk)
        for model, positions in by_model.items():
            reply = client.completions.create(
                model=model,
                prompt=[prompt_ids(chunk[p][1], tokenizer) for p in positions],
                max_tokens=1,
                temperature=0,
                logprobs=TOP_LOGPROBS,
            )
            for choice in reply.choices:
                index, item = chunk[positions[choice.index]]
                top = choice.logprobs.top_logprobs[0] if choice.logprobs and choice.logprobs.top_logprobs else {}
                prediction = predict(dict(top), label_tokens(item, tokenizer))
                results[positions[choice.index]] = Scored(item.task, index, item.gold, prediction, choice.text)
        return [r for r in results if r is not None]

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        return [scored for chunk_scores in pool.map(score_chunk, chunks) for scored in chunk_scores]
