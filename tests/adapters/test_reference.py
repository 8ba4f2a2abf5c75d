"""The reference forward: base equivalence at paper init, per-row batch invariance, prefill/decode routing."""

from pathlib import Path

import torch

from adapters.reference import ReferenceModel, RowRoute, reference_greedy

PROMPTS = [list(range(3, 3 + n)) for n in (9, 14, 6, 11, 14, 7, 12, 10)]
ROUTES = [
    RowRoute(),
    RowRoute("moore-random", "arc-e"),
    RowRoute("moore-random", "boolq"),
    RowRoute("badit-random"),
    RowRoute("badit-tasks", "classify"),
    RowRoute("lora-random"),
    RowRoute(),
    RowRoute("moore-paper", "boolq"),
]


def test_paper_init_reproduces_base_logits(reference: ReferenceModel) -> None:
    prompt = [PROMPTS[1]]
    base = reference.prefill_logits(prompt, [RowRoute()])[0]
    # MoORE recomputes W x as U (S ⊙ Vᵀ x) from fp32 factors: equal to fp32 rounding of the factors,
    # i.e. within 1e-5 of the logit scale (LoRA with B = 0 is bit-exact).
    tolerance = 1e-5 * float(base.abs().max())
    for route in (RowRoute("moore-paper", "arc-e"), RowRoute("moore-paper", "boolq")):
        torch.testing.assert_close(reference.prefill_logits(prompt, [route])[0], base, atol=tolerance, rtol=0)
    assert torch.equal(reference.prefill_logits(prompt, [RowRoute("lora-paper")])[0], base)


def test_random_sets_change_logits(reference: ReferenceModel) -> None:
    prompt = [PROMPTS[1]]
    base = reference.prefill_logits(prompt, [RowRoute()])[0]
    outputs = [reference.prefill_logits(prompt, [route])[0] for route in ROUTES[1:6]]
    for out in outputs:
        assert (out - base).abs().max() > 0.1
    assert (outputs[0] - outputs[1]).abs().max() > 0.1  # two MoORE tasks differ


def test_mixed_padded_batch_gives_each_row_its_own_output(reference: ReferenceModel) -> None:
    batch = reference.prefill_logits(PROMPTS, ROUTES)
    for prompt, route, logits in zip(PROMPTS, ROUTES, batch):
        alone = reference.prefill_logits([prompt], [route])[0]
        torch.testing.assert_close(logits, alone, atol=1e-5, rtol=0, msg=f"row {route}")


def test_badit_prefill_routing_is_a_mean_over_the_whole_prompt(reference: ReferenceModel) -> None:
    """Later prompt tokens change BADIT's earlier positions (non-causal routing); never the base model's."""
    short, longer = PROMPTS[1][:8], PROMPTS[1][:8] + [200, 201, 202]
    for route, changes in ((RowRoute("badit-random"), True), (RowRoute(), False), (RowRoute("lora-random"), False)):
        first = reference.prefill_logits([short], [route])[0]
        second = reference.prefill_logits([longer], [route])[0][:8]
        assert bool((first - second).abs().max() > 1e-4) == changes, route


def test_greedy_alone_and_batched_agree_and_adapters_change_tokens(
    tiny_model_dir: Path, set_dirs: dict[str, Path], svd_cache_dir: Path
) -> None:
    requests = [(p, r.set_name, r.task) for p, r in zip(PROMPTS, ROUTES)]
    alone = reference_greedy(tiny_model_dir, set_dirs, requests, 6, cache_dir=svd_cache_dir)
    batched = reference_greedy(tiny_model_dir, set_dirs, requests, 6, cache_dir=svd_cache_dir, batched=True)
    for (tokens_a, logprobs_a), (tokens_b, logprobs_b) in zip(alone, batched):
        assert tokens_a == tokens_b
        torch.testing.assert_close(torch.tensor(logprobs_a), torch.tensor(logprobs_b), atol=1e-4, rtol=0)
        assert len(tokens_a) == 6 and all(lp <= 0 for lp in logprobs_a)
    base_tokens = reference_greedy(tiny_model_dir, {}, [(PROMPTS[1], None, None)], 6)[0][0]
    same_prompt = [(PROMPTS[1], r.set_name, r.task) for r in ROUTES[1:6]]
    for tokens, _ in reference_greedy(tiny_model_dir, set_dirs, same_prompt, 6, cache_dir=svd_cache_dir):
        assert tokens != base_tokens


def test_decode_matches_full_recompute(reference: ReferenceModel) -> None:
    """KV-cached decode of LoRA/MoORE equals re-running the whole sequence (they are causal per token)."""
    for route in (RowRoute("moore-random", "boolq"), RowRoute("lora-random")):
        (tokens, logprobs), = reference.greedy([PROMPTS[0]], [route], 4)
        full = reference.prefill_logits([PROMPTS[0] + tokens[:-1]], [route])[0]
        recomputed = torch.log_softmax(full[len(PROMPTS[0]) - 1 :], -1)
        torch.testing.assert_close(
            recomputed.gather(1, torch.tensor(tokens).unsqueeze(1)).squeeze(1), torch.tensor(logprobs), atol=1e-4, rtol=0
        )


def test_continuation_logprobs_score_given_tokens_as_decoding_does(reference: ReferenceModel) -> None:
    """Scoring the reference's own greedy tokens gives back its greedy logprobs (BADIT included, whose
    decode steps are routed on their own token); other tokens score lower."""
    for prompt, route in zip(PROMPTS[:6], ROUTES[:6]):
        [(tokens, logprobs)] = reference.greedy([prompt], [route], 5)
        torch.testing.assert_close(reference.continuation_logprobs(prompt, tokens, route), logprobs, rtol=0, atol=1e-5)
        other = [(token + 1) % 500 for token in tokens]
        assert all(o < g for o, g in zip(reference.continuation_logprobs(prompt, other, route), logprobs))
