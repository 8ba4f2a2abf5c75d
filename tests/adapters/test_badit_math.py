import torch

from adapters.badit.math import (
    ability_weights,
    bad_split,
    badit_forward,
    expert_sum,
    masked_mean,
    residual_weight,
    top_k_renormalise,
    vector_scaled_lora,
)
from adapters.svd_cache import thin_svd

K, R, ALPHA = 3, 2, 8.0


def _setup():
    g = torch.Generator().manual_seed(0)
    W = torch.randn(20, 16, generator=g)
    f = thin_svd(W)
    A, B = bad_split(f.U, f.S, f.V, K * R, ALPHA / R)
    return g, W, f, A, B


def test_split_reconstructs_top_k_and_residual_completes_w() -> None:
    _, W, f, A, B = _setup()
    scale = ALPHA / R
    top = f.top(K * R).reconstruct()
    torch.testing.assert_close(scale * B @ A, top, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(residual_weight(W, f.U, f.S, f.V, K * R) + top, W, atol=1e-5, rtol=1e-5)
    # Expert 0 holds the largest singular values.
    expert_norms = [float(torch.linalg.matrix_norm(B[:, e * R : (e + 1) * R] @ A[e * R : (e + 1) * R])) for e in range(K)]
    assert expert_norms == sorted(expert_norms, reverse=True)


def test_expert_sum_equals_vector_scaled_lora() -> None:
    g, _, _, A, B = _setup()
    x = torch.randn(6, 16, generator=g)
    w = torch.softmax(torch.randn(K, generator=g), -1)
    omega = w.repeat_interleave(R)
    torch.testing.assert_close(expert_sum(x, A, B, w, R), vector_scaled_lora(x, A, B, omega), atol=1e-5, rtol=1e-5)


def test_uniform_full_weights_reproduce_base() -> None:
    """With every w_e = 1 the experts sum back to the top-k part: y = x Wᵀ."""
    g, W, f, A, B = _setup()
    x = torch.randn(4, 16, generator=g)
    y = badit_forward(x, residual_weight(W, f.U, f.S, f.V, K * R), A, B, torch.ones(K), R, ALPHA / R)
    torch.testing.assert_close(y, x @ W.T, atol=1e-4, rtol=1e-5)


def test_masked_mean_ignores_padding_and_routing_is_softmax() -> None:
    x = torch.tensor([[100.0, 100.0], [1.0, 3.0], [3.0, 5.0]])
    mask = torch.tensor([False, True, True])
    torch.testing.assert_close(masked_mean(x, mask), torch.tensor([2.0, 4.0]))
    w = ability_weights(torch.tensor([1.0, 0.0]), torch.tensor([[1.0, 0.0], [0.0, 0.0]]))
    torch.testing.assert_close(w.sum(), torch.tensor(1.0))
    assert w[0] > w[1]


def test_top_k_renormalise_keeps_the_largest_weights_summing_to_one():
    w = torch.softmax(torch.tensor([[0.1, 2.0, -1.0, 1.5], [3.0, 0.0, 0.2, 0.1]]), dim=-1)
    kept = top_k_renormalise(w, 2)
    assert torch.equal(kept > 0, torch.tensor([[False, True, False, True], [True, False, True, False]]))
    torch.testing.assert_close(kept.sum(-1), torch.ones(2))
    torch.testing.assert_close(kept[0, 1] / kept[0, 3], w[0, 1] / w[0, 3])  # the kept ratios are unchanged
    assert torch.equal(top_k_renormalise(w, 4), w)
    G, x_mean = torch.randn(4, 8), torch.randn(8)
    torch.testing.assert_close(ability_weights(x_mean, G, 2), top_k_renormalise(ability_weights(x_mean, G), 2))
