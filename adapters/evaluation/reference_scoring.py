"""Score CSR items with the PyTorch reference (adapters/reference.py, fp32): the first-token rule of
`scoring.py`, and the log-likelihoods of `loglikelihood.py` (for fidelity against the server)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from transformers import PreTrainedTokenizerBase

from adapters.evaluation.loglikelihood import LabelQuery, Pair
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


def reference_pair_loglikelihoods(
    pairs: Sequence[Pair], reference: ReferenceModel, route_of: Callable[[str], RowRoute], batch_size: int = 8
) -> list[float]:
    """Each pair's continuation log-likelihood from one prefill of context + continuation, as the
    server's echo computes it (for BADIT the prefill routing sees the continuation too, in both)."""
    scores: list[float] = []
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        logits = reference.prefill_logits([p.ids for p in chunk], [route_of(p.model) for p in chunk])
        for pair, row in zip(chunk, logits):
            log_probs = torch.log_softmax(row, dim=-1)  # (len, vocab)
            positions = torch.arange(len(pair.context) - 1, len(pair.ids) - 1)
            scores.append(float(log_probs[positions, torch.tensor(pair.continuation)].sum()))
    return scores


def reference_label_logprobs(
    queries: Sequence[LabelQuery], reference: ReferenceModel, route_of: Callable[[str], RowRoute], batch_size: int = 8
) -> list[list[float]]:
    """Each query's label log-probabilities at the position after its prompt (full vocabulary)."""
    scores: list[list[float]] = []
    for start in range(0, len(queries), batch_size):
        chunk = queries[start : start + batch_size]
        logits = reference.prefill_logits([q.prompt for q in chunk], [route_of(q.model) for q in chunk])
        for query, row in zip(chunk, logits):
            log_probs = torch.log_softmax(row[-1], dim=-1)
            scores.append([float(log_probs[token]) for token in query.labels])
    return scores
