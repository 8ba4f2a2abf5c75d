"""Reference (oracle) forward of a Hugging Face Llama with adapter sets, one request at a time per row.

Every targeted `nn.Linear` is wrapped by a `ReferenceLinear`. A batch's rows each carry their own
route (adapter set + task, or the base model); each row is computed on its own through the method's
`reference_forward`, which returns the whole layer output (MoORE replaces x Wᵀ). Slow and plain on
purpose: the serving path is tested against it, and training builds on it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn
from transformers import LlamaForCausalLM
from transformers.cache_utils import DynamicCache

from adapters.base_model import PROJECTIONS, BaseModelInfo, describe_base_model
from adapters.errors import FingerprintMismatch
from adapters.format import AdapterSet, load_adapter_set
from adapters.registry import BaseProjection
from adapters.svd_cache import BaseFactors, base_factors

_PARENT = {proj: ("self_attn" if proj in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp") for proj in PROJECTIONS}


@dataclass(frozen=True)
class RowRoute:
    """What one batch row runs with: the base model (set_name None) or one task of one set."""

    set_name: str | None = None
    task: str | None = None


@dataclass
class _BatchState:
    """Per-forward routing shared by every wrapped layer (the layers never see request tags)."""

    rows: list[tuple[AdapterSet | None, int]]
    token_mask: torch.Tensor  # (B, T) True for real tokens of this forward call


class ReferenceLinear(nn.Module):
    def __init__(self, base: nn.Linear, layer: int, proj: str, state: list[_BatchState], factors: Any) -> None:
        super().__init__()
        self.base = base
        self.layer, self.proj = layer, proj
        self._state = state
        self._projection = BaseProjection(weight=base.weight, factors=factors)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, T, in)
        y = self.base(x)  # (B, T, out): base rows keep exactly the base computation
        if not self._state:
            return y
        state = self._state[0]
        rows = []
        for b, (adapter_set, task_index) in enumerate(state.rows):
            if adapter_set is None or self.proj not in adapter_set.target_modules:
                rows.append(y[b])
                continue
            module = adapter_set.module(self.layer, self.proj)
            y_b = adapter_set.method.reference_forward(x[b], state.token_mask[b], module, task_index, self._projection)
            rows.append(y_b if self.base.bias is None else y_b + self.base.bias)  # (T, out)
        return torch.stack(rows)  # (B, T, out)


class ReferenceModel:
    """A `LlamaForCausalLM` whose targeted linears apply per-row adapter sets."""

    def __init__(
        self,
        model: LlamaForCausalLM,
        base: BaseModelInfo,
        sets: Mapping[str, AdapterSet | Path | str],
        cache_dir: Path | str | None = None,
    ) -> None:
        self.model, self.base = model, base
        self.sets = {name: _resolve_set(value, base) for name, value in sets.items()}
        self._state: list[_BatchState] = []
        self._factors: BaseFactors | None = None
        self._cache_dir = cache_dir
        for layer_index, decoder_layer in enumerate(model.model.layers):
            for proj in PROJECTIONS:
                parent = getattr(decoder_layer, _PARENT[proj])
                factors = partial(self._factors_of, layer_index, proj)
                setattr(parent, proj, ReferenceLinear(getattr(parent, proj), layer_index, proj, self._state, factors))

    @classmethod
    def from_pretrained(
        cls, model_dir: Path | str, sets: Mapping[str, AdapterSet | Path | str], cache_dir: Path | str | None = None
    ) -> ReferenceModel:
        base = describe_base_model(model_dir)
        model = LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="eager")
        return cls(model.eval(), base, sets, cache_dir)

    def _factors_of(self, layer: int, proj: str) -> Any:
        if self._factors is None:
            self._factors = base_factors(self.base, self._cache_dir)
        return self._factors.get(layer, proj)

    def resolve(self, route: RowRoute) -> tuple[AdapterSet | None, int]:
        """(set, task index) of a route; a task may be omitted only when the set has one or routes on its input."""
        if route.set_name is None:
            return None, 0
        if route.set_name not in self.sets:
            raise KeyError(f"Unknown adapter set '{route.set_name}'; known: {sorted(self.sets)}.")
        adapter_set = self.sets[route.set_name]
        if route.task is None:
            if len(adapter_set.tasks) == 1 or adapter_set.input_routed:
                return adapter_set, 0
            raise ValueError(f"Set '{route.set_name}' has tasks {list(adapter_set.tasks)}: name one.")
        if route.task not in adapter_set.tasks:
            raise KeyError(f"Set '{route.set_name}' has no task '{route.task}'; tasks: {list(adapter_set.tasks)}.")
        return adapter_set, adapter_set.tasks.index(route.task)

    @contextmanager
    def _routed(self, routes: Sequence[RowRoute], token_mask: torch.Tensor) -> Iterator[None]:
        self._state.append(_BatchState([self.resolve(r) for r in routes], token_mask.bool()))
        try:
            yield
        finally:
            self._state.clear()

    @torch.no_grad()
    def forward(
        self,
        input_ids: torch.Tensor,  # (B, T)
        attention_mask: torch.Tensor,  # (B, past + T), 0 at left padding
        routes: Sequence[RowRoute],
        past_key_values: DynamicCache | None = None,
    ) -> torch.Tensor:
        """Logits (B, T, vocab) of one forward call; positions count real tokens only (left padding is exact)."""
        num_new = input_ids.shape[1]
        positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -num_new:]  # (B, T)
        with self._routed(routes, attention_mask[:, -num_new:]):
            output = self.model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=positions,
                past_key_values=past_key_values,
                use_cache=past_key_values is not None,
            )
        return output.logits.float()

    def prefill_logits(self, prompts: Sequence[Sequence[int]], routes: Sequence[RowRoute]) -> list[torch.Tensor]:
        """One left-padded batch; per row the logits (len_i, vocab) at its real positions."""
        input_ids, mask = _left_pad(prompts)
        logits = self.forward(input_ids, mask, routes)  # (B, L, vocab)
        return [logits[b, logits.shape[1] - len(p) :] for b, p in enumerate(prompts)]

    def continuation_logprobs(self, prompt: Sequence[int], continuation: Sequence[int], route: RowRoute) -> list[float]:
        """Logprob of each token of `continuation` after `prompt`, decoded one token per step as the
        engine does (routing included) but with the tokens given: how likely the reference finds
        tokens another engine generated."""
        forced = torch.tensor([list(continuation)])  # (1, steps)
        [(_, logprobs)] = self._decode([prompt], [route], len(continuation), lambda step, _: forced[:, step])
        return logprobs

    def greedy(
        self, prompts: Sequence[Sequence[int]], routes: Sequence[RowRoute], max_new_tokens: int
    ) -> list[tuple[list[int], list[float]]]:
        """Greedy decoding of a left-padded batch: prefill of whole prompts, then one token per step with KV cache."""
        return self._decode(prompts, routes, max_new_tokens, lambda _, log_probs: log_probs.argmax(-1))

    @torch.no_grad()
    def _decode(
        self,
        prompts: Sequence[Sequence[int]],
        routes: Sequence[RowRoute],
        steps: int,
        choose: Callable[[int, torch.Tensor], torch.Tensor],
    ) -> list[tuple[list[int], list[float]]]:
        """Prefill, then `steps` decode steps; `choose(step, log_probs (B, vocab))` gives each step's tokens (B,)."""
        input_ids, mask = _left_pad(prompts)
        cache = DynamicCache(config=self.model.config)
        logits = self.forward(input_ids, mask, routes, past_key_values=cache)[:, -1]  # (B, vocab)
        tokens: list[list[int]] = [[] for _ in prompts]
        logprobs: list[list[float]] = [[] for _ in prompts]
        for step in range(steps):
            log_probs = torch.log_softmax(logits, dim=-1)  # (B, vocab)
            next_tokens = choose(step, log_probs)  # (B,)
            for b, token in enumerate(next_tokens.tolist()):
                tokens[b].append(token)
                logprobs[b].append(float(log_probs[b, token]))
            if step + 1 == steps:
                break
            mask = torch.cat([mask, torch.ones(len(prompts), 1, dtype=mask.dtype)], dim=1)  # (B, L + step + 1)
            logits = self.forward(next_tokens.unsqueeze(1), mask, routes, past_key_values=cache)[:, -1]
        return list(zip(tokens, logprobs))


def reference_greedy(
    model_dir: Path | str,
    sets: Mapping[str, AdapterSet | Path | str],
    requests: Sequence[tuple[Sequence[int], str | None, str | None]],
    max_new_tokens: int,
    *,
    cache_dir: Path | str | None = None,
    batched: bool = False,
) -> list[tuple[list[int], list[float]]]:
    """(token ids, per-token logprobs) of greedy decoding for each (prompt ids, set name | None, task | None).

    fp32. By default each request runs alone (what a server must reproduce whatever shares its batch);
    `batched=True` runs them as one left-padded mixed batch.
    """
    reference = ReferenceModel.from_pretrained(model_dir, sets, cache_dir)
    routes = [RowRoute(set_name, task) for _, set_name, task in requests]
    prompts = [list(prompt) for prompt, _, _ in requests]
    if batched:
        return reference.greedy(prompts, routes, max_new_tokens)
    return [reference.greedy([p], [r], max_new_tokens)[0] for p, r in zip(prompts, routes)]


def _resolve_set(value: AdapterSet | Path | str, base: BaseModelInfo) -> AdapterSet:
    if not isinstance(value, AdapterSet):
        return load_adapter_set(value, base)
    if value.manifest.base_fingerprint != base.fingerprint:
        raise FingerprintMismatch(
            f"Set '{value.name}' was made for base model {value.manifest.base_fingerprint}, not {base.fingerprint}.",
            field="base_fingerprint",
        )
    return value


def _left_pad(prompts: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), both (B, L), padded on the left with token 0 / mask 0."""
    length = max(len(p) for p in prompts)
    input_ids = torch.zeros(len(prompts), length, dtype=torch.long)
    mask = torch.zeros(len(prompts), length, dtype=torch.long)
    for b, prompt in enumerate(prompts):
        input_ids[b, length - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
        mask[b, length - len(prompt) :] = 1
    return input_ids, mask
