"""Score CSR items with the PyTorch reference (adapters/reference.py, fp32), by the same answer rule."""

from __future__ import annotations

from collections.abc import Callable

import torch
from transformers import PreTrainedTokenizerBase

from adapters.evaluation.scoring import TOP_LOGPROBS, Scored, label_tokens, predict, prompt_ids, within_task_indices
from adapters.reference import ReferenceModel, RowRoute
from adapters.training.csr import CsrItem


def score_with_reference(
    items: list[CsrItem],
    tokenizer: PreTrainedTokenizerBase,
    reference: ReferenceModel,
    route_of: Callable[[CsrItem], RowRoute],
    progress: Callable[[int], None] = lambda done: None,
) -> list[Scored]:
    """One item at a time (what a server must reproduce whatever shares its batch)."""
    scored = []
    for done, (index, item) in enumerate(zip(within_task_indices(items), items), start=1):
        logits = reference.prefill_logits([prompt_ids(item, tokenizer)], [route_of(item)])[0][-1]  # (vocab,)
        log_probs = torch.log_softmax(logits, dim=-1)
        values, ids = torch.topk(log_probs, TOP_LOGPROBS)
        top = {}
        for token_id, value in zip(ids.tolist(), values.tolist()):
            top.setdefault(tokenizer.decode([token_id]), value)
        greedy = tokenizer.decode([int(ids[0])])
        scored.append(Scored(item.task, index, item.gold, predict(top, label_tokens(item, tokenizer)), greedy))
        progress(done)
    return scored
