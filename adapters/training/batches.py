"""Examples → token ids → right-padded training batches, in a seeded order per epoch."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from adapters.training.examples import Example, TrainingInputError

IGNORE = -100


@dataclass(frozen=True)
class Encoded:
    ids: list[int]
    completion_start: int  # index of the first completion token in ids
    task_id: int


@dataclass(frozen=True)
class Batch:
    input_ids: torch.Tensor  # (B, T)
    attention_mask: torch.Tensor  # (B, T)
    labels: torch.Tensor  # (B, T), IGNORE where no loss is taken
    task_ids: torch.Tensor  # (B,)

    def to(self, device: torch.device) -> Batch:
        return Batch(*(tensor.to(device) for tensor in (self.input_ids, self.attention_mask, self.labels, self.task_ids)))


def encode(
    examples: list[Example], tokenizer: PreTrainedTokenizerBase, task_index: dict[str, int], max_length: int
) -> list[Encoded]:
    """prompt ids (as the server tokenises a prompt) + completion ids + EOS, cut at max_length."""
    if tokenizer.eos_token_id is None:
        raise TrainingInputError("The base model's tokenizer has no EOS token.")
    encoded = []
    for example in examples:
        prompt = tokenizer(example.prompt)["input_ids"]
        completion = tokenizer(example.completion, add_special_tokens=False)["input_ids"]
        if len(prompt) + 1 > max_length:
            raise TrainingInputError(
                f"A {example.task} prompt has {len(prompt)} tokens: it leaves no room for its completion "
                f"within --max-length {max_length}."
            )
        ids = (prompt + completion + [tokenizer.eos_token_id])[:max_length]
        encoded.append(Encoded(ids, len(prompt), task_index[example.task]))
    return encoded


def epoch_order(count: int, seed: int, epoch: int) -> list[int]:
    """The example order of one epoch: a permutation that depends only on (seed, epoch)."""
    return torch.randperm(count, generator=torch.Generator().manual_seed(seed * 1000 + epoch)).tolist()


def collate(items: list[Encoded], loss: str, pad_id: int) -> Batch:
    length = max(len(item.ids) for item in items)
    input_ids = torch.full((len(items), length), pad_id, dtype=torch.long)
    mask = torch.zeros(len(items), length, dtype=torch.long)
    labels = torch.full((len(items), length), IGNORE, dtype=torch.long)
    for row, item in enumerate(items):
        ids = torch.tensor(item.ids, dtype=torch.long)
        input_ids[row, : len(ids)] = ids
        mask[row, : len(ids)] = 1
        first = item.completion_start if loss == "completion" else 1  # a label at position j is predicted from j − 1
        labels[row, first : len(ids)] = ids[first:]
    return Batch(input_ids, mask, labels, torch.tensor([item.task_id for item in items], dtype=torch.long))
